import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'
import { diffSnapshots, snapshotTree } from '../helpers/tamper.ts'

describe('cli: check', () => {
  let dir: string
  let store: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-check-'))
    store = join(dir, 'store')
    await writeFile(join(dir, 'c'), 'name: c\n')
    await writeFile(join(dir, 'd.raw'), Buffer.alloc(1024 * 1024, 1))
    await runCliInProcessOk(['init', store])
    await runCliInProcessOk(
      backupArgs(store, 100, join(dir, 'c'), '--disk', `scsi0=${join(dir, 'd.raw')}`),
    )
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('says a consistent store is consistent, exit code 0', async () => {
    const r = await runCliInProcess(['check', '--store', store])
    assert.deepEqual([r.code, r.stdout, r.stderr], [0, 'store is consistent\n', ''])
  })

  it('lists findings (exit code 1), repairs them with --repair (exit code 0)', async () => {
    await mkdir(join(store, '100', '.partial-qemu-2020-01-01T00:00:00Z'))
    await writeFile(join(store, '100', 'qemu-2020-01-01T00:00:00Z.notes'), 'n')
    const before = await snapshotTree(store)
    const r = await runCliInProcess(['check', '--store', store])
    assert.deepEqual(diffSnapshots(before, await snapshotTree(store)), [])
    assert.equal(r.code, 1)
    assert.deepEqual(r.stdout.split('\n'), [
      `${store}/100/.partial-qemu-2020-01-01T00:00:00Z: the work directory of a backup in progress, or of a killed one (repair: remove it when nobody holds the guest lock)`,
      `${store}/100/qemu-2020-01-01T00:00:00Z.notes: an attribute of qemu-2020-01-01T00:00:00Z, which does not exist (repair: remove it)`,
      '2 findings, 0 repaired',
      '',
    ])
    const j = await runCliInProcess(['check', '--store', store, '--vmid', '100', '--json'])
    const out = JSON.parse(j.stdout) as { findings: { kind: string; vmid: number }[]; repaired: 0 }
    assert.deepEqual(
      [j.code, out.repaired, out.findings.map((f) => [f.kind, f.vmid])],
      [
        1,
        0,
        [
          ['stale-work-dir', 100],
          ['orphan-file', 100],
        ],
      ],
    )
    const fix = await runCliInProcess(['check', '--store', store, '--repair'])
    assert.equal(fix.code, 0, fix.stderr)
    assert.match(fix.stdout, /\(repaired: remove it\)\n2 findings, 2 repaired\n$/)
    assert.equal(
      (await runCliInProcess(['check', '--store', store])).stdout,
      'store is consistent\n',
    )
  })

  it('refuses what is not a store (exit code 2)', async () => {
    const r = await runCliInProcess(['check', '--store', dir])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /is not a guestbackup store/)
  })
})
