import assert from 'node:assert/strict'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { COMMON_TAR_FLAGS, MemberGate } from '../../src/archive/index.ts'
import { BackupError, isBackupError } from '../../src/errors.ts'
import { run } from '../../src/io/spawn.ts'
import { makeTempDir } from '../../src/io/tmpdir.ts'
import type { TempDir } from '../../src/io/tmpdir.ts'
import { craftTar } from './craft-tar.ts'

/** Feed `archive` to a gate in chunks of `sizes` (cycled); returns what it passed, or the error. */
const feed = (
  archive: Buffer,
  sizes: readonly number[],
  refuse: (flag: string) => boolean,
): { passed: Buffer; error?: unknown } => {
  const gate = new MemberGate((m, flag) => {
    if (refuse(flag)) throw new BackupError('ARCHIVE_INVALID', `refused ${m.path}`)
  })
  const out: Buffer[] = []
  let at = 0
  try {
    for (let i = 0; at < archive.length; i++) {
      const n = sizes[i % sizes.length] ?? 1
      // The gate may keep views of the chunk only until its next call: hand it a copy it owns.
      for (const part of gate.pass(Buffer.from(archive.subarray(at, at + n)))) {
        out.push(Buffer.from(part))
      }
      at += n
    }
    gate.end('test.tar')
  } catch (error) {
    return { passed: Buffer.concat(out), error }
  }
  return { passed: Buffer.concat(out) }
}

describe('archive/tar-extract: the member gate', () => {
  let tmp: TempDir
  let real: Buffer
  before(async () => {
    tmp = await makeTempDir('gb-gate-test-')
    const src = join(tmp.path, 'src')
    await mkdir(join(src, 'a'.repeat(120)), { recursive: true })
    await writeFile(join(src, 'a'.repeat(120), 'long-named-file'), 'x'.repeat(3000))
    await writeFile(join(src, 'small'), 'y')
    await run('setfattr', ['-n', 'user.k', '-v', 'v', join(src, 'small')])
    const archive = join(tmp.path, 'real.tar')
    await run('tar', ['cpf', archive, ...COMMON_TAR_FLAGS, `--directory=${src}`, '.'])
    real = await readFile(archive)
  })
  after(async () => {
    await tmp.remove()
  })

  it('passes a whole archive in any chunking, up to its end-of-archive blocks', () => {
    const end =
      real.length -
      Buffer.from(real)
        .reverse()
        .findIndex((b) => b !== 0)
    for (const sizes of [[1], [511, 2], [512], [7000, 13], [real.length]]) {
      const { passed, error } = feed(real, sizes, () => false)
      assert.equal(error, undefined, String(error))
      assert.ok(passed.length >= end && passed.length <= real.length, sizes.join(','))
      assert.deepEqual(passed, real.subarray(0, passed.length))
    }
  })

  it('never passes a byte of a member before its headers were checked', () => {
    const ok = craftTar([{ name: 'ok', data: 'fine' }])
    const archive = craftTar([
      { name: 'ok', data: 'fine' },
      { name: 'continued', type: 'M', data: 'rest of a file' },
    ])
    const refusedAt = ok.length - 1024 // where the M member's header starts
    for (const sizes of [[1], [100], [513], [archive.length]]) {
      const { passed, error } = feed(archive, sizes, (flag) => flag === 'M')
      assert.ok(isBackupError(error, 'ARCHIVE_INVALID'), String(error))
      assert.match(error.message, /refused continued/)
      assert.ok(passed.length <= refusedAt, `${sizes.join(',')}: ${passed.length} > ${refusedAt}`)
      assert.deepEqual(passed, archive.subarray(0, passed.length))
    }
  })

  it('holds back a pax header until the member it describes was checked', () => {
    // The first pax header ('x') of the real archive starts a member: refusing every member
    // means nothing at all goes through, however small the chunks.
    for (const sizes of [[1], [512], [real.length]]) {
      const { passed, error } = feed(real, sizes, () => true)
      assert.ok(isBackupError(error, 'ARCHIVE_INVALID'))
      assert.equal(passed.length, 0, sizes.join(','))
    }
  })

  it('refuses an archive without members, and a damaged one', () => {
    assert.match(String(feed(craftTar([]), [1024], () => false).error), /has no members/)
    const damaged = Buffer.from(real)
    damaged[10] = (damaged[10] ?? 0) ^ 0xff // the first header no longer matches its checksum
    const { error } = feed(damaged, [4096], () => false)
    assert.ok(isBackupError(error, 'ARCHIVE_INVALID'))
  })
})
