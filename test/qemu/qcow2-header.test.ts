import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import fc from 'fast-check'
import { parseQcow2Header, QCOW2_MAGIC, readBackingName } from '../../src/qemu/qcow2-header.ts'

const sh = promisify(execFile)

describe('qemu/qcow2-header', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-q2h-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('reads the backing name qemu-img wrote, and null without one', async () => {
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'base.qcow2'), '1M'])
    const name = '../qemu-2026-01-01T00:00:00Z/drive-scsi0.qcow2'
    await sh('qemu-img', [
      ...['create', '-q', '-f', 'qcow2', '-u', '-b', name, '-F', 'qcow2'],
      ...[join(dir, 'top.qcow2'), '1M'],
    ])
    assert.equal(await readBackingName(join(dir, 'top.qcow2')), name)
    assert.equal(await readBackingName(join(dir, 'base.qcow2')), null)
    await writeFile(join(dir, 'raw'), 'not an image at all')
    assert.equal(await readBackingName(join(dir, 'raw')), undefined)
  })

  it('never throws on arbitrary bytes and bounds the name size', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        parseQcow2Header(Buffer.from(bytes))
      }),
    )
    const h = Buffer.alloc(20)
    h.writeUInt32BE(QCOW2_MAGIC, 0)
    h.writeUInt32BE(3, 4)
    h.writeBigUInt64BE(512n, 8)
    h.writeUInt32BE(1024, 16)
    assert.equal(parseQcow2Header(h), undefined)
    h.writeUInt32BE(1023, 16)
    assert.deepEqual(parseQcow2Header(h), { version: 3, backing: { offset: 512, size: 1023 } })
  })
})
