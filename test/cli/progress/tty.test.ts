import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { StatusLine, TtyView, ttyLine } from '../../../src/cli/progress/index.ts'
import { JobTotals } from '../../../src/cli/progress/totals.ts'

const MiB = 1024 * 1024
const CLEAR = '\r\x1b[K'

const terminal = (
  columns = 120,
): { text: string; isTTY: true; columns: number; write(s: string): void } => ({
  text: '',
  isTTY: true,
  columns,
  write(s: string) {
    this.text += s
  },
})

describe('cli progress: the terminal status line', () => {
  it('writes a log line on a cleared line and draws the status line again after it', () => {
    const out = terminal()
    const line = new StatusLine(out)
    line.show('100 backup: 10%')
    line.write('info: drive-scsi0: full backup\n')
    assert.equal(
      out.text,
      `${CLEAR}100 backup: 10%${CLEAR}info: drive-scsi0: full backup\n100 backup: 10%`,
    )
    line.clear(true)
    line.write('guestbackup: done\n')
    assert.ok(out.text.endsWith('100 backup: 10%\nguestbackup: done\n'))
  })

  it('cuts the status line to the width of the terminal, so it never wraps', () => {
    const out = terminal(20)
    new StatusLine(out).show('x'.repeat(50))
    assert.equal(out.text, `${CLEAR}${'x'.repeat(19)}`)
  })

  it('counts holes and clean areas as skipped, not as copied, in the totals of all disks', () => {
    const t = new JobTotals()
    t.update({ item: 'drive-scsi0', done: 0, total: 64 * MiB, copied: 0, zero: 0 })
    t.update({ item: 'drive-scsi1', done: 0, total: 64 * MiB, copied: 0, zero: 0 })
    t.update({
      item: 'drive-scsi0',
      done: 32 * MiB,
      total: 64 * MiB,
      copied: 8 * MiB,
      zero: 16 * MiB,
    })
    assert.deepEqual(t.get(), {
      done: 32 * MiB,
      total: 128 * MiB,
      copied: 8 * MiB,
      zero: 16 * MiB,
      clean: 8 * MiB,
      knowsSkipped: true,
    })
    // 2 s in: 8 MiB copied is 4 MiB/s; 32 of 128 MiB walked leaves 6 s at that pace.
    assert.equal(
      ttyLine('100 backup', t.get(), 2000),
      '100 backup: 25% 32.0 MiB of 128.0 MiB (24.0 MiB skipped), 4.0 MiB/s, 0:02 elapsed, ETA 0:06',
    )
  })

  it('keeps the final state of a finished job as a line of its own', () => {
    const out = terminal()
    let now = 0
    {
      using view = new TtyView(new StatusLine(out), 'restore x', () => now)
      view.update({ item: 'archive', done: 0, total: 10 * MiB })
      now = 5000
      view.finish()
    }
    assert.ok(out.text.endsWith(`${CLEAR}restore x: 0% 0 B of 10.0 MiB, 0 B/s, done in 0:05\n`))
  })
})
