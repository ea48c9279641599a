import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { JobRunResult } from '../../src/cli/commands/job.ts'
import { OUTPUT_SHAPES } from '../../src/cli/output/shapes.ts'
import { run } from '../../src/io/spawn.ts'
import { createImage } from '../../src/qemu/img.ts'
import { runCliInProcess, runCliInProcessOk } from '../helpers/cli.ts'
import { startVm } from '../helpers/qemu-vm.ts'
import type { TestVm } from '../helpers/qemu-vm.ts'

const MiB = 1024 * 1024

/**
 * The hook appends "$phase $mode $vmid" and vzdump's variables to a file; HOME stands for every
 * other variable of the environment, which vzdump's `local %ENV` leaves out. It fails
 * backup-start of guest 104, so that guest must be aborted as vzdump aborts it.
 */
const HOOK = `#!/bin/sh
echo "$* STOREID=\${STOREID-} DUMPDIR=\${DUMPDIR-} VMTYPE=\${VMTYPE-} HOSTNAME=\${HOSTNAME-} TARGET=\${TARGET-} LOGFILE=\${LOGFILE:+set} HOME=\${HOME-unset}" >> "$(dirname "$0")/hook.out"
echo "hook output of $1"
if [ "$1" = backup-start ] && [ "$3" = 104 ]; then exit 3; fi
exit 0
`

