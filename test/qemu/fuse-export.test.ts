import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { lstat, mkdir, mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { isBackupError } from '../../src/errors.ts'
import { Dir } from '../../src/io/beneath.ts'
import { run } from '../../src/io/spawn.ts'
import { chainSpec, openChain } from '../../src/qemu/chain.ts'
import type { Chain } from '../../src/qemu/chain.ts'
import { startFuseExport } from '../../src/qemu/fuse-export.ts'
import { compareImages, convertImage, createImage } from '../../src/qemu/img.ts'
import { assertNoExportLeft } from '../helpers/fuse-export.ts'

const MiB = 1024 * 1024

describe('qemu/fuse-export: a pinned chain as a regular raw file', () => {
  let dir: string
  let root: Dir
  let chain: Chain
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-fuse-'))
    await mkdir(join(dir, 'b-1'))
    await mkdir(join(dir, 'b-2'))
    await createImage(join(dir, 'b-1', 'd.qcow2'), { format: 'qcow2', size: 8 * MiB })
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 2M', join(dir, 'b-1', 'd.qcow2')])
    await createImage('d.qcow2', {
      format: 'qcow2',
      size: 8 * MiB,
      backingFile: '../b-1/d.qcow2',
      backingFormat: 'qcow2',
      cwd: join(dir, 'b-2'),
    })
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 1M 2M', join(dir, 'b-2', 'd.qcow2')])
    root = await Dir.open(dir)
    chain = await openChain(root, 'b-2', 'd.qcow2', { dirName: /^b-\d$/ })
  })
  after(async () => {
    await chain.close()
    await root.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('shows the chain as a regular file with its raw content, and leaves nothing after stop', async () => {
    const exp = await startFuseExport({ spec: chainSpec(chain.links), size: 8 * MiB })
    try {
      const st = await stat(exp.path)
      assert.ok(st.isFile())
      assert.equal(st.size, 8 * MiB)
      assert.equal(st.mode & 0o777 & 0o222, 0, 'read-only export')
      assert.equal((await stat(dirname(exp.path))).mode & 0o777, 0o700)
      const out = join(dir, 'out.raw')
      await convertImage(exp.path, out, { sourceFormat: 'raw', targetFormat: 'raw' })
      assert.ok(await compareImages(out, 'raw', join(dir, 'b-2', 'd.qcow2'), 'qcow2'))
    } finally {
      await exp.stop()
    }
    await assert.rejects(lstat(exp.path))
    await assertNoExportLeft()
  })

  it('leaves nothing when the start fails after the daemon was spawned', async () => {
    await assert.rejects(
      startFuseExport({ spec: chainSpec(chain.links), size: 8 * MiB, readyTimeoutMs: 0 }),
      (e: unknown) => isBackupError(e, 'QEMU_TOOL_FAILED'),
    )
    await assertNoExportLeft()
    await assert.rejects(
      startFuseExport({ spec: chainSpec(chain.links), size: 4 * MiB }),
      (e: unknown) => isBackupError(e, 'QEMU_TOOL_FAILED') && e.message.includes('expected'),
    )
    await assertNoExportLeft()
  })

  it('leaves nothing when the daemon cannot open the chain', async () => {
    const spec = chainSpec(chain.links)
    const bad = { ...spec, file: { driver: 'file' as const, filename: join(dir, 'missing') } }
    await assert.rejects(startFuseExport({ spec: bad, size: 8 * MiB }), (e: unknown) =>
      isBackupError(e, 'QEMU_TOOL_FAILED'),
    )
    await assertNoExportLeft()
  })

  it('leaves nothing when the start is aborted', async () => {
    const ac = new AbortController()
    const p = startFuseExport({ spec: chainSpec(chain.links), size: 8 * MiB, signal: ac.signal })
    ac.abort()
    await assert.rejects(p, (e: unknown) => isBackupError(e, 'ABORTED'))
    await assertNoExportLeft()
  })
})
