import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { chmod, mkdir, readFile, stat, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { AclRecordParser, restoreText } from '../../src/archive/acl-record.ts'
import { createSquashfs } from '../../src/archive/squashfs.ts'
import { applyPosixAcls, dumpPosixAcls } from '../../src/archive/squashfs-acls.ts'
import { isBackupError } from '../../src/errors.ts'
import { makeTempDir } from '../../src/io/tmpdir.ts'
import type { TempDir } from '../../src/io/tmpdir.ts'

const acl = (path: string): string =>
  execFileSync('getfacl', ['-c', '-n', '-E', '-p', path]).toString('utf8')
const setfacl = (...args: string[]): void => {
  execFileSync('setfacl', args)
}

/** A valid record body (access ACL with a named user). */
const ENTRIES = 'user::rw-\nuser:777:r--\ngroup::r--\nmask::r--\nother::r--\n\n'

describe('squashfs ACL record', () => {
  let tmp: TempDir
  let n = 0
  const fresh = async (name: string): Promise<string> => {
    const p = join(tmp.path, `${name}-${n++}`)
    await mkdir(p)
    return p
  }
  before(async () => {
    tmp = await makeTempDir('gb-sqfs-acls-test-')
  })
  after(async () => {
    await tmp.remove()
  })

  it('records what the image holds: excluded names are left out, default-only dirs kept', async () => {
    const src = await fresh('src')
    await writeFile(join(src, 'keep'), 'k\n')
    await writeFile(join(src, 'skip.tmp'), 's\n')
    await mkdir(join(src, 'excluded/inner'), { recursive: true })
    await writeFile(join(src, 'excluded/inner/f'), 'e\n')
    await mkdir(join(src, 'defaults'))
    await writeFile(join(src, 'plain'), 'no ACL\n')
    await writeFile(join(src, 'new\nline'), 'a name with a newline\n')
    for (const f of ['keep', 'skip.tmp', 'excluded/inner/f', 'new\nline'])
      setfacl('-m', 'u:1234:rw', join(src, f))
    setfacl('-d', '-m', 'g:99:rx', join(src, 'defaults'))
    const out = await fresh('out')
    const image = join(out, 'archive.sqfs')
    await createSquashfs({ directory: src, excludes: ['*.tmp', '/excluded'], output: image })
    const r = await dumpPosixAcls({ directory: src, image, output: join(out, 'archive.acls') })
    const text = await readFile(join(out, 'archive.acls'), 'latin1')
    const names = [...text.matchAll(/^# file: (.*)$/gm)].map((m) => m[1]).sort()
    // getfacl quotes the newline; unsquashfs lists it as two lines, read as one name.
    assert.deepEqual(names, ['defaults', 'keep', 'new\\012line'])
    assert.equal(r.records, 3)
    assert.match(text, /^default:group:99:r-x$/m)
  })

  describe('applying a record', () => {
    let target: string
    let outside: string
    let record: string
    before(async () => {
      const base = await fresh('apply')
      target = join(base, 'rootfs')
      outside = join(base, 'outside')
      await mkdir(join(target, 'dir'), { recursive: true })
      await mkdir(outside)
      await writeFile(join(outside, 'victim'), 'v\n')
      await writeFile(join(target, 'good'), 'g\n')
      await writeFile(join(target, 'dir/setuid'), '#!/bin/sh\n')
      await chmod(join(target, 'dir/setuid'), 0o4755)
      await symlink(outside, join(target, 'via'))
      await symlink(join(outside, 'victim'), join(target, 'last'))
      record = join(base, 'archive.acls')
    })
    const apply = async (text: string) => {
      await writeFile(record, text, 'latin1')
      return applyPosixAcls({ record, target })
    }
    const refused = async (name: string, why: RegExp): Promise<void> => {
      // A sound record first: a refusal anywhere means nothing is applied.
      const text = `# file: good\n${ENTRIES}# file: ${name}\n${ENTRIES}`
      await assert.rejects(
        apply(text),
        (e: unknown) => isBackupError(e, 'ARCHIVE_INVALID') && why.test(e.message),
      )
      assert.doesNotMatch(acl(join(target, 'good')), /user:777/)
      assert.doesNotMatch(acl(join(outside, 'victim')), /user:777/)
    }

    it('refuses .. components', () =>
      refused('../outside/victim', /has an empty, \. or \.\. component/))
    it('refuses a .. spelled with getfacl escapes', () =>
      refused('\\056\\056/outside/victim', /"\.\.\/outside\/victim" has an empty, \. or \.\./))
    it('refuses absolute names', () => refused('/etc/passwd', /is an absolute name/))
    it('refuses a path through a symlink', () =>
      refused('via/victim', /"via\/victim" goes through or names a symbolic link/))
    it('refuses a name that is a symlink', () =>
      refused('last', /"last" goes through or names a symbolic link/))
    it('refuses what is not an ACL entry', async () => {
      await assert.rejects(
        apply(`# file: good\nuser::rw-\n--set=u:0:rwx\n\n`),
        (e: unknown) =>
          isBackupError(e, 'ARCHIVE_INVALID') && e.message.includes('not an ACL entry'),
      )
    })

    it('sets the entries only: owner and flags comments change nothing', async () => {
      const before = await stat(join(target, 'dir/setuid'))
      // setfacl --restore would chown to the owner and clear the setuid bit by the flags.
      const text = `# file: dir/setuid\n# owner: 1000\n# group: 1000\n# flags: ---\n${ENTRIES}`
      const r = await apply(`${text}# file: dev/null\n${ENTRIES}# file: gone\n${ENTRIES}`)
      assert.equal(r.applied, 1)
      assert.deepEqual(r.warnings, ['ACLs of "gone": not restored'])
      const after = await stat(join(target, 'dir/setuid'))
      assert.equal(after.uid, before.uid)
      assert.equal(after.mode & 0o7000, 0o4000, 'setuid kept (no chown)')
      assert.match(acl(join(target, 'dir/setuid')), /^user:777:r--$/m)
    })
  })

  it('parses quoted names and keeps only entries for setfacl', () => {
    const p = new AclRecordParser('test')
    for (const l of ['# file: a\\012b', '# owner: 5', 'user::rw-', 'mask::r--\t#effective:r--'])
      assert.equal(p.line(l), undefined)
    const r = p.line('')
    assert.ok(r)
    assert.equal(r.path.toString('latin1'), 'a\nb')
    const text = restoreText(r, 0o2755)
    assert.equal(text, '# file: a\\012b\n# flags: -s-\nuser::rw-\nmask::r--\n\n')
  })
})