// Issue "A command line for operators" §4, done-when: one job file with a running VM, a stopped
// VM and a container backs them up in one job, runs the hook script through every phase, and
// exits non-zero when a guest failed while the others' backups are kept and listed.
describe('cli: job run', () => {
  let dir: string
  let store: string
  let vm: TestVm
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-cli-job-'))
    store = join(dir, 'store')
    await mkdir(join(dir, 'vm'))
    await createImage(join(dir, 'live.qcow2'), { format: 'qcow2', size: 16 * MiB })
    await createImage(join(dir, 'off.qcow2'), { format: 'qcow2', size: 16 * MiB })
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 1M 1M', join(dir, 'off.qcow2')])
    vm = await startVm({
      disks: [{ path: join(dir, 'live.qcow2'), format: 'qcow2', id: 'scsi0' }],
      dir: join(dir, 'vm'),
    })
    for (const ct of ['ct102', 'ct104']) {
      await mkdir(join(dir, ct, 'etc'), { recursive: true })
      await writeFile(join(dir, ct, 'etc', 'hostname'), `${ct}\n`)
      await writeFile(join(dir, ct, 'skip.log'), 'excluded\n')
    }
    await writeFile(join(dir, '100.conf'), 'name: web\nscsi0: local:100/vm-100-disk-0.qcow2\n')
    await writeFile(join(dir, '101.conf'), 'name: db\n')
    await writeFile(join(dir, '102.conf'), 'hostname: proxy\n')
    await writeFile(join(dir, '103.conf'), 'name: gone\n')
    await writeFile(join(dir, '104.conf'), 'arch: amd64\n')
    await writeFile(join(dir, 'hook.sh'), HOOK)
    await chmod(join(dir, 'hook.sh'), 0o755)
    await runCliInProcessOk(['init', store, '--id', 'gb', '--vm-compress', 'none'])
  })
  after(async () => {
    await vm.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('backs up a running VM, a stopped VM and a container in one job with every hook phase', async () => {
    // Relative paths are taken from the job file's directory.
    const jobFile = join(dir, 'nightly.toml')
    await writeFile(
      jobFile,
      `store = "store"
script = "hook.sh"
bwlimit = "1G"
lock-wait = 1
notes-template = "{{guestname}} ({{vmid}})"

[[guest]]
vmid = 100
config = "100.conf"
qmp = "${vm.qmpPath}"

[[guest]]
vmid = 101
config = "101.conf"
disks = ["scsi0=off.qcow2,format=qcow2"]

[[guest]]
vmid = 102
config = "102.conf"
rootfs = "ct102"
exclude = ["*.log"]

[[guest]]
vmid = 103
config = "103.conf"
disks = [{ name = "scsi0", path = "missing.qcow2" }]

[[guest]]
vmid = 104
config = "104.conf"
rootfs = "ct104"
`,
    )
    const r = await runCliInProcess(['job', 'run', jobFile, '--json'])
    assert.equal(r.code, 1, r.stderr)
    // Shape job-run (docs/cli-json.md): one backup report per guest.
    const res: JobRunResult = OUTPUT_SHAPES['job-run'].schema.parse(JSON.parse(r.stdout))
    assert.equal(res.status, 'failed')
    assert.equal(res.error, null)
    assert.deepEqual(
      res.guests.map((g) => [g.vmid, g.type, g.status]),
      [
        [100, 'qemu', 'ok'],
        [101, 'qemu', 'ok'],
        [102, 'lxc', 'ok'],
        [103, 'qemu', 'failed'],
        [104, 'lxc', 'failed'],
      ],
    )
    assert.deepEqual([res.ok, res.failed], [3, 2])
    const g = (vmid: number): JobRunResult['guests'][number] => {
      const found = res.guests.find((x) => x.vmid === vmid)
      assert.ok(found)
      return found
    }
    // The backup report of each guest: the stopped VM's disk, full as the first backup.
    assert.equal(g(101).mode, 'full')
    assert.equal(g(101).consistency, 'offline')
    assert.deepEqual(
      g(101).disks.map((d) => [d.device, d.mode, d.reason, d.read]),
      [['drive-scsi0', 'full', "the store's vm-backup-mode is full", MiB]],
    )
    assert.equal(g(100).consistency, 'crash')
    assert.equal(g(102).reason, 'container archives are always full')
    assert.ok(g(102).read > 0 && g(102).duration > 0)
    assert.equal(g(103).mode, null)
    assert.match(g(103).error ?? '', /missing\.qcow2/)
    assert.equal(g(103).volid, null)
    assert.match(g(104).error ?? '', /hook\.sh backup-start stop 104' failed: exit code 3/)
    assert.equal(g(104).volid, null)
    assert.ok(g(104).log !== null, 'the aborted run keeps its task log')

    // The hook's exact sequence: vzdump's phases, arguments and environment.
    const target = (vmid: number): string => (g(vmid).volid ?? '').replace(/^gb:backup\//, '')
    const env = (vmid: number | undefined, type = '', host = '', tgt = '', log = ''): string =>
      vmid === undefined
        ? `STOREID=gb DUMPDIR=${store} VMTYPE= HOSTNAME= TARGET= LOGFILE= HOME=unset`
        : `STOREID=gb DUMPDIR=${store} VMTYPE=${type} HOSTNAME=${host} TARGET=${tgt} LOGFILE=${log} HOME=unset`
    const t100 = target(100)
    const t101 = target(101)
    const t102 = target(102)
    const expected = [
      'job-init STOREID= DUMPDIR= VMTYPE= HOSTNAME= TARGET= LOGFILE= HOME=unset',
      `job-start ${env(undefined)}`,
      ...['backup-start', 'pre-stop', 'pre-restart', 'post-restart', 'backup-end'].map(
        (p) => `${p} snapshot 100 ${env(100, 'qemu', 'web', t100)}`,
      ),
      `log-end snapshot 100 ${env(100, 'qemu', 'web', t100, 'set')}`,
      `backup-start stop 101 ${env(101, 'qemu', 'db', t101)}`,
      `backup-end stop 101 ${env(101, 'qemu', 'db', t101)}`,
      `log-end stop 101 ${env(101, 'qemu', 'db', t101, 'set')}`,
      `backup-start stop 102 ${env(102, 'lxc', 'proxy', t102)}`,
      `backup-end stop 102 ${env(102, 'lxc', 'proxy', t102)}`,
      `log-end stop 102 ${env(102, 'lxc', 'proxy', t102, 'set')}`,
      // Its disk cannot be read: no backup was started, so no backup-start and no TARGET.
      `backup-abort stop 103 ${env(103, 'qemu', 'gone')}`,
      `log-end stop 103 ${env(103, 'qemu', 'gone', '', 'set')}`,
      // No hostname in its config: pve-container's CT<vmid>.
      `backup-start stop 104 ${env(104, 'lxc', 'CT104', '104/lxc-TIME')}`,
      `backup-abort stop 104 ${env(104, 'lxc', 'CT104', '104/lxc-TIME')}`,
      `log-end stop 104 ${env(104, 'lxc', 'CT104', '104/lxc-TIME', 'set')}`,
      `job-end ${env(undefined)}`,
    ]
    const got = (await readFile(join(dir, 'hook.out'), 'utf8'))
      .trimEnd()
      .split('\n')
      .map((l) => l.replace(/TARGET=104\/lxc-\S+/, 'TARGET=104/lxc-TIME'))
    assert.deepEqual(got, expected)

    // The others' backups are kept and listed, with the notes of the template.
    const list = await runCliInProcessOk(['list', '--store', store, '--json'])
    const vols = JSON.parse(list.stdout) as { volid: string; vmid: number; notes?: string }[]
    assert.deepEqual(vols.map((v) => v.vmid).sort(), [100, 101, 102])
    assert.deepEqual(
      vols.map((v) => v.volid).sort(),
      [g(100).volid, g(101).volid, g(102).volid].sort(),
    )
    assert.equal(vols.find((v) => v.vmid === 102)?.notes, 'proxy (102)')
    // The hook's output went to the guest's task log, the one the failed run kept.
    const log104 = await readFile(g(104).log ?? '', 'utf8')
    assert.match(log104, /hook output of backup-start/)
    assert.match(log104, /hook output of backup-abort/)

    // Without --json: one line per guest and the summary line.
    await rm(join(dir, 'hook.out'))
    const text = await runCliInProcess(['job', 'run', jobFile])
    assert.equal(text.code, 1)
    const lines = text.stdout.trimEnd().split('\n')
    assert.equal(lines.length, 6, text.stdout)
    assert.match(lines[0] ?? '', /^100 qemu ok gb:backup\/100\/qemu-\S+ /)
    assert.match(lines[3] ?? '', /^103 qemu failed: /)
    assert.equal(lines[5], `job ${jobFile}: 5 guests, 3 ok, 2 failed`)
  })

  it('fails the whole job when job-start fails (--script overrides the file), then job-abort', async () => {
    const hook = join(dir, 'job-start-fails.sh')
    await writeFile(
      hook,
      `#!/bin/sh\necho "$*" >> "$(dirname "$0")/abort.out"\n[ "$1" = job-start ] && exit 9\nexit 0\n`,
    )
    await chmod(hook, 0o755)
    const jobFile = join(dir, 'one.toml')
    await writeFile(
      jobFile,
      `store = "store"\nscript = "hook.sh"\n[[guest]]\nvmid = 300\nconfig = "102.conf"\nrootfs = "ct102"\n`,
    )
    const r = await runCliInProcess(['job', 'run', jobFile, '--script', hook, '--json'])
    assert.equal(r.code, 1, r.stderr)
    const res = JSON.parse(r.stdout) as JobRunResult
    assert.equal(res.error, `command '${hook} job-start' failed: exit code 9`)
    assert.deepEqual(
      res.guests.map((g) => [g.vmid, g.status, g.volid]),
      [[300, 'failed', null]],
    )
    assert.deepEqual((await readFile(join(dir, 'abort.out'), 'utf8')).split('\n'), [
      'job-init',
      'job-start',
      'job-abort',
      '',
    ])
    const list = await runCliInProcessOk(['list', '--store', store, '--vmid', '300', '--json'])
    assert.deepEqual(JSON.parse(list.stdout), [])
  })
})
