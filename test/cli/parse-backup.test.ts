import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { InvalidArgumentError } from 'commander'
import { generateNotes, parseNotesTemplate } from '../../src/cli/parse-backup.ts'
import { guestName } from '../../src/cli/commands/backup-after.ts'

const values = { cluster: 'c1', guestname: 'web', node: 'pve1', vmid: 100 }

// pve-manager PVE/VZDump.pm: $verify_notes_template and $generate_notes.
describe('cli/parse-backup: --notes-template', () => {
  it('unescapes left to right before the variables, as $generate_notes', () => {
    assert.equal(generateNotes('{{guestname}}\\n{{vmid}}', values), 'web\n100')
    // An escaped backslash before n is a backslash and an n, not a line feed.
    assert.equal(generateNotes('a\\\\nb', values), 'a\\nb')
    // The escapes come first: an escaped backslash before a variable keeps the variable.
    assert.equal(generateNotes('\\\\{{node}} {{cluster}}', values), '\\pve1 c1')
    assert.equal(generateNotes('{{vmid}}{{vmid}}', values), '100100')
  })

  it('refuses what vzdump refuses, with its message and positions', () => {
    const refused = (t: string, why: string) => {
      assert.throws(
        () => parseNotesTemplate(t),
        (e: unknown) => e instanceof InvalidArgumentError && e.message === why,
        t,
      )
    }
    refused('a\nb', 'contains a line feed')
    refused('x\\ty', "found unknown: escape sequence '\\t' at char 1")
    refused('ab{{name}}', "found unknown: variable 'name' at char 6")
    refused(
      '\\x{{foo}}',
      "found unknown: escape sequence '\\x' at char 0, variable 'foo' at char 6",
    )
    assert.equal(parseNotesTemplate('{{guestname}} \\\\ \\n'), '{{guestname}} \\\\ \\n')
    // Not a variable (spaces inside): left as text, as Proxmox does.
    assert.equal(parseNotesTemplate('{{ vmid }}'), '{{ vmid }}')
  })

  it("takes {{guestname}} from the config's main section, else vzdump's fallback", () => {
    assert.equal(guestName('name: db\n[snap]\nname: old\n', 'qemu', 100), 'db')
    assert.equal(guestName('hostname: ct\n', 'lxc', 200), 'ct')
    assert.equal(guestName('[snap]\nname: old\n', 'qemu', 100), 'VM 100')
    assert.equal(guestName('', 'lxc', 200), 'CT200')
  })
})
