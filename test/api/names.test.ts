import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { BACKUP_FILE_RE, isValidArchiveName, isValidDeviceName } from '../../src/api/names.ts'

// Names that become paths below the store: each pattern must match the whole name.
describe('api/names', () => {
  it('device names: plain, never a path', () => {
    for (const ok of ['drive-scsi0', 'drive-efidisk0', 'virtio1']) {
      assert.equal(isValidDeviceName(ok), true, ok)
    }
    for (const bad of ['../x', 'drive-scsi0/..', '/etc', 'a b', '-x', '', 'x'.repeat(65)]) {
      assert.equal(isValidDeviceName(bad), false, bad)
    }
  })

  it('backup file names: one plain component', () => {
    for (const ok of ['drive-scsi0.qcow2', 'archive.tar', 'guest.conf']) {
      assert.equal(BACKUP_FILE_RE.test(ok), true, ok)
    }
    for (const bad of ['../x.tar', 'a/b', '.hidden', 'x/../../y', 'x y', 'z\n']) {
      assert.equal(BACKUP_FILE_RE.test(bad), false, JSON.stringify(bad))
    }
  })

  it('archive names: no .. segment, no leading slash', () => {
    assert.equal(isValidArchiveName('100/qemu-2026-01-01T00:00:00Z'), true)
    for (const bad of ['/100/x', '100/../x', '100//x', '100/./x', '100/x;rm']) {
      assert.equal(isValidArchiveName(bad), false, bad)
    }
  })
})
