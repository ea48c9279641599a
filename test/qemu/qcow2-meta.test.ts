import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { copyFile, mkdtemp, open, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../src/io/spawn.ts'
import { qcow2MetadataDigest } from '../../src/qemu/qcow2-meta.ts'

const patch = async (path: string, offset: number, bytes: Buffer): Promise<void> => {
  await using fh = await open(path, 'r+')
  await fh.write(bytes, 0, bytes.length, offset)
}

const u64At = async (path: string, offset: number): Promise<number> => {
  await using fh = await open(path, 'r')
  const b = Buffer.alloc(8)
  await fh.read(b, 0, 8, offset)
  return Number(b.readBigUInt64BE(0))
}

const be64 = (v: number): Buffer => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(BigInt(v))
  return b
}

describe('qemu: qcow2 metadata digest', () => {
  let dir: string
  let image: string
  let work: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-meta-'))
    image = join(dir, 'a.qcow2')
    work = join(dir, 'w.qcow2')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M'])
    await run('qemu-io', ['-c', 'write -P 7 0 1M', '-c', 'write -P 9 40M 64k', image])
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })
  const fresh = async (): Promise<string> => {
    await copyFile(image, work)
    return work
  }

  it('is the same for the same image and changes with any metadata byte', async () => {
    const want = await qcow2MetadataDigest(image)
    assert.equal(await qcow2MetadataDigest(await fresh()), want)
    const l1 = await u64At(image, 40)
    const l2 = (await u64At(image, l1)) & 0xffff_ffff_fe00
    const rt = await u64At(image, 48)
    const rb = (await u64At(image, rt)) & 0xffff_ffff_fe00
    // A header byte, a padding byte of the header cluster, an L1 and an L2 entry's reserved
    // bit (QEMU ignores it), the refcount table's padding, a refcount block.
    for (const [what, offset, byte] of [
      ['header', 64, 0x01],
      ['header cluster padding', 4000, 0x01],
      ['L1 entry reserved bit', l1 + 6, 0x01],
      ['L2 reserved bit', l2 + 6, 0x01],
      ['refcount table padding', rt + 8 * 9, 0x00],
      ['refcount block', rb + 1, 0x02],
    ] as const) {
      const p = await fresh()
      await using fh = await open(p, 'r+')
      const b = Buffer.alloc(1)
      await fh.read(b, 0, 1, offset)
      b[0] = (b[0] ?? 0) ^ (byte === 0 ? 0x10 : byte)
      await fh.write(b, 0, 1, offset)
      await fh.close()
      assert.notEqual(await qcow2MetadataDigest(p), want, what)
    }
  })

  it('does not depend on data clusters (their content is proven by the block digests)', async () => {
    const p = await fresh()
    await run('qemu-io', ['-c', 'write -P 8 0 64k', p])
    assert.equal(await qcow2MetadataDigest(p), await qcow2MetadataDigest(image))
  })

  it('refuses tables outside the image, bad cluster sizes and other files', async () => {
    let p = await fresh()
    await patch(p, 40, be64(1024 ** 4))
    await assert.rejects(qcow2MetadataDigest(p, 'w.qcow2'), {
      code: 'IMAGE_INVALID',
      message: /^w\.qcow2: the L1 table \(\d+ bytes at 1099511627776\) lies outside the image$/,
    })
    p = await fresh()
    const l1 = await u64At(image, 40)
    await patch(p, l1, be64(0x8000_0000_0000_0000 + 512 * 1024 ** 3))
    await assert.rejects(qcow2MetadataDigest(p, 'w.qcow2'), {
      code: 'IMAGE_INVALID',
      message: /^w\.qcow2: an L2 table .* lies outside the image$/,
    })
    // Two L1 entries naming one L2 table (a 2 GiB image has four L1 entries).
    const big = join(dir, 'big.qcow2')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', big, '2G'])
    await run('qemu-io', ['-c', 'write -P 1 0 64k', big])
    const bl1 = await u64At(big, 40)
    await patch(big, bl1 + 8, be64(await u64At(big, bl1)))
    await assert.rejects(qcow2MetadataDigest(big, 'big.qcow2'), {
      code: 'IMAGE_INVALID',
      message: /^big\.qcow2: an L2 table at \d+ is named twice$/,
    })
    p = await fresh()
    await patch(p, 20, Buffer.from([0, 0, 0, 30]))
    await assert.rejects(qcow2MetadataDigest(p, 'w.qcow2'), {
      code: 'IMAGE_INVALID',
      message: 'w.qcow2: cluster_bits 30 is out of range',
    })
    await writeFile(p, Buffer.alloc(4096))
    await assert.rejects(qcow2MetadataDigest(p, 'w.qcow2'), {
      code: 'IMAGE_INVALID',
      message: 'w.qcow2: not a qcow2 image',
    })
  })
})
