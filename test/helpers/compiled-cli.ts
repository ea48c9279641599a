/**
 * The CLI compiled once into a private directory, for tests that start it hundreds of times:
 * node on compiled JavaScript starts in ~0.4 s where bin/guestbackup through tsx takes ~1-1.5 s.
 * It is what bin/guestbackup itself runs when dist/ is current, built from the same sources, but
 * outside the checkout so a test never writes dist/ under someone working on src/.
 */
import { access, copyFile, mkdir, symlink } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { exec } from './process-group.ts'

/** How to start the CLI: `file ...args <command> …`. */
export interface CliCommand {
  file: string
  args: readonly string[]
  /** tsc's diagnostics when it reported errors but still emitted the CLI ('' when clean). */
  diagnostics: string
}

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/**
 * Compile src/ with tsconfig.build.json into `outDir/dist`. Type errors do not stop it (tsc
 * emits anyway, as tsx would run the sources anyway); a missing output does.
 */
export const compileCli = async (outDir: string): Promise<CliCommand> => {
  await mkdir(outDir, { recursive: true })
  // The compiled files import their dependencies by package name and are ES modules.
  await symlink(join(ROOT, 'node_modules'), join(outDir, 'node_modules'))
  // package.json: `"type": "module"`, and the version the CLI reports.
  await copyFile(join(ROOT, 'package.json'), join(outDir, 'package.json'))
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  const r = await exec(process.execPath, [
    tsc,
    ...['-p', join(ROOT, 'tsconfig.build.json'), '--outDir', join(outDir, 'dist')],
    ...['--declaration', 'false', '--sourceMap', 'false'],
  ])
  const main = join(outDir, 'dist', 'cli', 'bin.js')
  try {
    await access(main)
  } catch {
    throw new Error(`tsc did not emit ${main} (exit ${r.code}): ${r.stdout}${r.stderr}`)
  }
  return {
    file: process.execPath,
    args: [main],
    diagnostics: r.code === 0 ? '' : `${r.stdout}${r.stderr}`.trim(),
  }
}
