/**
 * The cache-mode fallback of startQemuNbd against the real qemu-nbd. `qemu-nbd` is found through
 * PATH (setpriv execs it), so a wrapper first in PATH records every start and then runs the real
 * one. No file system here refuses O_DIRECT (tmpfs accepts it since Linux 6.6), so for that case
 * the wrapper answers an O_DIRECT start as QEMU 7.2 does on such a file system (util/osdep.c
 * `qemu_open_internal`) instead of running qemu-nbd.
 */
import { after, before, beforeEach, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { chmod, mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isBackupError } from '../../src/errors.ts'
import { NbdClient } from '../../src/nbd/client.ts'
import { createImage } from '../../src/qemu/img.ts'
import { startQemuNbd } from '../../src/qemu/nbd-server.ts'

const MiB = 1024 * 1024

describe('qemu/nbd-server cache fallback', () => {
  let dir = ''
  let calls = ''
  const savedPath = process.env['PATH'] ?? ''

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-qemu-nbd-'))
    const real = execFileSync('sh', ['-c', 'command -v qemu-nbd'], { encoding: 'utf8' }).trim()
    calls = join(dir, 'calls')
    const bin = join(dir, 'bin')
    await mkdir(bin)
    const wrapper = join(bin, 'qemu-nbd')
    await writeFile(
      wrapper,
      `#!/bin/sh
echo "$*" >> '${calls}'
if [ -n "$GB_TEST_REFUSE_O_DIRECT" ]; then
  case " $* " in
  *" --cache=none "*|*" --cache=directsync "*)
    for img; do :; done
    echo "qemu-nbd: Failed to blk_new_open '$img': Could not open '$img': filesystem does not support O_DIRECT" >&2
    exit 1;;
  esac
fi
exec '${real}' "$@"
`,
    )
    await chmod(wrapper, 0o755)
    process.env['PATH'] = `${bin}:${savedPath}`
  })

  after(async () => {
    process.env['PATH'] = savedPath
    delete process.env['GB_TEST_REFUSE_O_DIRECT']
    await rm(dir, { recursive: true, force: true })
  })

  beforeEach(async () => {
    await writeFile(calls, '')
    delete process.env['GB_TEST_REFUSE_O_DIRECT']
  })

  const started = async (): Promise<string[]> =>
    (await readFile(calls, 'utf8')).split('\n').filter((l) => l !== '')

  const failsOnce = async (image: string, format: 'raw' | 'qcow2', why: RegExp): Promise<void> => {
    const log: string[] = []
    await assert.rejects(
      startQemuNbd({
        image,
        format,
        readOnly: true,
        cache: 'none',
        cacheFallback: 'writeback',
        log: (m) => log.push(m),
      }),
      (e: unknown) => isBackupError(e, 'QEMU_TOOL_FAILED') && why.test(e.message),
    )
    const runs = await started()
    assert.equal(runs.length, 1, runs.join('\n'))
    assert.match(runs[0] ?? '', / --cache=none /)
    assert.deepEqual(log, [])
  }

  it('does not retry a missing image', async () => {
    await failsOnce(join(dir, 'missing.qcow2'), 'qcow2', /No such file or directory/)
  })

  it('does not retry an image of another format', async () => {
    const raw = join(dir, 'raw.img')
    await writeFile(raw, '')
    await truncate(raw, MiB)
    await failsOnce(raw, 'qcow2', /Image is not in qcow2 format/)
  })

  it('retries with the fallback cache mode when O_DIRECT is refused', async () => {
    process.env['GB_TEST_REFUSE_O_DIRECT'] = '1'
    const image = join(dir, 'disk.qcow2')
    await createImage(image, { format: 'qcow2', size: 4 * MiB })
    const log: string[] = []
    const server = await startQemuNbd({
      image,
      format: 'qcow2',
      readOnly: true,
      exportName: 'disk',
      cache: 'none',
      cacheFallback: 'writeback',
      log: (m) => log.push(m),
    })
    try {
      const runs = await started()
      assert.equal(runs.length, 2, runs.join('\n'))
      assert.match(runs[0] ?? '', / --cache=none /)
      assert.match(runs[1] ?? '', / --cache=writeback /)
      assert.deepEqual(log, [
        'qemu-nbd: the file system refuses O_DIRECT (cache=none), retrying with cache=writeback',
      ])
      await using client = await NbdClient.connect({ path: server.socketPath, exportName: 'disk' })
      assert.equal(client.size, 4 * MiB)
    } finally {
      await server.stop()
    }
  })

  it('throws the O_DIRECT refusal without a fallback', async () => {
    process.env['GB_TEST_REFUSE_O_DIRECT'] = '1'
    const image = join(dir, 'nofallback.qcow2')
    await createImage(image, { format: 'qcow2', size: MiB })
    await assert.rejects(
      startQemuNbd({ image, format: 'qcow2', readOnly: true, cache: 'none' }),
      (e: unknown) =>
        isBackupError(e, 'QEMU_TOOL_FAILED') && e.message.includes('does not support O_DIRECT'),
    )
    assert.equal((await started()).length, 1)
  })
})
