import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { backupArgs, runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'

// `backup` takes vzdump's units and names (vzdump(1); pve-manager PVE/VZDump.pm).
describe("cli: backup with vzdump's options", () => {
  let dir: string
  let root: string
  let conf: string
  let n = 0
  const newStore = async (...opts: string[]): Promise<string> => {
    const store = join(dir, `store-${++n}`)
    await runCliInProcessOk(['init', store, '--lxc-backup-mode', 'tar', ...opts])
    return store
  }
  const restoredPaths = async (store: string, volid: string): Promise<(p: string) => boolean> => {
    const target = join(dir, `restore-${++n}`)
    await runCliInProcessOk(['restore', '--store', store, volid, '--target', target])
    return (p) => existsSync(join(target, 'rootfs', p))
  }
  const volidOf = (stdout: string): string => (JSON.parse(stdout) as { volid: string }).volid

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-vzdump-'))
    root = join(dir, 'root')
    for (const d of ['tmp', 'var/tmp', 'var/run', 'home/skip', 'etc']) {
      await mkdir(join(root, d), { recursive: true })
    }
    for (const f of [
      'tmp/x',
      'var/tmp/y',
      'var/run/a.pid',
      'var/run/keep',
      'home/skip/z',
      'etc/hosts',
    ]) {
      await writeFile(join(root, f), `${f}\n`)
    }
    conf = join(dir, 'ct.conf')
    await writeFile(conf, 'arch: amd64\nhostname: web1\n[snap]\nhostname: old\n')
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('--bwlimit 10000 hands the provider 10000 KiB/s, in bytes/s', async () => {
    const store = await newStore()
    const r = await runCliInProcessOk([
      '-v',
      ...backupArgs(store, 200, conf, '--rootfs', root, '--bwlimit', '10000'),
    ])
    // The provider's own task log line: what reached its backupContainer info.
    assert.match(r.stderr, /bandwidth limit 10240000 bytes\/s/)
    const m = await runCliInProcessOk([
      '-v',
      ...backupArgs(store, 201, conf, '--rootfs', root, '--bwlimit', '65536B'),
    ])
    assert.match(m.stderr, /bandwidth limit 65536 bytes\/s/)
  })

  it("--stdexcludes 1 (the default) drops vzdump's /tmp/?*, /var/tmp/?*, /var/run/?*.pid only", async () => {
    const store = await newStore()
    const b = await runCliInProcessOk([...backupArgs(store, 200, conf, '--rootfs', root, '--json')])
    const has = await restoredPaths(store, volidOf(b.stdout))
    for (const p of ['tmp/x', 'var/tmp/y', 'var/run/a.pid']) assert.equal(has(p), false, p)
    for (const p of ['tmp', 'var/tmp', 'var/run/keep', 'home/skip/z', 'etc/hosts']) {
      assert.equal(has(p), true, p)
    }
  })

  it('--stdexcludes 0 keeps them; --exclude-path leaves out what it names', async () => {
    const store = await newStore()
    const b = await runCliInProcessOk([
      ...backupArgs(store, 200, conf, '--rootfs', root, '--json'),
      ...['--stdexcludes', '0', '--exclude-path', '/home/skip'],
    ])
    const has = await restoredPaths(store, volidOf(b.stdout))
    for (const p of ['tmp/x', 'var/tmp/y', 'var/run/a.pid', 'var/run/keep', 'home/skip']) {
      assert.equal(has(p), p !== 'home/skip', p)
    }
  })

  it("refuses --exclude (vzdump's guest ids) with one line naming --exclude-path", async () => {
    const store = await newStore()
    const r = await runCliInProcess([
      ...backupArgs(store, 200, conf, '--rootfs', root, '--exclude', '/home/skip'),
    ])
    assert.equal(r.code, 2)
    assert.equal(
      r.stderr,
      "guestbackup: --exclude is vzdump's list of guests to skip; give container paths with --exclude-path\n",
    )
    assert.equal(existsSync(join(store, '200')), false)
  })

  it('--notes-template expands the variables and the \\n, \\\\ escapes; --protected protects', async () => {
    const store = await newStore()
    const b = await runCliInProcessOk([
      ...backupArgs(store, 200, conf, '--rootfs', root, '--json', '--protected'),
      ...['--notes-template', '{{guestname}} ({{vmid}}) on {{node}}\\n\\\\{{cluster}}'],
    ])
    const volid = volidOf(b.stdout)
    const notes = await runCliInProcessOk(['notes', '--store', store, volid])
    const node = hostname().split('.')[0] ?? ''
    assert.equal(notes.stdout, `web1 (200) on ${node}\n\\standalone node`)
    const list = await runCliInProcessOk(['list', '--store', store, '--json'])
    const [v] = JSON.parse(list.stdout) as { protected: boolean }[]
    assert.equal(v?.protected, true)
  })

  it('refuses a notes template with an escape or a variable vzdump does not know', async () => {
    const store = await newStore()
    for (const [t, why] of [
      ['{{hostname}}', "found unknown: variable 'hostname' at char 4"],
      ['a\\tb', "found unknown: escape sequence '\\t' at char 1"],
    ] as const) {
      const r = await runCliInProcess([
        ...backupArgs(store, 200, conf, '--rootfs', root, '--notes-template', t),
      ])
      assert.equal(r.code, 2)
      assert.ok(r.stderr.includes(why), r.stderr)
    }
  })

  it("prunes the guest by the store's prune-backups after a backup; --remove 0 does not", async () => {
    // keep-daily counts toward vzdump's backup limit (2) without keeping a second backup of a day.
    const store = await newStore('--prune-backups', 'keep-last=1,keep-daily=1')
    const backup = async (...extra: string[]) =>
      volidOf(
        (
          await runCliInProcessOk([
            ...backupArgs(store, 200, conf, '--rootfs', root, '--json', ...extra),
          ])
        ).stdout,
      )
    const list = async () =>
      (
        JSON.parse((await runCliInProcessOk(['list', '--store', store, '--json'])).stdout) as {
          volid: string
        }[]
      ).map((v) => v.volid)
    const first = await backup()
    // Backup times are whole seconds: wait for the next one so the two are distinct.
    await new Promise((r) => setTimeout(r, 1100))
    const second = await backup('--remove', '0')
    assert.deepEqual((await list()).sort(), [first, second].sort())
    await new Promise((r) => setTimeout(r, 1100))
    const third = await backup()
    assert.deepEqual(await list(), [third])
  })

  it('refuses before backing up, as vzdump: a protected backup over max-protected-backups, --remove 0 at the limit', async () => {
    const store = await newStore('--prune-backups', 'keep-last=1', '--max-protected-backups', '1')
    const args = backupArgs(store, 200, conf, '--rootfs', root, '--json')
    await runCliInProcessOk([...args, '--protected'])
    const listed = async () =>
      (
        JSON.parse(
          (await runCliInProcessOk(['list', '--store', store, '--json'])).stdout,
        ) as unknown[]
      ).length
    const p = await runCliInProcess([...args, '--protected'])
    assert.equal(p.code, 1)
    assert.equal(
      p.stderr,
      'guestbackup: the number of protected backups per guest is limited to 1 on this store\n',
    )
    // The protected backup does not count against keep-last: one unprotected is still allowed.
    await new Promise((r) => setTimeout(r, 1100))
    await runCliInProcessOk([...args, '--remove', '0'])
    const r = await runCliInProcess([...args, '--remove', '0'])
    assert.equal(r.code, 2)
    assert.match(r.stderr, /^guestbackup: there is a max backup limit of 1 .* and --remove 0/)
    assert.equal(await listed(), 2)
  })
})
