import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { SquashfsListingCheck } from '../../src/archive/index.ts'
import { isBackupError } from '../../src/errors.ts'

const DIR = 'drwxr-xr-x 0/0                      82 2026-12-02 16:27'
const FILE = '-rw-r--r-- 1000/1001                 3 2026-12-02 16:27'
const LINK = 'lrwxrwxrwx 0/0                       4 2026-12-02 16:27'
const CDEV = 'crw-r--r-- 0/0                   1,  3 2026-12-02 16:27'
const SOCK = 'srwxr-xr-x 0/0                       0 2026-12-02 16:27'

/** Run a listing (`prefix path` lines, split where a name has a newline) through a check. */
const check = (lines: readonly (readonly [string, string])[]) => {
  const c = new SquashfsListingCheck('img.sqfs')
  for (const [prefix, path] of lines) for (const l of `${prefix} ${path}`.split('\n')) c.line(l)
  return c.end()
}

/** A predicate for `assert.throws`: `ARCHIVE_INVALID` whose message matches `re`. */
const refused = (re: RegExp) => (e: unknown) => {
  assert.ok(isBackupError(e, 'ARCHIVE_INVALID'), String(e))
  assert.match(e.message, re)
  return true
}

const ROOT = [DIR, 'squashfs-root'] as const

describe('squashfs listing check', () => {
  it('accepts a sound listing: depth first, sorted, devices, symlinks, latin1 names', () => {
    const r = check([
      ROOT,
      [CDEV, 'squashfs-root/cdev'],
      [DIR, 'squashfs-root/d'],
      [FILE, 'squashfs-root/d/a'],
      [DIR, 'squashfs-root/d/e'],
      [FILE, 'squashfs-root/d/e/x'],
      [FILE, 'squashfs-root/d/f'],
      [SOCK, 'squashfs-root/d/s'],
      [LINK, 'squashfs-root/l -> ../d'],
      [FILE, 'squashfs-root/n\u00c3\u00bc'], // "nü" as UTF-8 bytes read as latin1
      [FILE, 'squashfs-root/with space -> not a link'],
    ])
    // Five regular files of FILE's 3 bytes each: the total the restore's progress runs to.
    // Sockets are listed for the restore to remove (tar never restores one).
    assert.deepEqual(r, { members: 11, bytes: 15, sockets: ['d/s'] })
  })

  it('refuses a member listed after a symlink of its parent name (no directory before it)', () => {
    const lines = [
      ROOT,
      [LINK, 'squashfs-root/d -> /etc'],
      [FILE, 'squashfs-root/d/passwd'],
    ] as const
    assert.throws(() => check(lines), refused(/d\/passwd does not follow its directory/))
  })

  it('refuses a duplicate name in one directory (a symlink, then a directory of that name)', () => {
    const lines = [
      ROOT,
      [LINK, 'squashfs-root/d -> /etc'],
      [DIR, 'squashfs-root/d'],
      [FILE, 'squashfs-root/d/passwd'],
    ] as const
    assert.throws(() => check(lines), refused(/member d is a duplicate or out of order/))
  })

  it('refuses unsorted names (a duplicate elsewhere cannot hide between them)', () => {
    const lines = [ROOT, [FILE, 'squashfs-root/b'], [FILE, 'squashfs-root/a']] as const
    assert.throws(() => check(lines), refused(/member a is a duplicate or out of order/))
  })

  it('refuses .. , . and empty components', () => {
    for (const p of [
      'squashfs-root/..',
      'squashfs-root/a/../b',
      'squashfs-root/.',
      'squashfs-root//x',
    ]) {
      assert.throws(
        () => check([ROOT, [FILE, p]]),
        refused(/has an empty, \. or \.\. component/),
        p,
      )
    }
  })

  it('refuses a member outside the root and a listing without its root first', () => {
    assert.throws(() => check([ROOT, [FILE, '/etc/passwd']]), refused(/stray member \/etc\/passwd/))
    assert.throws(() => check([ROOT, [DIR, 'squashfs-root']]), refused(/stray member/))
    assert.throws(() => check([[FILE, 'squashfs-root']]), refused(/the listing has no root/))
    assert.throws(() => check([]), refused(/the listing is empty/))
  })

  it('marks the listing unverifiable at a line it cannot read, and checks nothing after it', () => {
    // A name with a newline: its second half is a line of its own.
    const r = check([ROOT, [FILE, 'squashfs-root/a\nb'], [FILE, 'squashfs-root/../x']])
    assert.deepEqual(r, { members: 2, bytes: 3, unverifiable: 'b', sockets: [] })
    const arrows = check([ROOT, [LINK, 'squashfs-root/a -> b -> c']])
    assert.deepEqual(arrows, {
      members: 1,
      bytes: 0,
      unverifiable: `${LINK} squashfs-root/a -> b -> c`,
      sockets: [],
    })
    const long = check([ROOT, [FILE, `squashfs-root/${'x'.repeat(70_000)}`]])
    assert.equal(long.members, 1)
    assert.ok(long.unverifiable !== undefined)
  })
})
