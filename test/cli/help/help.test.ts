import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { Command } from 'commander'
import { createProgram } from '../../../src/cli/program.ts'
import { commandPath, HELP_WIDTH } from '../../../src/cli/help/attach.ts'
import { EXAMPLES, exampleLines, shellWord } from '../../../src/cli/help/examples.ts'
import { runCliInProcess } from '../../helpers/cli.ts'

const quiet = { write: () => true }
const io = { stdout: quiet, stderr: quiet, signal: new AbortController().signal }

const shown = (c: Command): boolean => !(c as unknown as { _hidden: boolean })._hidden
const all = (c: Command): Command[] => c.commands.filter(shown).flatMap((s) => [s, ...all(s)])
const { program } = createProgram(io)
const paths = ['', ...all(program).map(commandPath)]

describe('--help', () => {
  it('covers every command, job run and job check included', () => {
    assert.ok(paths.includes('job run') && paths.includes('job check') && paths.includes('backup'))
  })

  for (const path of paths) {
    const argv = [...(path === '' ? [] : path.split(' ')), '--help']
    it(`${path || 'guestbackup'}: two or three examples, the exit codes, within ${HELP_WIDTH} columns`, async () => {
      const r = await runCliInProcess(argv)
      assert.equal(r.code, 0)
      const examples = EXAMPLES[path] ?? []
      assert.ok(examples.length >= 2 && examples.length <= 3, `${examples.length} examples`)
      assert.match(r.stdout, /\nExamples:\n/)
      for (const ex of examples) assert.ok(r.stdout.includes(`  ${ex.what}:\n`), ex.what)
      assert.match(r.stdout, /\nExit codes:\n {2}0 /)
      assert.match(r.stdout.replace(/\n +/g, ' '), /130 {1,2}interrupted/)
      for (const line of r.stdout.split('\n')) {
        assert.ok(line.length <= HELP_WIDTH, `${line.length} columns: ${line}`)
      }
    })
  }

  it('marks the required options, the env of --store too', async () => {
    const r = await runCliInProcess(['backup', '--help'])
    // commander wraps the descriptions: one space for each line break and its indent.
    const text = r.stdout.replace(/\n {20,}/g, ' ')
    assert.match(text, /--vmid <id> +guest id \(required\)\n/)
    assert.match(text, /--store <dir> +store directory \(required, env: GUESTBACKUP_STORE\)\n/)
    assert.match(
      text,
      /--firewall-config <file> +firewall configuration file to keep with the backup\n/,
    )
    const restore = await runCliInProcess(['restore', '--help'])
    assert.match(
      restore.stdout,
      /--target <dir> +target directory \(created; must be empty\)\s+\(required\)/,
    )
  })

  it('lists the exit codes run() returns in the top-level help', async () => {
    const r = await runCliInProcess(['--help'])
    assert.match(r.stdout, /\nExit codes:\n {2}0 {4}success\n {2}1 {4}failure/)
    assert.match(r.stdout, /\n {2}2 {4}usage or input error/)
    assert.match(r.stdout, /\n {2}130 {2}interrupted by SIGINT or SIGTERM/)
    assert.match(r.stdout, /GUESTBACKUP_STORE/)
  })

  it('says what exit code 1 means for verify, check, job run and job check', async () => {
    const cases = [
      [['verify'], /1 failure, or a backup failed verification/],
      [['check'], /1 failure, or findings remain unrepaired/],
      [['job', 'run'], /1 failure, or a guest failed/],
      [['job', 'check'], /1 failure, or the job file is invalid/],
    ] as const
    for (const [argv, re] of cases) {
      const r = await runCliInProcess([...argv, '--help'])
      assert.match(r.stdout.replace(/\n {2}/g, ' '), re)
    }
  })
})

describe('the examples', () => {
  // Each example parsed by the real program, its action replaced: the options' parsers, choices
  // and required options all run, nothing else.
  for (const [path, list] of Object.entries(EXAMPLES)) {
    for (const ex of list) {
      it(`${path || 'guestbackup'}: ${ex.what}`, async () => {
        const { program: p } = createProgram(io)
        let ran: string | undefined
        for (const c of all(p)) c.action(() => void (ran = commandPath(c)))
        const saved = { ...process.env }
        delete process.env['GUESTBACKUP_STORE']
        Object.assign(process.env, ex.env ?? {})
        try {
          await p.parseAsync([...ex.argv], { from: 'user' })
        } finally {
          process.env = saved
        }
        assert.ok(ran !== undefined, 'no command ran')
        if (path !== '' && path !== 'job') assert.equal(ran, path)
        for (const line of exampleLines(ex, HELP_WIDTH - 4))
          assert.ok(line.length <= HELP_WIDTH - 4, line)
      })
    }
  }

  it('quote what the shell would split or expand', () => {
    assert.equal(shellWord('before the upgrade'), "'before the upgrade'")
    assert.equal(shellWord("it's"), `'it'\\''s'`)
    assert.equal(shellWord('scsi0=/dev/pve/vm-100-disk-0'), 'scsi0=/dev/pve/vm-100-disk-0')
  })

  it('wrap with a backslash, an option kept with its value', () => {
    const lines = exampleLines(
      { what: '', argv: ['backup', '--store', 'x'.repeat(30), '--vmid', '100'] },
      40,
    )
    assert.deepEqual(lines, [
      `guestbackup backup \\`,
      `  --store ${'x'.repeat(30)} \\`,
      '  --vmid 100',
    ])
  })
})
