import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  BackupError,
  isBackupError,
  isNoSpace,
  NbdServerError,
  noSpaceIn,
  toBackupError,
  withSpaceIn,
} from '../src/errors.ts'

const errno = (code: string): NodeJS.ErrnoException =>
  Object.assign(new Error(`${code}: write failed`), { code })

describe('errors: full disks', () => {
  it('knows a full file system by errno, NBD errno, code and tool stderr', () => {
    for (const code of ['ENOSPC', 'EDQUOT', 'EFBIG']) assert.ok(isNoSpace(errno(code)), code)
    assert.ok(!isNoSpace(errno('EIO')))
    // qemu-nbd answers ENOSPC, EDQUOT and EFBIG with NBD_ENOSPC (28).
    const nbd = new NbdServerError(28, 'NBD WRITE of 1 bytes at 0 failed: ENOSPC (28)')
    assert.equal(nbd.code, 'NO_SPACE')
    assert.ok(isNoSpace(nbd))
    assert.equal(new NbdServerError(5, 'EIO').code, 'NBD_SERVER')
    const tool = new BackupError('ARCHIVE_TOOL_FAILED', 'mksquashfs failed (exit 1)', {
      details: { stderr: 'Write failed because No space left on device\n' },
    })
    assert.ok(isNoSpace(tool))
    assert.ok(isNoSpace(new BackupError('IO', 'copy failed', { cause: errno('ENOSPC') })))
    assert.equal(toBackupError(errno('EDQUOT')).code, 'NO_SPACE')
  })

  it('names the place in one line and keeps the cause', () => {
    const cause = errno('ENOSPC')
    const e = noSpaceIn('store', '/srv/backup', cause, 'writing 100/qemu-x/drive-scsi0.qcow2')
    assert.equal(e.code, 'NO_SPACE')
    assert.equal(
      e.message,
      'no space left in the store /srv/backup (writing 100/qemu-x/drive-scsi0.qcow2)',
    )
    assert.equal(e.cause, cause)
    assert.equal(
      noSpaceIn('restore target', '/restore', cause).message,
      'no space left on the restore target /restore',
    )
  })

  it('withSpaceIn wraps only a full disk, and keeps the place an inner layer named', async () => {
    await assert.rejects(
      withSpaceIn('temp dir', '/tmp', () => Promise.reject(errno('ENOSPC')), 'job.log'),
      { code: 'NO_SPACE', message: 'no space left in the temp dir /tmp (writing job.log)' },
    )
    const other = errno('EACCES')
    await assert.rejects(
      withSpaceIn('store', '/s', () => Promise.reject(other)),
      (e) => e === other,
    )
    const inner = noSpaceIn('fleecing dir', '/var/tmp', errno('ENOSPC'))
    await assert.rejects(
      withSpaceIn('temp dir', '/tmp', () => Promise.reject(inner)),
      (e) => e === inner && isBackupError(e, 'NO_SPACE'),
    )
  })
})
