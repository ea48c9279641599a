import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseJobText } from '../../src/cli/job/load.ts'
import { OUTPUT_SHAPES } from '../../src/cli/output/shapes.ts'
import { runCliInProcess } from '../helpers/cli.ts'

/** The error lines of a job file's text (named `f`). */
const errors = (text: string): string[] => {
  const r = parseJobText('f', text)
  return r.ok ? [] : r.errors
}

const GUEST = '[[guest]]\nvmid = 100\nconfig = "c"\n'

describe('cli: job check', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-job-check-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('prints one line per error with its path in the file, exit code 1', async () => {
    const file = join(dir, 'bad.toml')
    await writeFile(
      file,
      `store = "/s"
bwlimit = "fast"
colour = "red"

[[guest]]
vmid = 100
config = "100.conf"
disks = ["scsi0=/d.img,format=qcow3"]

[[guest]]
vmid = 100
config = "101.conf"
qmp = "/run/101.qmp"
rootfs = "/ct"
`,
    )
    const r = await runCliInProcess(['job', 'check', file])
    assert.equal(r.code, 1)
    assert.deepEqual(
      r.stdout.trimEnd().split('\n').sort(),
      [
        `${file}: colour: unknown key`,
        `${file}: bwlimit: expected KiB/s (10000, as vzdump) or a unit: 50M, 1G, 65536B`,
        `${file}: guest[0].disks[0]: unknown disk format 'qcow3' (raw, qcow2, vmdk, vdi, vhdx, qed)`,
        `${file}: guest[1]: give only one of qmp, rootfs`,
        `${file}: guest[1].vmid: vmid 100 is already guest[0]'s`,
      ].sort(),
    )
    // As shape job-check: the same lines, and still exit code 1.
    const j = await runCliInProcess(['job', 'check', file, '--output-format', 'json'])
    assert.equal(j.code, 1)
    const v = OUTPUT_SHAPES['job-check'].schema.parse(JSON.parse(j.stdout))
    assert.deepEqual(
      { ...v, errors: [...v.errors].sort() },
      { job: file, valid: false, guests: null, errors: r.stdout.trimEnd().split('\n').sort() },
    )
  })

  it('accepts a valid file: exit code 0', async () => {
    const file = join(dir, 'ok.toml')
    await writeFile(file, `store = "/s"\nlock-wait = "30s"\n${GUEST}rootfs = "/ct"\n`)
    const r = await runCliInProcess(['job', 'check', file])
    assert.equal(r.code, 0, r.stdout)
    assert.equal(r.stdout, `${file}: ok, 1 guests\n`)
    const j = await runCliInProcess(['job', 'check', file, '--json'])
    assert.equal(j.code, 0, j.stderr)
    assert.deepEqual(OUTPUT_SHAPES['job-check'].schema.parse(JSON.parse(j.stdout)), {
      job: file,
      valid: true,
      guests: 1,
      errors: [],
    })
  })

  it('gives the line and column of a TOML syntax error', () => {
    assert.deepEqual(errors('store = "/s"\nguest = [\n'), ['f:3:1: invalid value'])
  })

  it('checks each rule of a guest table', () => {
    assert.deepEqual(errors('store = "/s"\n[[guest]]\nvmid = 0\nconfig = "c"\nrootfs = "/r"\n'), [
      'f: guest[0].vmid: expected a guest id (1-999999999)',
    ])
    assert.deepEqual(errors(`store = "/s"\n${GUEST}`), [
      'f: guest[0]: give one of disks (stopped VM), qmp (running VM), rootfs (container)',
    ])
    assert.deepEqual(errors(`store = "/s"\n${GUEST}rootfs = "/r"\nqga = "/q"\n`), [
      'f: guest[0].qga: applies with qmp only',
    ])
    assert.deepEqual(errors(`store = "/s"\n${GUEST}qmp = "/q"\nexclude = ["x"]\n`), [
      'f: guest[0].exclude: applies with rootfs only',
    ])
    assert.deepEqual(errors(`store = "/s"\nmode = "stop"\n${GUEST}qmp = "/q"\n`), [
      'f: mode: mode stop is not supported for running VMs (qmp): use snapshot',
    ])
    assert.deepEqual(errors(`store = "/s"\nlock-wait = "soon"\n${GUEST}qmp = "/q"\n`), [
      "f: lock-wait: expected a time: minutes as vzdump's lockwait (180), or with a unit (30s, 5m, 2h)",
    ])
    assert.deepEqual(errors(`${GUEST}qmp = "/q"\n`)[0], 'f: store: expected a path')
    assert.deepEqual(errors('store = "/s"\n'), ['f: guest: expected [[guest]] tables'])
  })

  it('checks notes-template as vzdump does', () => {
    assert.deepEqual(
      errors(`store = "/s"\nnotes-template = "{{guestname}} {{host}} \\\\t"\n${GUEST}qmp = "/q"\n`),
      [
        "f: notes-template: found unknown: escape sequence '\\t' at char 23, variable 'host' at char 18",
      ],
    )
  })

  it('makes job run refuse an invalid file with one line', async () => {
    const file = join(dir, 'run-bad.toml')
    await writeFile(file, `store = "/s"\nbwlimit = "x"\nmode = "nope"\n${GUEST}qmp = "/q"\n`)
    const r = await runCliInProcess(['job', 'run', file])
    assert.equal(r.code, 2)
    assert.equal(
      r.stderr,
      `guestbackup: ${file}: bwlimit: expected KiB/s (10000, as vzdump) or a unit: 50M, 1G, 65536B (and 1 more: see guestbackup job check)\n`,
    )
  })
})
