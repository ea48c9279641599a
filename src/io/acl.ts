/**
 * POSIX ACL entries through `setfacl`/`getfacl` (acl(5)): the one place guestbackup changes
 * ACLs. Used to give an unprivileged container's mapped root search-only access (`x`) to the
 * store directories above its backup: it can reach a path it is told, never list anything.
 */
import { readFile } from 'node:fs/promises'
import { run } from './spawn.ts'

const entry = (uid: number): string => `u:${uid}`

/** Add (or set) the entry `u:<uid>:x` on the directory `path` (`setfacl -m`). */
export const grantSearch = async (path: string, uid: number): Promise<void> => {
  await run('setfacl', ['-m', `${entry(uid)}:x`, '--', path], { errorCode: 'IO' })
}

/**
 * Remove the entry of `uid` from the directory `path` (`setfacl -x`; none there is no error).
 * setfacl recomputes the mask, and an ACL left equivalent to the mode bits is dropped.
 */
export const revokeUser = async (path: string, uid: number): Promise<void> => {
  await run('setfacl', ['-x', entry(uid), '--', path], { errorCode: 'IO' })
}

/** Remove every extended entry from the directory `path` (`setfacl -b`). */
export const revokeAll = async (path: string): Promise<void> => {
  await run('setfacl', ['-b', '--', path], { errorCode: 'IO' })
}

/** Whether the ACL of `path` has an entry for `uid` (`getfacl -n`: numeric ids). */
export const hasUserEntry = async (path: string, uid: number): Promise<boolean> => {
  const r = await run('getfacl', ['-c', '-n', '-p', '--', path], { errorCode: 'IO' })
  return r.stdout.split('\n').some((l) => l.startsWith(`user:${uid}:`))
}

/**
 * Whether this process runs as a mapped user: in a user namespace other than the initial one,
 * whose `/proc/self/uid_map` is the identity over all ids, `0 0 4294967295`
 * (user_namespaces(7)). There `getuid()` is the id inside the namespace (0 for a container's
 * mapped root), not the host's.
 */
export const isMappedUser = async (): Promise<boolean> => {
  if (process.getuid?.() !== 0) return true
  const map = await readFile('/proc/self/uid_map', 'utf8')
  return map.trim().split(/\s+/).join(' ') !== '0 0 4294967295'
}
