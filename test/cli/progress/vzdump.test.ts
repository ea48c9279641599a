import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  renderBytes,
  renderDuration,
  renderRate,
  VzdumpLinesView,
} from '../../../src/cli/progress/index.ts'

const MiB = 1024 * 1024
const GiB = 1024 * MiB

/** A view on a collector, with a clock the test moves. */
const setup = (): { view: VzdumpLinesView; lines: () => string[]; at: (s: number) => void } => {
  let text = ''
  let now = 0
  const view = new VzdumpLinesView({ write: (s: string) => (text += s) }, () => now)
  return {
    view,
    lines: () => text.split('\n').filter((l) => l !== ''),
    at: (s) => {
      now = s * 1000
    },
  }
}

describe('cli progress: pve-common number formats', () => {
  it('renders bytes and durations as PVE::Format does', () => {
    // Values of pve-common src/PVE/Format.pm render_bytes/render_duration.
    assert.equal(renderBytes(1023), '1023.00 B')
    assert.equal(renderBytes(1024, 1), '1.0 KiB')
    assert.equal(renderBytes(2 * GiB, 1), '2.0 GiB')
    assert.equal(renderBytes(1.5 * MiB), '1.50 MiB')
    assert.equal(renderDuration(0), '0s')
    assert.equal(renderDuration(5), '5s')
    assert.equal(renderDuration(3725), '1h 2m 5s')
    assert.equal(renderDuration(7203), '2h 3s')
    assert.equal(renderRate(0, 3), '0 B/s')
    assert.equal(renderRate(1200 * MiB, 3), '400.0 MiB/s')
  })
})

describe('cli progress: vzdump INFO lines without a terminal', () => {
  it('prints the status line of qemu-server QemuServer.pm, over all disks of the job', () => {
    const { view, lines, at } = setup()
    view.update({ item: 'drive-scsi0', done: 0, total: 10 * GiB, copied: 0, zero: 0 })
    view.update({ item: 'drive-scsi1', done: 0, total: 10 * GiB, copied: 0, zero: 0 })
    at(5)
    view.update({
      item: 'drive-scsi0',
      done: 2 * GiB,
      total: 10 * GiB,
      copied: 1900 * MiB,
      zero: 148 * MiB,
    })
    assert.deepEqual(lines(), [
      'INFO:  10% (2.0 GiB of 20.0 GiB) in 5s, read: 409.6 MiB/s, write: 380.0 MiB/s',
    ])
  })

  it('prints a line only when the percentage changed and more than 2 whole seconds passed', () => {
    const { view, lines, at } = setup()
    view.update({ item: 'archive', done: 0, total: 100 * MiB })
    at(2.9)
    view.update({ item: 'archive', done: 10 * MiB, total: 100 * MiB })
    assert.equal(lines().length, 0, 'only 2 whole seconds passed')
    at(3)
    view.update({ item: 'archive', done: 10 * MiB, total: 100 * MiB })
    assert.equal(lines().length, 1)
    at(7)
    view.update({ item: 'archive', done: 10.5 * MiB, total: 100 * MiB })
    assert.equal(lines().length, 1, 'still 10 %')
    view.update({ item: 'archive', done: 20 * MiB, total: 100 * MiB })
    assert.equal(lines().length, 2)
    assert.equal(
      lines()[1],
      'INFO:  20% (20.0 MiB of 100.0 MiB) in 7s, read: 2.5 MiB/s, write: 2.5 MiB/s',
    )
  })

  it('ends with the last status line, the sparse and incremental lines and the transferred total', () => {
    const { view, lines, at } = setup()
    view.update({ item: 'drive-scsi0', done: 0, total: 64 * MiB, copied: 0, zero: 0 })
    at(4)
    // 16 MiB copied, 16 MiB of holes, 32 MiB clean (an incremental's unchanged areas).
    view.update({
      item: 'drive-scsi0',
      done: 64 * MiB,
      total: 64 * MiB,
      copied: 16 * MiB,
      zero: 16 * MiB,
    })
    view.finish()
    assert.deepEqual(lines(), [
      'INFO: 100% (64.0 MiB of 64.0 MiB) in 4s, read: 16.0 MiB/s, write: 4.0 MiB/s',
      'INFO: backup is sparse: 16.00 MiB (25%) total zero data',
      'INFO: backup was done incrementally, reused 32.00 MiB (50%)',
      'INFO: transferred 64.00 MiB in 4 seconds (16.0 MiB/s)',
    ])
  })

  it('does not repeat the 100 % line, and says <1 seconds for a quick job', () => {
    const { view, lines, at } = setup()
    at(0.5)
    view.update({ item: 'archive', done: MiB, total: MiB })
    view.finish()
    assert.deepEqual(lines(), [
      'INFO: 100% (1.0 MiB of 1.0 MiB) in 0s, read: 1.0 MiB/s, write: 1.0 MiB/s',
      'INFO: transferred 1.00 MiB in <1 seconds',
    ])
    const late = setup()
    late.view.update({ item: 'archive', done: 0, total: MiB })
    late.at(3)
    late.view.update({ item: 'archive', done: MiB, total: MiB })
    late.view.finish()
    assert.equal(late.lines().filter((l) => l.includes('100%')).length, 1)
  })

  it('gives a job that only reads (verify) no write rate', () => {
    let text = ''
    let now = 0
    const view = new VzdumpLinesView({ write: (s: string) => (text += s) }, () => now, true)
    view.update({ item: 'drive-scsi0', done: 0, total: 4 * GiB })
    now = 4000
    view.update({ item: 'drive-scsi0', done: 2 * GiB, total: 4 * GiB })
    assert.deepEqual(
      text.split('\n').filter((l) => l !== ''),
      ['INFO:  50% (2.0 GiB of 4.0 GiB) in 4s, read: 512.0 MiB/s'],
    )
  })
})
