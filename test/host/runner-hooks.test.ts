import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { BackupProvider } from '../../src/api/provider.ts'
import { BackupError } from '../../src/errors.ts'
import type { HookPhase, HookRunner } from '../../src/host/hook-script.ts'
import { runJob } from '../../src/host/runner.ts'
import type { Guest, PendingGuest } from '../../src/host/runner.ts'
import { silentLogger } from '../../src/log.ts'

/**
 * A provider for containers that records its calls in `calls`, beside the hook phases, so that
 * their order against each other is what is checked (PVE/VZDump.pm exec_backup and
 * exec_backup_task). An in-process fake: what is injected here is the failure of one phase.
 */
const recorder = (calls: string[]): BackupProvider => {
  const step = (name: string) => async (): Promise<undefined> => {
    calls.push(name)
    return undefined
  }
  const unused = (): Promise<never> => Promise.reject(new Error('unused'))
  return {
    name: 'recorder',
    jobInit: step('jobInit'),
    jobCleanup: step('jobCleanup'),
    backupInit: async (vmid) => {
      calls.push(`backupInit ${vmid}`)
      return { archiveName: `${vmid}/lxc-x` }
    },
    backupGetMechanism: async () => 'directory',
    backupVmQueryIncremental: async () => undefined,
    backupVm: unused,
    backupContainerPrepare: async () => undefined,
    backupContainer: step('backupContainer'),
    backupCleanup: async (vmid, _type, success) => {
      calls.push(`backupCleanup ${vmid} ${success}`)
      return success ? { stats: { archiveSize: 1 } } : undefined
    },
    backupHandleLogFile: step('backupHandleLogFile'),
    restoreGetMechanism: unused,
    archiveGetGuestConfig: unused,
    archiveGetFirewallConfig: unused,
    restoreVmInit: unused,
    restoreVmVolumeInit: unused,
    restoreVmVolumeCleanup: unused,
    restoreVmCleanup: unused,
    restoreContainerInit: unused,
    restoreContainerCleanup: unused,
  }
}

describe('host/runner: hook phases', () => {
  let dir: string
  let guests: Guest[]
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-runner-hooks-'))
    guests = [
      { type: 'lxc', vmid: 101, config: 'hostname: a\n', rootfs: dir, excludes: [] },
      { type: 'lxc', vmid: 102, config: '', rootfs: dir, excludes: [] },
    ]
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  const job = async (
    calls: string[],
    failAt?: string,
    list: readonly (Guest | PendingGuest)[] = guests,
  ): ReturnType<typeof runJob> => {
    const hook: HookRunner = async (phase: HookPhase, task) => {
      const name = task === undefined ? phase : `${phase} ${task.mode} ${task.vmid}`
      calls.push(name)
      if (name === failAt) throw new BackupError('HOOK_FAILED', `${name} failed`)
    }
    return runJob({
      provider: () => recorder(calls),
      storeId: 's',
      guests: list,
      logger: silentLogger(),
      signal: new AbortController().signal,
      hook,
    })
  }

  it('runs the phases where vzdump runs them', async () => {
    const calls: string[] = []
    const res = await job(calls)
    assert.equal(res.error, undefined)
    const guest = (id: number): string[] => [
      `backupInit ${id}`,
      `backup-start stop ${id}`,
      'backupContainer',
      `backupCleanup ${id} true`,
      `backup-end stop ${id}`,
      'backupHandleLogFile',
      `log-end stop ${id}`,
    ]
    assert.deepEqual(calls, [
      'jobInit',
      'job-start',
      ...guest(101),
      ...guest(102),
      'jobCleanup',
      'job-end',
    ])
  })

  it('aborts the guest whose backup-start fails, and goes on with the next', async () => {
    const calls: string[] = []
    const res = await job(calls, 'backup-start stop 101')
    assert.deepEqual(calls.slice(0, 8), [
      'jobInit',
      'job-start',
      'backupInit 101',
      'backup-start stop 101',
      'backupCleanup 101 false',
      'backup-abort stop 101',
      'backupHandleLogFile',
      'log-end stop 101',
    ])
    assert.ok(!calls.slice(0, 8).includes('backupContainer'))
    assert.deepEqual(
      res.guests.map((g) => g.status),
      ['failed', 'ok'],
    )
    assert.equal(res.guests[0]?.error?.code, 'HOOK_FAILED')
  })

  it('fails a guest whose backup-end fails without asking the provider to clean up twice', async () => {
    const calls: string[] = []
    const res = await job(calls, 'backup-end stop 101')
    assert.deepEqual(calls.slice(2, 8), [
      'backupInit 101',
      'backup-start stop 101',
      'backupContainer',
      'backupCleanup 101 true',
      'backup-end stop 101',
      'backup-abort stop 101',
    ])
    assert.ok(!calls.includes('backupCleanup 101 false'))
    assert.equal(res.guests[0]?.status, 'failed')
    // The committed backup keeps its volume id: it stays listed.
    assert.equal(res.guests[0].volid, 's:backup/101/lxc-x')
  })

  it('fails the job and runs job-abort when job-start fails', async () => {
    const calls: string[] = []
    const res = await job(calls, 'job-start')
    assert.deepEqual(calls, ['jobInit', 'job-start', 'jobCleanup', 'job-abort'])
    assert.equal(res.error?.code, 'HOOK_FAILED')
    assert.deepEqual(
      res.guests.map((g) => g.status),
      ['failed', 'failed'],
    )
  })

  it('runs job-abort after job-end fails', async () => {
    const calls: string[] = []
    const res = await job(calls, 'job-end')
    assert.deepEqual(calls.slice(-3), ['jobCleanup', 'job-end', 'job-abort'])
    assert.match(res.error?.message ?? '', /job-end failed/)
  })

  it('fails a guest that cannot be prepared alone: backup-abort and log-end, no backupInit', async () => {
    const calls: string[] = []
    const pending: PendingGuest = {
      vmid: 103,
      type: 'qemu',
      running: true,
      readConfig: async () => 'name: x\n',
      resolve: () => Promise.reject(new BackupError('USAGE', 'disk missing')),
    }
    const res = await job(calls, undefined, [pending, guests[1]!])
    assert.deepEqual(calls.slice(2, 4), ['backup-abort snapshot 103', 'log-end snapshot 103'])
    assert.ok(!calls.includes('backupInit 103'))
    assert.match(res.guests[0]?.error?.message ?? '', /disk missing/)
    assert.equal(res.guests[1]?.status, 'ok')
  })
})
