import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

// The Perl shim's own tests (test/pve/*.t, Test::More) run through prove, so that `make test`
// (every test/**/*.test.ts) covers pve/ too, and so do the end-to-end tests that drive the shim
// as vzdump, qmrestore and pct restore do against the real `guestbackup pve-call`
// (test/pve/e2e/*.t).
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')

const prove = (files: string[]): void => {
  const r = spawnSync('prove', ['-I', 'pve', '-I', 'test/pve/lib', ...files], {
    cwd: root,
    encoding: 'utf8',
    timeout: 240_000,
  })
  if (r.error) throw r.error
  assert.equal(r.status, 0, `prove failed:\n${r.stdout}\n${r.stderr}`)
}

const tests = (dir: string): string[] =>
  readdirSync(join(root, dir))
    .filter((f) => f.endsWith('.t'))
    .sort()
    .map((f) => join(dir, f))

describe('pve/ Perl shim', () => {
  it('unit tests (prove test/pve/*.t)', () => {
    prove(tests('test/pve'))
  })

  for (const file of tests('test/pve/e2e')) {
    it(`end to end against guestbackup pve-call (prove ${file})`, () => {
      prove([file])
    })
  }
})
