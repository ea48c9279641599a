import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { link, mkdir, mkdtemp, open, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import fc from 'fast-check'
import { run } from '../../src/io/spawn.ts'
import { COMMON_TAR_FLAGS, createTarArchive } from '../../src/archive/tar.ts'
import { TarMemberParser, TarParseError } from '../../src/archive/tar-members.ts'
import type { TarMember } from '../../src/archive/tar-members.ts'

const MiB = 1024 * 1024

const parseAll = (data: Buffer, cuts: readonly number[] = []): TarMember[] => {
  const p = new TarMemberParser()
  const out: TarMember[] = []
  let at = 0
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    out.push(...p.push(data.subarray(at, cut)))
    at = cut
  }
  out.push(...p.push(data.subarray(at)))
  p.end()
  return out
}

/** `check` holds for 60 random sets of up to 40 cut points in `data` (fast-check). */
const forAnyCuts = (data: Buffer, check: (cuts: number[]) => void): void => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: data.length }), { maxLength: 40 }), check),
    { numRuns: 60 },
  )
}

const sha256sum = async (path: string): Promise<string> =>
  (await run('sha256sum', [path])).stdout.split(' ')[0] ?? ''

/** The tricky tree: sparse, long names and link, ACL, xattr, hard link, symlink, fifo, device. */
const buildTricky = async (root: string): Promise<void> => {
  const f = await open(join(root, 'sparse'), 'w')
  await f.write(Buffer.from('hello'), 0, 5, 3 * MiB)
  await f.write(Buffer.alloc(70_000, 7), 0, 70_000, 5 * MiB + 100)
  await f.truncate(10 * MiB)
  await f.close()
  const long = join(root, 'd', 'a'.repeat(120))
  await mkdir(long, { recursive: true })
  await writeFile(join(long, 'b'.repeat(150)), 'long name\n')
  await writeFile(join(root, 'acl.txt'), 'acl\n')
  await run('setfacl', ['-m', 'u:1234:rw', join(root, 'acl.txt')])
  await writeFile(join(root, 'xa'), 'x\n')
  await run('setfattr', ['-n', 'user.foo', '-v', 'bar', join(root, 'xa')])
  await writeFile(join(root, 'h1'), 'hard\n')
  await link(join(root, 'h1'), join(root, 'h2'))
  await symlink('h1', join(root, 'sym'))
  await symlink('c'.repeat(200), join(root, 'longsym'))
  await run('mkfifo', [join(root, 'fifo')])
  await run('mknod', [join(root, 'null'), 'c', '1', '3'])
  await writeFile(join(root, 'empty'), '')
  await writeFile(join(root, 'big'), Buffer.alloc(3 * MiB + 17, 0x5a))
}

const FILES = ['sparse', 'acl.txt', 'xa', 'empty', 'big', `d/${'a'.repeat(120)}/${'b'.repeat(150)}`]

