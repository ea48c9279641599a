/** Checks that no FUSE export (qemu-storage-daemon) of ours outlives an operation. */
import assert from 'node:assert/strict'
import { readMounts } from '../../src/archive/mountinfo.ts'
import { childProcesses } from '../archive/procs.ts'

/**
 * Nothing of ours may remain: no daemon child, no FUSE mount in a `guestbackup-fuse-<our pid>-`
 * temp dir (other test files run exports of their own at the same time).
 */
export const assertNoExportLeft = async (): Promise<void> => {
  const kids = (await childProcesses()).filter((c) => c.comm.startsWith('qemu-storage'))
  assert.deepEqual(kids, [], 'a qemu-storage-daemon is still running')
  const ours = `guestbackup-fuse-${process.pid}-`
  const fuse = (await readMounts()).filter((m) => m.mountPoint.includes(ours))
  assert.deepEqual(fuse, [], 'a FUSE export is still mounted')
}
