import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '../../src/io/spawn.ts'
import { backupArgs, cli, runCliInProcessOk } from '../helpers/cli.ts'
import { writeRandom } from '../helpers/random-data.ts'

interface Row {
  volid: string
  status: string
  error?: string | null
  log?: string
}

// Failed runs are visible: listed with their error and task log, named by the CLI's error line,
// never reported as a volume, and dropped by retention once a later backup succeeded.
describe('cli: failed backup runs', () => {
  let dir: string
  let store: string
  let disk: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-failed-'))
    store = join(dir, 'store')
    disk = join(dir, 'disk.qcow2')
    await writeFile(join(dir, 'c'), 'name: f\n')
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '8M'])
    await writeRandom(disk, 'qcow2', 0, 4 * 1024 * 1024)
    await runCliInProcessOk(['init', store])
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('shows a failed run with its error and log, and prune drops it after a success', async () => {
    // A 1 MiB file size limit makes writing the disk image fail (EFBIG) after backupInit; a
    // limit is a process's, so this run is bin/guestbackup under prlimit.
    const args = backupArgs(store, 100, join(dir, 'c'), '--disk', `scsi0=${disk}`, '--json')
    const r = await cli(args, ['prlimit', `--fsize=${1024 * 1024}`, '--'])
    assert.equal(r.code, 1, r.stderr)
    const lines = r.stderr.trim().split('\n')
    assert.equal(lines.length, 1, r.stderr)
    const m = /\(task log: (\S+\/100\/qemu-\S+\.failed\/backup\.log)\)$/.exec(lines[0] ?? '')
    assert.ok(m?.[1] !== undefined, r.stderr)
    await access(m[1])
    const out = JSON.parse(r.stdout) as { status: string; volid: string | null }
    assert.equal(out.status, 'failed')
    assert.equal(out.volid, null)

    const list = async (): Promise<Row[]> =>
      JSON.parse(
        (await runCliInProcessOk(['list', '--store', store, '--failed', '--json'])).stdout,
      ) as Row[]
    const [failed, ...rest] = await list()
    assert.deepEqual(rest, [])
    assert.equal(failed?.status, 'failed')
    assert.match(failed.error ?? '', /ENOSPC|no space|EFBIG/i)
    assert.equal(failed.log, m[1])
    // Without --failed, only backups are listed.
    assert.deepEqual(
      JSON.parse((await runCliInProcessOk(['list', '--store', store, '--json'])).stdout),
      [],
    )

    await new Promise((resolve) => setTimeout(resolve, 1100))
    await runCliInProcessOk(backupArgs(store, 100, join(dir, 'c'), '--disk', `scsi0=${disk}`))
    await runCliInProcessOk(['prune', '--store', store])
    const after = await list()
    assert.deepEqual(
      after.map((x) => x.status),
      ['ok'],
    )
    await assert.rejects(access(m[1]), { code: 'ENOENT' })
  })
})
