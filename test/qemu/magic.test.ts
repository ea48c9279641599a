import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, open, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import fc from 'fast-check'
import { detectImageFormat, MAGIC_BYTES } from '../../src/qemu/magic.ts'

const sh = promisify(execFile)

const head = async (path: string): Promise<Buffer> => {
  await using fh = await open(path, 'r')
  const buf = Buffer.alloc(MAGIC_BYTES)
  const { bytesRead } = await fh.read(buf, 0, MAGIC_BYTES, 0)
  return buf.subarray(0, bytesRead)
}

describe('qemu/magic: image signatures, as QEMU would probe them', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-magic-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  for (const fmt of ['qcow2', 'qed', 'vmdk', 'vdi', 'vhdx', 'vpc', 'raw'] as const) {
    it(`recognises an image qemu-img created as ${fmt}`, async () => {
      const file = join(dir, `img.${fmt}`)
      await sh('qemu-img', ['create', '-q', '-f', fmt, file, '4M'])
      assert.equal(detectImageFormat(await head(file)), fmt === 'raw' ? undefined : fmt)
    })
  }

  it('recognises a LUKS header and a vmdk descriptor', () => {
    const luks = Buffer.concat([Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]), Buffer.alloc(8)])
    assert.equal(detectImageFormat(luks), 'luks')
    assert.equal(detectImageFormat(Buffer.from('# Disk DescriptorFile\nversion=1\n')), 'vmdk')
  })

  it('never throws, and zeroes are no image', () => {
    assert.equal(detectImageFormat(Buffer.alloc(MAGIC_BYTES)), undefined)
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: MAGIC_BYTES }), (b) => {
        detectImageFormat(Buffer.from(b))
      }),
    )
  })
})