describe('archive/tar-members', () => {
  let dir: string
  let root: string
  const archives: Record<string, Buffer> = {}
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-tar-members-'))
    root = join(dir, 'root')
    await mkdir(root)
    await buildTricky(root)
    // Our flags (POSIX pax with PAX sparse 1.0), and the GNU format ('S', 'L', 'K').
    for (const [name, extra] of [
      ['pax', []],
      ['gnu', ['--format=gnu']],
    ] as const) {
      const out = join(dir, `${name}.tar`)
      const flags = name === 'gnu' ? ['--sparse', '--numeric-owner'] : COMMON_TAR_FLAGS
      await run('tar', ['cpf', out, ...extra, ...flags, `--directory=${root}`, '.'])
      archives[name] = await readFile(out)
    }
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  for (const format of ['pax', 'gnu'] as const) {
    it(`reads every member of what GNU tar writes (${format})`, async () => {
      const data = archives[format] ?? Buffer.alloc(0)
      const members = parseAll(data)
      const by = new Map(members.map((m) => [m.path.replace(/\/$/, ''), m]))
      for (const f of FILES) {
        const m = by.get(`./${f}`)
        assert.equal(m?.type, 'file', f)
        assert.equal(m.sha256, await sha256sum(join(root, f)), f)
      }
      assert.equal(by.get('./sparse')?.size, 10 * MiB)
      assert.equal(by.get('./big')?.size, 3 * MiB + 17)
      assert.equal(by.get('./sym')?.type, 'symlink')
      assert.equal(by.get('./sym')?.link, 'h1')
      assert.equal(by.get('./longsym')?.link, 'c'.repeat(200))
      assert.equal(by.get('./fifo')?.type, 'fifo')
      assert.equal(by.get('./null')?.type, 'char')
      assert.equal(by.get('.')?.type, 'dir')
      assert.equal(by.get(`./d/${'a'.repeat(120)}`)?.type, 'dir')
      const links = members.filter((m) => m.type === 'hardlink')
      assert.equal(links.length, 1)
      assert.ok(['./h1', './h2'].includes(links[0]?.link ?? ''))
      if (format === 'gnu') {
        // The sparse member is an old GNU 'S' member.
        const off = by.get('./sparse')?.offset ?? -1
        assert.equal(String.fromCharCode(data[off + 156] ?? 0), 'S')
      }
      // Offsets are increasing block boundaries, the first one 0.
      assert.equal(members[0]?.offset, 0)
      for (const [i, m] of members.entries()) {
        assert.equal(m.offset % 512, 0)
        if (i > 0) assert.ok(m.offset > (members[i - 1]?.offset ?? 0))
      }
    })

    it(`gives the same records however the stream is cut (${format})`, () => {
      const data = archives[format] ?? Buffer.alloc(0)
      const want = parseAll(data)
      forAnyCuts(data, (cuts) => {
        assert.deepEqual(parseAll(data, cuts), want)
      })
      // Every cut in the first blocks, one byte at a time.
      const one = new TarMemberParser()
      const got: TarMember[] = []
      for (let i = 0; i < 8192; i++) got.push(...one.push(data.subarray(i, i + 1)))
      got.push(...one.push(data.subarray(8192)))
      one.end()
      assert.deepEqual(got, want)
    })
  }

  /**
   * `deferContent`: the records and spans of `data` cut at `cuts`, each file's content hashed
   * from its spans as a caller's thread does.
   */
  const parseDeferred = (data: Buffer, cuts: number[] = []): TarMember[] => {
    const p = new TarMemberParser({ deferContent: true })
    const hashes = new Map<number, ReturnType<typeof createHash>>()
    const digests = new Map<number, string>()
    const out: TarMember[] = []
    const points = [...new Set([0, ...cuts, data.length])].sort((a, b) => a - b)
    for (let i = 1; i < points.length; i++) {
      const base = points[i - 1] ?? 0
      const chunk = data.subarray(base, points[i])
      out.push(...p.push(chunk))
      const s = p.takeSpans()
      for (let j = 0; j < s.length; j += 4) {
        const [id = -1, start = 0, end = 0, kind = 0] = s.slice(j, j + 4)
        const h = hashes.get(id) ?? createHash('sha256')
        hashes.set(id, h)
        if (kind === 2) {
          // A hole: end - start zero bytes.
          assert.equal(start, 0)
          h.update(Buffer.alloc(end))
          continue
        }
        // Spans lie within the chunk they were found in.
        assert.ok(start >= base && end <= base + chunk.length && end >= start)
        h.update(data.subarray(start, end))
        if (kind === 1) digests.set(id, h.digest('hex'))
      }
    }
    p.end()
    return out.map((m, id) => {
      const d = digests.get(id)
      if (m.type !== 'file' || m.sha256 !== undefined) {
        assert.equal(d, undefined)
        return m
      }
      assert.ok(d !== undefined, m.path)
      return { ...m, sha256: d }
    })
  }

  for (const format of ['pax', 'gnu'] as const) {
    it(`leaves files' content digests to the caller with their spans and holes (${format})`, () => {
      const data = archives[format] ?? Buffer.alloc(0)
      const want = parseAll(data)
      const deferred = new TarMemberParser({ deferContent: true }).push(data)
      for (const path of ['./sparse', './big']) {
        assert.ok(
          deferred.some((m) => m.path === path && m.sha256 === undefined),
          path,
        )
      }
      forAnyCuts(data, (cuts) => {
        assert.deepEqual(parseDeferred(data, cuts), want)
      })
    })
  }

  it('reads a base-256 size field', () => {
    const data = Buffer.from(archives['gnu'] ?? Buffer.alloc(0))
    const want = parseAll(data)
    const m = want.find((r) => r.path === './big')
    assert.ok(m)
    const h = data.subarray(m.offset, m.offset + 512)
    h.fill(0, 124, 136)
    h[124] = 0x80
    h.writeUIntBE(m.size, 130, 6)
    h.fill(0x20, 148, 156)
    let sum = 0
    for (const b of h) sum += b
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii')
    const got = parseAll(data).find((r) => r.path === './big')
    assert.equal(got?.size, m.size)
    assert.equal(got.sha256, m.sha256)
  })

  it('refuses a damaged header with its offset, and an unfinished stream', () => {
    const data = Buffer.from(archives['pax'] ?? Buffer.alloc(0))
    const m = parseAll(data).find((r) => r.path === './xa')
    assert.ok(m)
    data[m.offset + 3] = (data[m.offset + 3] ?? 0) ^ 0x01
    assert.throws(
      () => parseAll(data),
      (e: unknown) =>
        e instanceof TarParseError &&
        e.offset === m.offset &&
        /byte \d+ is damaged/.test(e.message),
    )
    const p = new TarMemberParser()
    p.push((archives['pax'] ?? Buffer.alloc(0)).subarray(0, 5000))
    assert.throws(() => {
      p.end()
    }, TarParseError)
  })

  it('random bytes only ever give records or a TarParseError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 4096 }), (bytes) => {
        try {
          parseAll(Buffer.from(bytes))
        } catch (e) {
          assert.ok(e instanceof TarParseError, String(e))
        }
      }),
    )
  })

  it('createTarArchive: the digest is the file sha256sum, the members file what the parser reads', async () => {
    for (const compress of [undefined, { type: 'zstd', threads: 2 }] as const) {
      const output = join(dir, compress === undefined ? 'c.tar' : 'c.tar.zst')
      const members = join(dir, `${compress?.type ?? 'plain'}.members`)
      const r = await createTarArchive({ directory: root, output, members, compress })
      assert.equal(r.digest, await sha256sum(output))
      assert.equal(r.members?.digest, await sha256sum(members))
      if (compress !== undefined) await run('zstd', ['-d', '-q', '-f', output, '-o', `${output}.d`])
      const plain = await readFile(compress === undefined ? output : `${output}.d`)
      const lines = (await readFile(members, 'utf8')).trimEnd().split('\n')
      assert.deepEqual(
        lines.map((l) => JSON.parse(l) as unknown),
        parseAll(plain),
      )
      assert.equal(r.members.count, lines.length)
    }
  })
})
