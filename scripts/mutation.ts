/**
 * `make mutation`: a small mutation check of the security rules. Each mutant deletes one rule
 * from a source file, runs the tests that guard that file, and is "killed" when they fail. A
 * surviving mutant is a rule no test holds; each must be killed by a new test or explained in
 * docs/testing.md (listed there by file and line text).
 *
 * Operators (one change per mutant):
 * - guard: a guard whose consequence throws (`if (COND) throw …` or `if (COND) {` with a throw on
 *   the next line) or returns the reason of a refusal (`if (COND) return '…'`) gets the
 *   condition `false`, so the rule never fires;
 * - anchor: a regular-expression literal `/^…$/` loses its anchors, so it matches inside
 *   anything.
 *
 * A survivor is "explained" when the table of docs/testing.md has a row whose first cell names
 * its file and a code snippet its line contains (cells like `` `chain.ts` `if (spec === null)` ``);
 * the run fails on any survivor that is not explained, and lists explanations no survivor used.
 *
 * Usage: node --import tsx scripts/mutation.ts [FILE …]   (default: every target below)
 */
import { spawn } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'

const ROOT = fileURLToPath(new URL('..', import.meta.url))

/** Source files holding security rules, and the tests that must fail when a rule goes. */
const TARGETS: Record<string, readonly string[]> = {
  'src/qemu/chain.ts': ['test/qemu/chain.test.ts'],
  'src/archive/tar-check.ts': ['test/archive/tar.test.ts'],
  'src/api/names.ts': ['test/api/names.test.ts', 'test/provider/directory/layout.test.ts'],
  'src/provider/directory/layout.ts': ['test/provider/directory/layout.test.ts'],
  'src/io/beneath.ts': ['test/io/beneath.test.ts'],
  'src/provider/directory/merge.ts': ['test/provider/directory/merge.test.ts'],
  'src/provider/directory/merge-journal.ts': ['test/provider/directory/merge.test.ts'],
  'src/provider/directory/manifest.ts': ['test/provider/directory/manifest.test.ts'],
  'src/provider/directory/session.ts': ['test/pve/errors.test.ts'],
  'src/qemu/qcow2-meta.ts': ['test/qemu/qcow2-meta.test.ts'],
  'src/digest/hasher.ts': ['test/digest/hasher.test.ts'],
  'src/provider/directory/digests.ts': ['test/provider/directory/verify.test.ts'],
}

/** Per test run; a mutant that hangs the tests counts as killed (a test noticed). */
const TIMEOUT_MS = 120_000

interface Mutant {
  file: string
  line: number
  operator: 'guard' | 'anchor'
  text: string
  apply: (lines: string[]) => string[]
}

/** True if the block opened on line `i` throws before it closes (at the same indentation). */
const blockThrows = (lines: readonly string[], i: number): boolean => {
  const indent = /^\s*/.exec(lines[i] ?? '')?.[0] ?? ''
  for (let j = i + 1; j < lines.length; j++) {
    const l = lines[j] ?? ''
    if (l.startsWith(`${indent}}`)) return false
    if (/^\s*(?:throw\b|return ['`])/.test(l)) return true
  }
  return false
}

const mutantsOf = (file: string, source: string): Mutant[] => {
  const lines = source.split('\n')
  const out: Mutant[] = []
  lines.forEach((text, i) => {
    const trimmed = text.trim()
    if (trimmed.startsWith('//') || trimmed.startsWith('*')) return
    const guard = /^(\s*(?:\} else )?if \()(.*)(\) (?:throw\b.*|return ['`].*|\{))$/.exec(text)
    const consequence = guard?.[3] ?? ''
    if (
      guard !== null &&
      (consequence.startsWith(') throw') ||
        consequence.startsWith(') return') ||
        blockThrows(lines, i))
    ) {
      out.push({
        file,
        line: i + 1,
        operator: 'guard',
        text: trimmed,
        apply: (ls) => ls.map((l, j) => (j === i ? `${guard[1]}false${guard[3]}` : l)),
      })
    }
    for (const m of text.matchAll(/\/\^((?:[^/\\\n]|\\.)+)\$\//g)) {
      const at = m.index
      out.push({
        file,
        line: i + 1,
        operator: 'anchor',
        text: trimmed,
        apply: (ls) =>
          ls.map((l, j) =>
            j === i ? `${l.slice(0, at)}/${m[1] ?? ''}/${l.slice(at + m[0].length)}` : l,
          ),
      })
    }
  })
  return out
}

interface Explanation {
  file: string
  snippet: string
}

/** The `(file, snippet)` pairs of the survivors table in docs/testing.md. */
const explanations = async (): Promise<Explanation[]> => {
  const doc = await readFile(`${ROOT}docs/testing.md`, 'utf8')
  const out: Explanation[] = []
  for (const line of doc.split('\n')) {
    const cell = /^\|\s*(`[^|]*)\|/.exec(line)?.[1]
    if (cell === undefined) continue
    const [file, ...snippets] = [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1] ?? '')
    if (file?.endsWith('.ts') !== true) continue
    for (const snippet of snippets) out.push({ file, snippet })
  }
  return out
}

const explains = (x: Explanation, m: Mutant): boolean =>
  m.file.endsWith(`/${x.file}`) && m.text.includes(x.snippet)

const runTests = (tests: readonly string[]): Promise<boolean> =>
  new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', '--test', '--test-reporter=dot', '--test-timeout=20000', ...tests],
      { cwd: ROOT, stdio: 'ignore', detached: true },
    )
    const timer = setTimeout(() => {
      process.kill(-(child.pid ?? 0), 'SIGKILL')
    }, TIMEOUT_MS)
    child.once('close', (code) => {
      clearTimeout(timer)
      resolve(code === 0)
    })
  })

const main = async (): Promise<number> => {
  const files = process.argv.slice(2).length > 0 ? process.argv.slice(2) : Object.keys(TARGETS)
  const survivors: Mutant[] = []
  let total = 0
  for (const file of files) {
    const tests = TARGETS[file]
    if (tests === undefined) throw new Error(`no tests registered for ${file}`)
    const path = `${ROOT}${file}`
    const original = await readFile(path, 'utf8')
    if (!(await runTests(tests))) throw new Error(`the tests of ${file} fail without a mutant`)
    try {
      for (const m of mutantsOf(file, original)) {
        total++
        await writeFile(path, m.apply(original.split('\n')).join('\n'))
        const survived = await runTests(tests)
        if (survived) survivors.push(m)
        console.log(
          `${survived ? 'SURVIVED' : 'killed  '} ${file}:${m.line} ${m.operator} ${m.text}`,
        )
      }
    } finally {
      await writeFile(path, original)
    }
  }
  const known = await explanations()
  const unexplained = survivors.filter((m) => !known.some((x) => explains(x, m)))
  console.log(
    `\n${total - survivors.length} of ${total} mutants killed, ${survivors.length - unexplained.length} survivors explained in docs/testing.md, ${unexplained.length} not`,
  )
  for (const m of unexplained)
    console.log(`UNEXPLAINED: ${m.file}:${m.line} ${m.operator} ${m.text}`)
  // Only meaningful for a run over every target.
  if (process.argv.length <= 2) {
    for (const x of known.filter((k) => !survivors.some((m) => explains(k, m)))) {
      console.log(`stale explanation (no such survivor): ${x.file} ${x.snippet}`)
    }
  }
  return unexplained.length === 0 ? 0 : 1
}

process.exitCode = await main()
