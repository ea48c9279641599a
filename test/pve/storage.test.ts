import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../src/io/spawn.ts'
import { createImage } from '../../src/qemu/img.ts'
import { backupArgs, runCliInProcessOk } from '../helpers/cli.ts'
import { pveCall, pveErr, pveOk } from '../helpers/pve.ts'

const MiB = 1024 * 1024

// The storage-plugin methods of docs/pve-protocol.md on a store holding real backups made by
// the CLI: a full and an incremental-capable second backup of one VM.
describe('pve-call: storage methods', () => {
  let dir: string
  let store: string
  const volnames: string[] = []
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-pve-storage-'))
    store = join(dir, 'store')
    const disk = join(dir, 'disk.qcow2')
    await createImage(disk, { format: 'qcow2', size: 8 * MiB })
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 0 1M', disk])
    await writeFile(join(dir, 'vm.conf'), 'name: t\nscsi0: local:100/vm-100-disk-0.qcow2\n')
    await runCliInProcessOk(['init', store, '--id', 'gb'])
    for (let i = 0; i < 2; i++) {
      const b = await runCliInProcessOk([
        ...backupArgs(store, 100, join(dir, 'vm.conf')),
        ...['--disk', `scsi0=${disk}`, '--json'],
      ])
      const volid = (JSON.parse(b.stdout) as { volid: string }).volid
      // Two backups in one second: the second takes the next free second.
      volnames.push(volid.slice(volid.indexOf(':') + 1))
    }
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })
  const [first, second] = [() => volnames[0] ?? '', () => volnames[1] ?? '']

  it('greets with the protocol number before the final line', async () => {
    const r = await pveCall(store, 'status', [])
    assert.equal(r.greeting.protocol, 1)
    assert.match(r.greeting.guestbackup, /^\d+\.\d+\.\d+/)
    assert.equal(r.final.kind, 'result')
  })

  it('lists the backups with the shape Proxmox expects', async () => {
    const { result } = await pveOk(store, 'list_volumes', [100, ['backup']])
    assert.ok(Array.isArray(result))
    assert.equal(result.length, 2)
    const v = result.find((x) => (x as { volid: string }).volid === `gb:${first()}`) as Record<
      string,
      unknown
    >
    assert.equal(v['vmid'], 100)
    assert.equal(v['subtype'], 'qemu')
    assert.equal(v['content'], 'backup')
    assert.equal(v['format'], 'directory')
    assert.equal(typeof v['size'], 'number')
    assert.equal(typeof v['ctime'], 'number')
    assert.equal(v['protected'], undefined)
    assert.deepEqual((await pveOk(store, 'list_volumes', [100, ['images']])).result, [])
    assert.deepEqual((await pveOk(store, 'list_volumes', [101, ['backup']])).result, [])
    const all = await pveOk(store, 'list_volumes', [null, null])
    assert.equal((all.result as unknown[]).length, 2)
  })

  it('reports the status of the file system holding the store', async () => {
    const { result } = await pveOk(store, 'status', [])
    const [total, free, used, active] = result as number[]
    assert.ok(total !== undefined && free !== undefined && used !== undefined)
    assert.ok(total > 0 && free >= 0 && used >= 0 && free <= total)
    assert.equal(active, 1)
  })

  it('parses volume names and gives their path and owner', async () => {
    const archive = first().slice('backup/'.length)
    const p = await pveOk(store, 'parse_volname', [first()])
    assert.deepEqual(p.result, ['backup', archive, 100, null, null, 0, 'directory'])
    const path = await pveOk(store, 'path', [first(), null])
    assert.deepEqual(path.result, [join(store, archive), 100, 'backup'])
    // Proxmox calls parse_volname without storage: the shim sends storeid null and no scfg.
    const bare = await pveOk(store, 'parse_volname', [first()], { storeid: null })
    assert.deepEqual(bare.result, p.result)
    const bad = await pveErr(store, 'parse_volname', ['backup/../etc'])
    assert.equal(bad.code, 'USAGE')
    const noStore = await pveErr(store, 'path', [first(), null], { storeid: null })
    assert.equal(noStore.code, 'PVE_ARGS')
  })

  it('gives size, format, usage and time of a backup', async () => {
    const { result } = await pveOk(store, 'volume_size_info', [first(), 5])
    const [size, format, used, parent, ctime] = result as [number, string, number, null, number]
    assert.ok(size >= 8 * MiB, `size ${size}`)
    assert.equal(format, 'directory')
    assert.ok(used > 0)
    assert.equal(parent, null)
    assert.equal(typeof ctime, 'number')
    const missing = await pveErr(store, 'volume_size_info', [
      'backup/100/qemu-2001-01-01T00:00:00Z',
    ])
    assert.equal(missing.code, 'NOT_FOUND')
  })

  it('reads and writes notes and protection', async () => {
    assert.equal((await pveOk(store, 'get_volume_attribute', [first(), 'notes'])).result, null)
    await pveOk(store, 'update_volume_attribute', [first(), 'notes', 'before the upgrade'])
    const notes = await pveOk(store, 'get_volume_attribute', [first(), 'notes'])
    assert.equal(notes.result, 'before the upgrade')
    assert.equal((await pveOk(store, 'get_volume_attribute', [first(), 'protected'])).result, 0)
    await pveOk(store, 'update_volume_attribute', [first(), 'protected', 1])
    assert.equal((await pveOk(store, 'get_volume_attribute', [first(), 'protected'])).result, 1)
    assert.equal((await pveOk(store, 'get_volume_attribute', [first(), 'color'])).result, null)
    const unknown = await pveErr(store, 'update_volume_attribute', [first(), 'color', 'red'])
    assert.equal(unknown.code, 'UNSUPPORTED')
    const listed = await pveOk(store, 'list_volumes', [100, ['backup']])
    const v = (listed.result as Record<string, unknown>[]).find(
      (x) => x['volid'] === `gb:${first()}`,
    )
    assert.ok(v !== undefined)
    assert.equal(v['protected'], 1)
    assert.equal(v['notes'], 'before the upgrade')
    const limited = await pveErr(store, 'update_volume_attribute', [second(), 'protected', '1'], {
      scfg: { 'max-protected-backups': '1' },
    })
    assert.equal(limited.code, 'PROTECTED')
  })

  it('prunes by the keep options given, sparing the protected backup', async () => {
    const dry = await pveOk(store, 'prune_backups', [{ 'keep-last': 1 }, 100, 'qemu', 1])
    const marks = Object.fromEntries(
      (dry.result as { volid: string; mark: string }[]).map((m) => [m.volid, m.mark]),
    )
    assert.deepEqual(marks, { [`gb:${first()}`]: 'protected', [`gb:${second()}`]: 'keep' })
    const entry = (dry.result as Record<string, unknown>[])[0]
    assert.deepEqual(Object.keys(entry ?? {}).sort(), ['ctime', 'mark', 'type', 'vmid', 'volid'])
    const bad = await pveErr(store, 'prune_backups', [{ 'keep-lots': 1 }, 100, 'qemu', 1])
    assert.equal(bad.code, 'CONFIG_INVALID')
  })

  it('refuses to free a protected backup and frees an unprotected one', async () => {
    const refused = await pveErr(store, 'free_image', [first(), 0, 'directory'])
    assert.equal(refused.code, 'PROTECTED')
    await pveOk(store, 'update_volume_attribute', [first(), 'protected', 0])
    assert.equal((await pveOk(store, 'free_image', [first(), 0, 'directory'])).result, null)
    const listed = await pveOk(store, 'list_volumes', [100, ['backup']])
    assert.deepEqual(
      (listed.result as { volid: string }[]).map((v) => v.volid),
      [`gb:${second()}`],
    )
  })

  it('activates, checks and deactivates the storage', async () => {
    assert.equal((await pveOk(store, 'activate_storage', [{}])).result, null)
    assert.equal((await pveOk(store, 'check_connection', [{}])).result, 1)
    assert.equal((await pveOk(store, 'deactivate_storage', [{}])).result, null)
    assert.equal((await pveOk(join(dir, 'nowhere'), 'check_connection', [{}])).result, 0)
    const gone = await pveErr(join(dir, 'nowhere'), 'activate_storage', [{}])
    assert.equal(gone.code, 'STORE_INVALID')
  })

  it('makes an empty directory a store the CLI can read, on activation', async () => {
    const fresh = join(dir, 'fresh')
    await mkdir(fresh)
    await pveOk(fresh, 'activate_storage', [{}], { storeid: 'gbfresh' })
    const r = await runCliInProcessOk(['list', '--store', fresh, '--json'])
    assert.deepEqual(JSON.parse(r.stdout), [])
    const file = JSON.parse(await readFile(join(fresh, 'guestbackup-store.json'), 'utf8')) as {
      id: string
    }
    assert.equal(file.id, 'gbfresh')
  })
})
