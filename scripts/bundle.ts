/**
 * Bundle the CLI with esbuild into `dist/bundle/` (or `--outdir DIR`): `bin.js`, the entry, and
 * one chunk per part the commands load on demand (program.ts imports each command's module when
 * it runs, and esbuild's code splitting turns every such `import()` into a chunk of its own). The
 * dependencies (commander, pino, zod) are inside; nothing is resolved from node_modules at run
 * time. bin/guestbackup runs the bundle when it is newer than every source file.
 *
 *   node --import tsx scripts/bundle.ts [--outdir DIR]
 *
 * The output depends only on the sources and the locked esbuild version (no timestamps, no
 * absolute paths: esbuild names chunks by a hash of their content), so the Debian package built
 * from it stays reproducible. Not minified: `--debug` stack traces keep their names.
 * https://esbuild.github.io/api/#splitting
 */
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { build } from 'esbuild'

const ROOT = fileURLToPath(new URL('..', import.meta.url))

const { values } = parseArgs({ options: { outdir: { type: 'string' } } })
const outdir = values.outdir ?? join(ROOT, 'dist', 'bundle')

await rm(outdir, { recursive: true, force: true })
await build({
  absWorkingDir: ROOT,
  entryPoints: ['src/cli/bin.ts'],
  outdir,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20.19',
  // pino and commander are CommonJS: in an ES module bundle their require() of Node's own
  // modules needs a real require (https://esbuild.github.io/api/#platform, "node").
  banner: {
    js: "import { createRequire as __gbCreateRequire } from 'node:module'; const require = __gbCreateRequire(import.meta.url);",
  },
  legalComments: 'eof',
  // Module comments name paths as seen from the checkout (node_modules/pino/…), also where
  // node_modules is a link to another tree.
  preserveSymlinks: true,
  logLevel: 'warning',
})
