import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { MAN_PAGE, manPage } from '../../../scripts/man.ts'
import { roff } from '../../../src/cli/help/man.ts'
import { EXAMPLES } from '../../../src/cli/help/examples.ts'
import { EXIT_CODES } from '../../../src/cli/help/exit-codes.ts'

describe('docs/guestbackup.1', () => {
  it('is what the commander definitions make of it (run scripts/man.ts)', async () => {
    assert.equal(await readFile(MAN_PAGE, 'utf8'), manPage())
  })

  it('has a section per command, with its options, examples and the exit codes', () => {
    const page = manPage()
    for (const name of ['init', 'backup', 'restore', 'verify', 'prune', 'check', 'job run']) {
      assert.match(page, new RegExp(`^\\.SS "${roff(name).replace(/\\/g, '\\\\')} `, 'm'), name)
    }
    assert.doesNotMatch(page, /^\.SS "pve-/m, 'the Proxmox VE plugin commands stay hidden')
    assert.match(page, /^\.B \\-\\-bwlimit <rate>$/m)
    assert.match(page, /^store directory \(required, env: GUESTBACKUP_STORE\)$/m)
    for (const { code } of EXIT_CODES) assert.match(page, new RegExp(`^\\.B ${code}$`, 'm'))
    assert.ok(page.includes(roff('guestbackup job run /etc/guestbackup/nightly.toml')))
    assert.ok(page.includes(roff(EXAMPLES['restore']?.[2]?.what ?? 'missing')))
  })

  it('puts the date and version given on its title line', () => {
    assert.match(
      manPage({ date: '2026-12-02', version: '1.2.3' }),
      /^\.TH GUESTBACKUP 1 "2026-12-02" "guestbackup 1\.2\.3" "User Commands"\n/,
    )
  })

  it('escapes what roff would read as requests or escapes', () => {
    assert.equal(roff(".x 'y\n.z a\\b --c"), "\\&.x 'y\n\\&.z a\\eb \\-\\-c")
  })

  it('formats without a warning from man (as lintian checks it)', async () => {
    const r = await promisify(execFile)('man', ['--warnings', '-E', 'UTF-8', '-l', MAN_PAGE], {
      env: { ...process.env, MANWIDTH: '80', MAN_KEEP_FORMATTING: '' },
    })
    assert.equal(r.stderr, '')
    assert.match(r.stdout, /EXIT STATUS/)
  })
})
