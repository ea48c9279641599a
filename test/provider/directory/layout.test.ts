import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import {
  BACKUP_DIR_RE,
  GUEST_DIR_RE,
  formatTime,
  parseTime,
  parseVolname,
  volumeRef,
} from '../../../src/provider/directory/layout.ts'
import { isBackupError } from '../../../src/errors.ts'
import { isValidArchiveName } from '../../../src/api/names.ts'

describe('provider/directory/layout', () => {
  it('knows backup and guest directories by their whole name only', () => {
    assert.equal(BACKUP_DIR_RE.test('qemu-2026-11-26T04:00:00Z'), true)
    for (const bad of [
      'qemu-2026-11-26T04:00:00Z.failed',
      '.partial-qemu-2026-11-26T04:00:00Z',
      'x-lxc-2026-11-26T04:00:00Z',
    ]) {
      assert.equal(BACKUP_DIR_RE.test(bad), false, bad)
    }
    assert.equal(GUEST_DIR_RE.test('100'), true)
    for (const bad of ['0100', '100x', 'x100', '100/..', '']) {
      assert.equal(GUEST_DIR_RE.test(bad), false, bad)
    }
  })

  it('names backups with RFC3339 UTC times', () => {
    const ref = volumeRef(100, 'qemu', Date.UTC(2026, 10, 26, 4, 0, 0) / 1000)
    assert.equal(ref.volname, 'backup/100/qemu-2026-11-26T04:00:00Z')
    assert.equal(ref.archiveName, '100/qemu-2026-11-26T04:00:00Z')
    assert.ok(isValidArchiveName(ref.archiveName))
  })

  it('round-trips every volume name', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 999_999_999 }),
        fc.constantFrom('qemu' as const, 'lxc' as const),
        fc.integer({ min: 0, max: 4_102_444_800 }),
        (vmid, type, t) => {
          const ref = volumeRef(vmid, type, t)
          assert.deepEqual(parseVolname(ref.volname), ref)
          assert.equal(parseTime(formatTime(t)), t)
        },
      ),
    )
  })

  for (const bad of [
    'backup/100/qemu-2026-11-26T04:00:00Z/../../etc',
    '/backup/100/qemu-2026-11-26T04:00:00Z',
    'backup/../100/qemu-2026-11-26T04:00:00Z',
    'backup/100/qemu-2026-11-26T04:00:00Z;rm -rf /',
    'backup/100/qemu-2026-13-26T04:00:00Z',
    'backup/100/vzdump-2026-11-26T04:00:00Z',
    'backup/0100/qemu-2026-11-26T04:00:00Z',
    'backup/100/qemu-1700000000',
    '',
  ]) {
    it(`refuses the volume name ${JSON.stringify(bad)}`, () => {
      assert.throws(
        () => parseVolname(bad),
        (e: unknown) => isBackupError(e, 'USAGE'),
      )
    })
  }

  it('never accepts names with .. or a leading slash as archive names', () => {
    assert.equal(isValidArchiveName('../x'), false)
    assert.equal(isValidArchiveName('/x'), false)
    assert.equal(isValidArchiveName('a//b'), false)
    assert.equal(isValidArchiveName('a b'), false)
    assert.equal(isValidArchiveName('100/qemu-2026-11-26T04:00:00Z'), true)
  })
})
