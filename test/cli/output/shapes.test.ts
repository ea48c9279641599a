import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, stat, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../../src/io/spawn.ts'
import { createImage } from '../../../src/qemu/img.ts'
import { OUTPUT_SHAPES } from '../../../src/cli/output/shapes.ts'
import type { Shape, ShapeName } from '../../../src/cli/output/shapes.ts'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../../helpers/cli.ts'

const MiB = 1024 * 1024

/**
 * Each command run with --output-format json on a real store (a qcow2 disk made with qemu-img,
 * a small container tree), its stdout checked against the shape docs/cli-json.md documents.
 */
describe('cli output: every command prints its documented JSON shape', () => {
  let dir: string
  let store: string
  let disk: string
  let root: string
  const vols: { full?: string | undefined; incr?: string | undefined; ct?: string | undefined } = {}

  /** Run with `--output-format json`; the output is one line, valid for shape `name`. */
  const json = async <N extends ShapeName>(name: N, args: string[]): Promise<Shape<N>> => {
    const r = await runCliInProcessOk([...args, '--output-format', 'json'])
    assert.equal(r.stdout.split('\n').length, 2, `${name}: json is one line: ${r.stdout}`)
    const parsed = OUTPUT_SHAPES[name].schema.safeParse(JSON.parse(r.stdout))
    assert.ok(parsed.success, `${name}: ${parsed.error?.message ?? ''}\n${r.stdout}`)
    return parsed.data as Shape<N>
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-output-'))
    store = join(dir, 'store')
    disk = join(dir, 'disk.qcow2')
    root = join(dir, 'root')
    await writeFile(join(dir, 'vm.conf'), 'name: out\n')
    await writeFile(join(dir, 'ct.conf'), 'hostname: out\n')
    await writeFile(join(dir, 'fw.conf'), '[OPTIONS]\nenable: 1\n')
    await createImage(disk, { format: 'qcow2', size: 16 * MiB })
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x01 0 2M', disk])
    await mkdir(join(root, 'etc'), { recursive: true })
    await writeFile(join(root, 'etc', 'hostname'), 'out\n')
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('--version', async () => {
    const before = await runCliInProcessOk(['--output-format', 'json', '--version'])
    const late = await runCliInProcessOk(['--version', '--output-format', 'json'])
    for (const r of [before, late]) {
      assert.ok(OUTPUT_SHAPES.version.schema.safeParse(JSON.parse(r.stdout)).success, r.stdout)
    }
    assert.doesNotMatch((await runCliInProcessOk(['--version'])).stdout, /\{/)
  })

  it('init', async () => {
    const r = await json('init', [
      'init',
      store,
      '--vm-compress',
      'none',
      '--vm-backup-mode',
      'incremental',
    ])
    assert.equal(r.options['vm-backup-mode'], 'incremental')
  })

  it('backup: a full VM backup says why it is full, and its bytes per disk', async () => {
    const args = backupArgs(store, 100, join(dir, 'vm.conf'), '--disk', `scsi0=${disk}`)
    const r = await json('backup', [...args, '--firewall-config', join(dir, 'fw.conf')])
    assert.equal(r.status, 'ok')
    assert.equal(r.mode, 'full')
    assert.equal(r.reason, 'no previous backup')
    assert.equal(r.consistency, 'offline')
    const [d] = r.disks
    assert.ok(d !== undefined)
    assert.equal(d.device, 'drive-scsi0')
    assert.equal(d.size, 16 * MiB)
    assert.equal(d.read, 2 * MiB, 'read: the guest data of the disk')
    assert.equal(r.read, 2 * MiB)
    assert.ok(r.written >= 2 * MiB && r.stored > 0 && r.size === r.stored)
    vols.full = r.volid ?? undefined
  })

  it('backup: an incremental names its parent', async () => {
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x02 4M 1M', disk])
    const args = backupArgs(store, 100, join(dir, 'vm.conf'), '--disk', `scsi0=${disk}`)
    const r = await json('backup', args)
    assert.equal(r.mode, 'incremental')
    assert.equal(r.reason, null)
    assert.equal(r.disks[0]?.parent, vols.full)
    assert.equal(r.disks[0]?.read, 1 * MiB, 'an incremental reads the dirty data only')
    vols.incr = r.volid ?? undefined
  })

  it("backup: a raw disk on a store in full mode names the store's mode as the reason", async () => {
    const full = join(dir, 'store-full')
    await runCliInProcessOk(['init', full, '--vm-compress', 'none'])
    const raw = join(dir, 'disk.raw')
    await createImage(raw, { format: 'raw', size: 4 * MiB })
    const args = backupArgs(full, 300, join(dir, 'vm.conf'), '--disk', `scsi0=${raw}`)
    await json('backup', args)
    const r = await json('backup', args)
    assert.equal(r.mode, 'full')
    assert.equal(r.reason, "the store's vm-backup-mode is full")
    assert.equal(r.disks[0]?.reason, r.reason)
  })

  it('backup: a container', async () => {
    const r = await json('backup', [
      ...backupArgs(store, 200, join(dir, 'ct.conf')),
      '--rootfs',
      root,
    ])
    assert.equal(r.type, 'lxc')
    assert.equal(r.mode, 'full')
    assert.deepEqual(r.disks, [])
    assert.ok(r.read > 0 && r.written >= r.read)
    vols.ct = r.volid ?? undefined
  })

  it('list, with --failed', async () => {
    const rows = await json('list', ['list', '--store', store, '--failed'])
    assert.deepEqual(rows.map((r) => r.volid).sort(), [vols.full, vols.incr, vols.ct].sort())
  })

  // Before verify: check does not know the `.verify` records verify writes (they are reported
  // as foreign entries), which is not what this test is about.
  it('check', async () => {
    const r = await runCliInProcess(['check', '--store', store, '--output-format', 'json'])
    const parsed = OUTPUT_SHAPES.check.schema.parse(JSON.parse(r.stdout))
    assert.deepEqual(parsed.findings, [], r.stdout)
    assert.equal(r.code, 0)
  })

  it('restore: what was written where', async () => {
    const target = join(dir, 'restored')
    const r = await json('restore', [
      'restore',
      '--store',
      store,
      vols.incr ?? '',
      '--target',
      target,
    ])
    assert.deepEqual(r.disks, [
      {
        device: 'drive-scsi0',
        path: join(target, 'drive-scsi0.raw'),
        format: 'raw',
        targetDisk: false,
      },
    ])
    for (const f of r.files) assert.ok(await stat(f), f)
    const proof = await json('verify-restored', [
      'verify',
      '--store',
      store,
      vols.incr ?? '',
      '--restored',
      target,
    ])
    assert.equal(proof.state, 'ok')
  })

  it('restore --format qcow2 and --target-disk: each disk with its format and where it went', async () => {
    const q = join(dir, 'restored-qcow2')
    const r = await json('restore', [
      ...['restore', '--store', store, vols.incr ?? '', '--target', q, '--format', 'qcow2'],
    ])
    assert.deepEqual(r.disks, [
      {
        device: 'drive-scsi0',
        path: join(q, 'drive-scsi0.qcow2'),
        format: 'qcow2',
        targetDisk: false,
      },
    ])
    const onto = join(dir, 'onto.raw')
    await writeFile(onto, Buffer.alloc(0))
    await truncate(onto, 16 * MiB)
    const t = await json('restore', [
      ...['restore', '--store', store, vols.incr ?? '', '--target', join(dir, 'restored-onto')],
      ...['--target-disk', `scsi0=${onto}`],
    ])
    assert.deepEqual(t.disks, [
      { device: 'drive-scsi0', path: onto, format: 'raw', targetDisk: true },
    ])
    assert.ok(t.files.includes(onto), 'the target disk is among the files written')
  })

  it('verify', async () => {
    const rows = await json('verify', ['verify', '--store', store])
    assert.deepEqual(
      rows.map((r) => r.state),
      ['ok', 'ok', 'ok'],
    )
  })

  it('show-config: both configurations', async () => {
    const r = await json('show-config', ['show-config', '--store', store, vols.full ?? ''])
    assert.equal(r.config, 'name: out\n')
    assert.equal(r.firewall, '[OPTIONS]\nenable: 1\n')
  })

  it('protect and notes', async () => {
    const p = await json('protect', ['protect', '--store', store, vols.ct ?? ''])
    assert.equal(p.protected, true)
    await json('protect', ['protect', '--store', store, vols.ct ?? '', '--off'])
    const n = await json('notes', ['notes', '--store', store, vols.ct ?? '', '--set', 'hi'])
    assert.equal(n.notes, 'hi')
    assert.equal((await json('notes', ['notes', '--store', store, vols.ct ?? ''])).notes, 'hi')
  })

  it('prune: what is removed, its bytes and the merges, dry run and real', async () => {
    const args = ['prune', '--store', store, '--vmid', '100', '--keep', 'keep-last=1']
    for (const dry of [true, false]) {
      const r = await json('prune', dry ? [...args, '--dry-run'] : args)
      assert.equal(r['dry-run'], dry)
      const gone = r.backups.find((b) => b.mark === 'remove')
      assert.equal(gone?.volid, vols.full)
      assert.ok((gone?.bytes ?? 0) > 0, `${dry}: bytes of the removed backup`)
      assert.equal(gone?.merges[0]?.child, vols.incr, `${dry}: merged into the incremental`)
      assert.equal(r.backups.find((b) => b.mark === 'keep')?.bytes, null)
      assert.equal(r.keep, 'keep-last=1')
    }
  })

  it("prune: the retention applied, from --keep-* flags or else the store's", async () => {
    const flags = await json('prune', [
      ...['prune', '--store', store, '--dry-run', '--keep-last', '2', '--keep-daily', '3'],
    ])
    assert.equal(flags.keep, 'keep-last=2,keep-daily=3')
    const own = await json('prune', ['prune', '--store', store, '--dry-run'])
    assert.equal(own.keep, 'keep-all=1')
  })

  it('bitmaps', async () => {
    const r = await json('bitmaps', ['bitmaps', '--disk', disk])
    assert.equal(r.bitmaps.length, 1)
  })

  it('remove: the bytes freed', async () => {
    const r = await json('remove', ['remove', '--store', store, vols.ct ?? ''])
    assert.equal(r.volid, vols.ct)
    assert.ok(r.bytes > 0)
    assert.deepEqual(r.merges, [])
  })

  it('json-pretty indents; --json is json, or json-pretty where the command printed it so', async () => {
    const pretty = await runCliInProcessOk([
      'list',
      '--store',
      store,
      '--output-format',
      'json-pretty',
    ])
    assert.match(pretty.stdout, /^\[\n {2}\{\n/)
    assert.equal(
      (await runCliInProcessOk(['list', '--store', store, '--json'])).stdout,
      pretty.stdout,
    )
    const notes = await runCliInProcessOk(['notes', '--store', store, vols.incr ?? '', '--json'])
    assert.equal(notes.stdout.split('\n').length, 2, 'notes --json: one line')
  })

  it('an error prints nothing on stdout, one line on stderr, and exits non-zero', async () => {
    const r = await runCliInProcess([
      'list',
      '--store',
      join(dir, 'none'),
      '--output-format',
      'json',
    ])
    assert.equal(r.code, 2)
    assert.equal(r.stdout, '')
    assert.match(r.stderr, /^guestbackup: [^\n]+\n$/)
    const both = await runCliInProcess([
      'list',
      '--store',
      store,
      '--json',
      '--output-format',
      'text',
    ])
    assert.equal(both.code, 2)
    assert.match(both.stderr, /--json or --output-format text, not both/)
  })
})
