import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { HOOK_LINE_MAX, guestHostname, hookScriptRunner } from '../../src/host/hook-script.ts'
import type { HookTask } from '../../src/host/hook-script.ts'
import { BackupError } from '../../src/errors.ts'

const TASK: HookTask = {
  mode: 'snapshot',
  vmid: 100,
  vmtype: 'qemu',
  hostname: 'web',
  target: '100/qemu-x',
  logfile: '/tmp/x.log',
}

describe('host/hook-script: vzdump hook-script protocol', () => {
  let dir: string
  const script = async (name: string, body: string, mode = 0o755): Promise<string> => {
    const path = join(dir, name)
    await writeFile(path, `#!/bin/sh\n${body}\n`)
    await chmod(path, mode)
    return path
  }
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-hook-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it("passes vzdump's arguments and only vzdump's variables", async () => {
    // /usr/bin/env prints the environment the script got, unchanged by a shell.
    const path = await script('env.sh', 'echo "ARGS $*"; exec /usr/bin/env')
    const lines: string[] = []
    const hook = hookScriptRunner({ script: path, storeId: 'gb', dumpDir: '/srv/gb' })
    await hook('backup-end', TASK, (l) => lines.push(l))
    assert.equal(lines[0], 'ARGS backup-end snapshot 100')
    assert.deepEqual(
      lines
        .slice(1)
        .filter((l) => !l.startsWith('PWD='))
        .sort(),
      [
        'DUMPDIR=/srv/gb',
        'HOSTNAME=web',
        'LOGFILE=/tmp/x.log',
        'STOREID=gb',
        'TARGET=100/qemu-x',
        'VMTYPE=qemu',
      ],
    )
    lines.length = 0
    await hook('job-start', undefined, (l) => lines.push(l))
    assert.equal(lines[0], 'ARGS job-start')
  })

  it("fails with run_command's message on a non-zero exit", async () => {
    const path = await script('fail.sh', 'exit 7')
    const hook = hookScriptRunner({ script: path })
    await assert.rejects(
      hook('backup-start', TASK, () => undefined),
      (e: unknown) =>
        e instanceof BackupError &&
        e.code === 'HOOK_FAILED' &&
        e.message === `command '${path} backup-start snapshot 100' failed: exit code 7`,
    )
  })

  it('cuts a line longer than HOOK_LINE_MAX into pieces, each line of both streams kept', async () => {
    // head -c prints that many bytes of 'y' without a newline, then one short line on stderr.
    const n = HOOK_LINE_MAX * 2 + 5
    const path = await script(
      'long.sh',
      `/usr/bin/yes | /usr/bin/tr -d '\\n' | /usr/bin/head -c ${n}; echo; echo err >&2`,
    )
    const lines: string[] = []
    await hookScriptRunner({ script: path })('job-end', undefined, (l) => lines.push(l))
    assert.deepEqual(
      lines.map((l) => l.length).sort((a, b) => a - b),
      [3, 5, HOOK_LINE_MAX, HOOK_LINE_MAX],
    )
    assert.ok(lines.includes('err'))
  })

  it("refuses a missing or non-executable script with vzdump's messages", async () => {
    const missing = join(dir, 'nope.sh')
    await assert.rejects(
      hookScriptRunner({ script: missing })('job-start', undefined, () => 0),
      {
        code: 'USAGE',
        message: `The hook script '${missing}' does not exist.`,
      },
    )
    const plain = await script('plain.sh', 'exit 0', 0o644)
    await assert.rejects(
      hookScriptRunner({ script: plain })('job-start', undefined, () => 0),
      {
        code: 'USAGE',
        message: `The hook script '${plain}' is not executable.`,
      },
    )
  })

  it("names the guest as the guest plugins do: a VM's name, a container's hostname or CT<vmid>", () => {
    assert.equal(guestHostname('qemu', 100, 'cores: 1\nname: web\n[snap]\nname: old\n'), 'web')
    assert.equal(guestHostname('qemu', 100, '[snap]\nname: old\n'), undefined)
    assert.equal(guestHostname('lxc', 101, 'hostname: proxy\n'), 'proxy')
    assert.equal(guestHostname('lxc', 101, 'arch: amd64\n'), 'CT101')
  })
})
