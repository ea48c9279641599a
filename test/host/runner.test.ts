import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { BackupProvider, VmVolume } from '../../src/api/provider.ts'
import { runBackupJob } from '../../src/host/runner.ts'
import type { Guest } from '../../src/host/runner.ts'
import { silentLogger } from '../../src/log.ts'

type Step = string

/**
 * What the provider saw, checked by the tests after the job: an assertion inside a hook would
 * only make the hook throw, which the runner reports (or, for the log hook, logs) as the
 * provider's failure rather than failing the test.
 */
interface Seen {
  nbdPaths: (string | undefined)[]
  logs: string[]
}

/** A provider that records every call; `fail` names the method that throws. */
const recorder = (
  calls: Step[],
  seen: Seen,
  fail?: string,
  archiveName = '100/qemu-x',
): BackupProvider => {
  const step = (name: string): void => {
    calls.push(name)
    if (name === fail) throw new Error(`${name} exploded`)
  }
  return {
    name: 'recorder',
    jobInit: async () => {
      step('jobInit')
    },
    jobCleanup: async () => {
      step('jobCleanup')
    },
    backupInit: async (vmid) => {
      step(`backupInit ${vmid}`)
      return { archiveName: archiveName.replace('100', String(vmid)) }
    },
    backupGetMechanism: async (_vmid, type) => {
      step('backupGetMechanism')
      return type === 'qemu' ? 'nbd' : 'directory'
    },
    backupVmQueryIncremental: async () => {
      step('backupVmQueryIncremental')
      return undefined
    },
    backupVm: async (_vmid, _cfg, volumes: Readonly<Record<string, VmVolume>>) => {
      step('backupVm')
      seen.nbdPaths.push(volumes['drive-scsi0']?.nbdPath)
    },
    backupContainerPrepare: async () => {
      step('backupContainerPrepare')
    },
    backupContainer: async () => {
      step('backupContainer')
    },
    backupCleanup: async (_vmid, _type, success, info) => {
      step(`backupCleanup ${success} ${info.error === undefined ? '' : 'error'}`.trim())
      return success ? { stats: { archiveSize: 42 } } : undefined
    },
    backupHandleLogFile: async (_vmid, file) => {
      step('backupHandleLogFile')
      seen.logs.push(await readFile(file, 'utf8'))
    },
    restoreGetMechanism: () => Promise.reject(new Error('unused')),
    archiveGetGuestConfig: () => Promise.reject(new Error('unused')),
    archiveGetFirewallConfig: () => Promise.reject(new Error('unused')),
    restoreVmInit: () => Promise.reject(new Error('unused')),
    restoreVmVolumeInit: () => Promise.reject(new Error('unused')),
    restoreVmVolumeCleanup: () => Promise.reject(new Error('unused')),
    restoreVmCleanup: () => Promise.reject(new Error('unused')),
    restoreContainerInit: () => Promise.reject(new Error('unused')),
    restoreContainerCleanup: () => Promise.reject(new Error('unused')),
  }
}

describe('host/runner: Proxmox call order', () => {
  let dir: string
  let guests: Guest[]
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-runner-'))
    const disk = join(dir, 'd.raw')
    await writeFile(disk, Buffer.alloc(1024 * 1024))
    guests = [
      {
        type: 'qemu',
        vmid: 100,
        config: 'x',
        disks: [{ device: 'drive-scsi0', path: disk, format: 'raw' }],
      },
      { type: 'lxc', vmid: 101, config: 'y', rootfs: dir, excludes: [] },
    ]
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })
  let seen: Seen = { nbdPaths: [], logs: [] }
  const job = (calls: Step[], fail?: string, name?: string) => {
    seen = { nbdPaths: [], logs: [] }
    return runBackupJob({
      provider: () => recorder(calls, seen, fail, name),
      storeId: 's',
      guests,
      logger: silentLogger(),
      signal: new AbortController().signal,
    })
  }

  it('calls every method in order on success', async () => {
    const calls: Step[] = []
    const res = await job(calls)
    assert.deepEqual(calls, [
      'jobInit',
      'backupInit 100',
      'backupGetMechanism',
      'backupVmQueryIncremental',
      'backupVm',
      'backupCleanup true',
      'backupHandleLogFile',
      'backupInit 101',
      'backupGetMechanism',
      'backupContainerPrepare',
      'backupContainer',
      'backupCleanup true',
      'backupHandleLogFile',
      'jobCleanup',
    ])
    assert.deepEqual(
      res.map((r) => [r.status, r.volid, r.archiveSize]),
      [
        ['ok', 's:backup/100/qemu-x', 42],
        ['ok', 's:backup/101/qemu-x', 42],
      ],
    )
    // The VM's disk was handed over as an NBD socket; each guest's task log reached the provider.
    assert.equal(seen.nbdPaths.length, 1)
    assert.match(seen.nbdPaths[0] ?? '', /\/nbd\.sock$/)
    assert.equal(seen.logs.length, 2)
    assert.match(seen.logs[0] ?? '', /starting backup of qemu 100 via recorder/)
    assert.match(seen.logs[1] ?? '', /starting backup of lxc 101 via recorder/)
  })

  it('cleans up with the error, keeps the log and goes on when backupVm fails', async () => {
    const calls: Step[] = []
    const res = await job(calls, 'backupVm')
    assert.deepEqual(calls.slice(0, 7), [
      'jobInit',
      'backupInit 100',
      'backupGetMechanism',
      'backupVmQueryIncremental',
      'backupVm',
      'backupCleanup false error',
      'backupHandleLogFile',
    ])
    assert.equal(calls.at(-1), 'jobCleanup')
    assert.equal(res[0]?.status, 'failed')
    assert.match(String(res.at(0)?.error), /backupVm exploded/)
    assert.equal(res[1]?.status, 'ok')
  })

  it('fails every guest but still calls jobCleanup when jobInit fails', async () => {
    const calls: Step[] = []
    const res = await job(calls, 'jobInit')
    assert.deepEqual(calls, ['jobInit', 'jobCleanup'])
    assert.deepEqual(
      res.map((r) => r.status),
      ['failed', 'failed'],
    )
  })

  it('refuses an unsafe archive name from the provider', async () => {
    const calls: Step[] = []
    const res = await job(calls, undefined, '../100/evil')
    assert.equal(res[0]?.status, 'failed')
    assert.match(String(res.at(0)?.error), /invalid archive name/)
    assert.ok(calls.includes('backupCleanup false error'))
    assert.ok(!calls.includes('backupVm'))
  })
})
