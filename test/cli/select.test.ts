import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'

// Selecting backups as operators do: pvesm's prune flags, `latest`, GUESTBACKUP_STORE.
describe('cli: prune flags, latest, GUESTBACKUP_STORE', () => {
  let dir: string
  let store: string
  /** The backups of guest 200, oldest first. */
  const volids: string[] = []
  const list = async (s = store): Promise<string[]> =>
    (
      JSON.parse((await runCliInProcessOk(['list', '--store', s, '--json'])).stdout) as {
        volid: string
      }[]
    ).map((v) => v.volid)
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-select-'))
    store = join(dir, 'store')
    const root = join(dir, 'root')
    await mkdir(root)
    await writeFile(join(root, 'f'), 'x\n')
    await runCliInProcessOk(['init', store, '--lxc-backup-mode', 'tar'])
    for (let i = 0; i < 4; i++) {
      // A distinct config per backup tells which one a command read.
      await writeFile(join(dir, 'ct.conf'), `arch: amd64\nhostname: ct${i}\n`)
      const b = await runCliInProcessOk([
        ...backupArgs(store, 200, join(dir, 'ct.conf'), '--rootfs', root, '--json'),
      ])
      volids.push((JSON.parse(b.stdout) as { volid: string }).volid)
      // Backup times are whole seconds: the next backup gets the next one.
      if (i < 3) await new Promise((r) => setTimeout(r, 1100))
    }
  })
  after(async () => {
    delete process.env['GUESTBACKUP_STORE']
    await rm(dir, { recursive: true, force: true })
  })

  it('prune --keep-last 3 --dry-run marks the oldest for removal and removes nothing', async () => {
    const r = await runCliInProcessOk(['prune', '--store', store, '--keep-last', '3', '--dry-run'])
    const marks = Object.fromEntries(
      r.stdout
        .trim()
        .split('\n')
        .map((l) => l.split(/\s+/)),
    ) as Record<string, string>
    assert.deepEqual(marks, {
      [volids[0] ?? '']: 'remove',
      [volids[1] ?? '']: 'keep',
      [volids[2] ?? '']: 'keep',
      [volids[3] ?? '']: 'keep',
    })
    assert.equal((await list()).length, 4)
    // --keep with spaces after its commas plans the same.
    const k = await runCliInProcessOk([
      ...['prune', '--store', store, '--keep', 'keep-last=3, keep-daily=0', '--dry-run'],
    ])
    assert.equal(k.stdout, r.stdout)
  })

  it('refuses --keep with a flag, and --keep-all with a count', async () => {
    const both = await runCliInProcess([
      ...['prune', '--store', store, '--keep', 'keep-last=1', '--keep-daily', '2', '--dry-run'],
    ])
    assert.equal(both.code, 2)
    assert.equal(
      both.stderr,
      'guestbackup: give the retention as --keep SPEC or as --keep-daily, not both\n',
    )
    const all = await runCliInProcess([
      ...['prune', '--store', store, '--keep-all', '--keep-last', '2', '--dry-run'],
    ])
    assert.equal(all.code, 2)
    assert.equal(all.stderr, 'guestbackup: keep-all cannot be set together with other options.\n')
  })

  it('backup/200/latest and latest --vmid name the newest backup', async () => {
    const newest = volids[3] ?? ''
    for (const args of [['backup/200/latest'], ['latest', '--vmid', '200']]) {
      const c = await runCliInProcessOk(['show-config', '--store', store, ...args])
      assert.equal(c.stdout, 'arch: amd64\nhostname: ct3\n')
    }
    const storeId = newest.slice(0, newest.indexOf(':'))
    await runCliInProcessOk([
      'notes',
      '--store',
      store,
      `${storeId}:backup/200/latest`,
      '--set',
      'n',
    ])
    await runCliInProcessOk(['protect', '--store', store, 'backup/200/latest'])
    const rows = JSON.parse(
      (await runCliInProcessOk(['list', '--store', store, '--json'])).stdout,
    ) as { volid: string; notes?: string; protected: boolean }[]
    const row = (v: string) => rows.find((x) => x.volid === v)
    assert.equal(row(newest)?.notes, 'n')
    assert.equal(row(newest)?.protected, true)
    assert.equal(row(volids[2] ?? '')?.protected, false)
    const v = await runCliInProcessOk(['verify', '--store', store, 'backup/200/latest', '--json'])
    assert.deepEqual(
      (JSON.parse(v.stdout) as { volid: string }[]).map((x) => x.volid),
      [newest],
    )
    await runCliInProcessOk(['protect', '--store', store, 'latest', '--vmid', '200', '--off'])
  })

  it('refuses latest without a guest, of a guest without backups, and in remove', async () => {
    for (const [args, code, why] of [
      [['show-config', 'latest'], 2, "'latest' needs its guest: backup/<vmid>/latest, or --vmid N"],
      [['show-config', 'backup/300/latest'], 1, "guest 300 has no backup in store 'store'"],
      [
        ['show-config', 'backup/200/latest', '--vmid', '201'],
        2,
        'backup/200/latest is a backup of guest 200, not of --vmid 201',
      ],
      [
        ['remove', 'backup/200/latest'],
        2,
        "remove takes the backup's own name, not 'latest' (see list --vmid N for the newest)",
      ],
    ] as const) {
      const r = await runCliInProcess([args[0], '--store', store, ...args.slice(1)])
      assert.equal(r.stderr, `guestbackup: ${why}\n`)
      assert.equal(r.code, code)
    }
    assert.equal((await list()).length, 4)
    const ct = await runCliInProcess([
      ...['restore', '--store', store, 'backup/200/latest', '--target', join(dir, 't')],
      ...['--disk', 'scsi0'],
    ])
    assert.equal(ct.code, 2)
    assert.match(
      ct.stderr,
      /^guestbackup: backup\/200\/lxc-\S+ is a container backup: it has no disks to select\n$/,
    )
  })

  it('GUESTBACKUP_STORE stands for --store; an explicit --store wins', async () => {
    const other = join(dir, 'other')
    await runCliInProcessOk(['init', other])
    process.env['GUESTBACKUP_STORE'] = store
    try {
      const fromEnv = await runCliInProcessOk(['list', '--json'])
      assert.equal((JSON.parse(fromEnv.stdout) as unknown[]).length, 4)
      const explicit = await runCliInProcessOk(['list', '--store', other, '--json'])
      assert.deepEqual(JSON.parse(explicit.stdout), [])
      const c = await runCliInProcessOk(['show-config', 'backup/200/latest'])
      assert.equal(c.stdout, 'arch: amd64\nhostname: ct3\n')
    } finally {
      delete process.env['GUESTBACKUP_STORE']
    }
    const none = await runCliInProcess(['list'])
    assert.equal(none.code, 2)
    assert.match(none.stderr, /required option '--store <dir>' not specified/)
  })
})
