/**
 * Fault suite: live VM backup (`backup --qmp` of a paused QEMU, fleecing + bitmaps at one
 * instant, exported over NBD) SIGKILLed at random moments. Heavier than the offline rounds, so
 * fewer. After each kill: no child of the killed run survives; the VM keeps running; the next
 * live backup succeeds, removes our objects from the VM's block graph and the fleecing dir and
 * says so, and cleans the store as every locking command does; then the store holds exactly its
 * listed backups, all verifying, chains whole, and a random one restores identical to the disk
 * at its backup. The next run is always a live backup: only it can repair the VM's graph.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { QmpClient } from '../../src/qmp/index.ts'
import { backupArgs } from '../helpers/cli.ts'
import { exec, execOk } from '../helpers/process-group.ts'
import { startVm } from '../helpers/qemu-vm.ts'
import type { TestVm } from '../helpers/qemu-vm.ts'
import {
  ageLocks,
  assertCleanupLogged,
  assertStoreClean,
  count,
  counts,
  faultSchedule,
  gbOk,
  leftovers,
  listRows,
  runAndKill,
} from './schedule.ts'

const MiB = 1024 * 1024
const SCHEDULE = faultSchedule('test/faults/kill-live.test.ts')
const ROUNDS = 6
const RATE = '16M'
const VMID = 500

/** What of ours is in the VM's block graph: block jobs, exports, `gb-*` nodes. */
const vmLeftovers = async (qmpPath: string): Promise<string[]> => {
  const qmp = await QmpClient.connect(qmpPath)
  try {
    const jobs = (await qmp.executeRaw('query-block-jobs')) as { device: string }[]
    const exports = (await qmp.executeRaw('query-block-exports')) as { id: string }[]
    const nodes = (await qmp.executeRaw('query-named-block-nodes', { flat: true })) as {
      'node-name': string
    }[]
    const status = (await qmp.executeRaw('query-status')) as { status: string }
    assert.notEqual(status.status, 'shutdown', 'the VM was shut down')
    return [
      ...jobs.map((j) => `job ${j.device}`),
      ...exports.map((e) => `export ${e.id}`),
      ...nodes.filter((n) => n['node-name'].startsWith('gb-')).map((n) => `node ${n['node-name']}`),
    ]
  } finally {
    await qmp.close()
  }
}

describe('faults: live VM backup SIGKILLed at random moments', () => {
  let dir = ''
  let vm: TestVm | undefined
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-fault-live-'))
  })
  after(async () => {
    await vm?.stop()
    if (dir !== '') await rm(dir, { recursive: true, force: true })
  })

  it('a live backup killed anywhere, then backed up again', { timeout: 10 * 60_000 }, async () => {
    const s = SCHEDULE
    const disk = join(dir, 'disk.qcow2')
    const store = join(dir, 'store')
    const conf = join(dir, 'guest.conf')
    const fleece = join(dir, 'fleece')
    await mkdir(join(dir, 'vm'))
    await mkdir(fleece)
    await writeFile(conf, 'name: fault-live\n')
    await execOk('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(32 * MiB)])
    vm = await startVm({
      disks: [{ path: disk, format: 'qcow2', id: 'scsi0' }],
      dir: join(dir, 'vm'),
    })
    const qmpPath = vm.qmpPath
    await vm.guestIo('scsi0', 'write -P 0x31 0 32M')
    const ctx0 = `seed=${s.seed} live setup`
    await gbOk(['init', store, '--vm-backup-mode', 'incremental'], ctx0)
    const args = backupArgs(store, VMID, conf, '--qmp', qmpPath, '--fleecing-dir', fleece)
    const refs = new Map<string, string>()
    /** The disk as the guest sees it now (flushed; QEMU holds it, so read it shared). */
    const snapshot = async (tag: string): Promise<string> => {
      await vm?.guestIo('scsi0', 'flush')
      const ref = join(dir, `ref-${tag}.raw`)
      await execOk('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', disk, ref])
      return ref
    }
    const first = await snapshot('initial')
    await gbOk([...args, '--bwlimit', RATE], ctx0)
    for (const r of await listRows(store, ctx0)) refs.set(r.volid, first)
    // The kill window: an uninterrupted incremental of the largest change a round makes.
    await vm.guestIo('scsi0', 'write -P 0x32 8M 16M')
    const second = await snapshot('second')
    const t = performance.now()
    await gbOk([...args, '--bwlimit', RATE], ctx0)
    const window = 1.2 * (performance.now() - t)
    for (const r of await listRows(store, ctx0)) if (!refs.has(r.volid)) refs.set(r.volid, second)
    console.log(`live: uninterrupted backup ${(window / 1.2).toFixed(0)} ms`)

    const phases = new Map<string, number>()
    const cleaned = new Map<string, number>()
    const t0 = performance.now()
    for (let i = 0; i < ROUNDS; i++) {
      await vm.guestIo('scsi0', `write -P ${s.int(1, 255)} ${s.int(0, 8) * 2}M ${s.int(4, 16)}M`)
      const ref = await snapshot(String(i))
      const delay = s.float() * window
      let ctx = `seed=${s.seed} live round ${i + 1}/${ROUNDS}, kill at ${delay.toFixed(0)}/${window.toFixed(0)} ms`
      const killed = await runAndKill(['-v', ...args, '--bwlimit', RATE], delay, ctx)
      ctx += ` ${killed.phase}`
      count(phases, killed.phase)
      const inVm = await vmLeftovers(qmpPath)
      const fleeceLeft = await readdir(fleece)
      const before = await leftovers(store)
      await ageLocks(store)
      const r = await gbOk(['-v', ...args], `${ctx}, next backup`)
      if (inVm.length > 0 || fleeceLeft.length > 0) {
        count(cleaned, 'vm')
        for (const what of [...inVm, ...fleeceLeft.map((f) => `fleecing dir ${f}`)]) {
          assert.ok(
            r.stderr.includes(`cleaned leftover of a killed run: ${what}`),
            `${ctx}: the next backup removed ${what} without saying so:\n${r.stderr}`,
          )
        }
      }
      assertCleanupLogged(before, await leftovers(store), r.stderr, `${ctx}, next backup`)
      assert.deepEqual(await vmLeftovers(qmpPath), [], `${ctx}: left in the VM after the next run`)
      assert.deepEqual(await readdir(fleece), [], `${ctx}: fleecing dirs after the next run`)
      const rows = await assertStoreClean(store, ctx)
      for (const row of rows) if (!refs.has(row.volid)) refs.set(row.volid, ref)
      const chosen = s.pick(rows).volid
      const target = join(dir, `restore-${i}`)
      await gbOk(['restore', '--store', store, chosen, '--target', target], ctx)
      const c = await exec('qemu-img', [
        ...['compare', '-f', 'raw', '-F', 'raw', join(target, 'drive-scsi0.raw')],
        refs.get(chosen) ?? '',
      ])
      assert.equal(c.code, 0, `${ctx}: ${chosen} restores other data than its disk: ${c.stdout}`)
      await rm(target, { recursive: true, force: true })
    }
    const secs = ((performance.now() - t0) / 1000).toFixed(1)
    console.log(
      `seed=${s.seed} live: ${ROUNDS} kills in ${secs} s; landed ${counts(phases)}; VM leftovers cleaned ${counts(cleaned)}`,
    )
    const rows = await listRows(store, 'live end')
    assert.ok(
      rows.some((row) => row.parent !== null),
      'backups after a kill are incremental again',
    )
  })
})
