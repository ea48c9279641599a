import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import type { Command } from 'commander'
import { createProgram } from '../../../src/cli/program.ts'
import { OUTPUT_SHAPES } from '../../../src/cli/output/shapes.ts'
import { DOC, renderDoc } from '../../../scripts/cli-json-doc.ts'

const io = {
  stdout: { write: () => true },
  stderr: { write: () => true },
  signal: new AbortController().signal,
}

describe('docs/cli-json.md', () => {
  it('is what the shapes of src/cli/output/shapes.ts make of it (run scripts/cli-json-doc.ts)', async () => {
    assert.equal(await readFile(DOC, 'utf8'), await renderDoc(DOC))
  })

  it('has a section for every shape', async () => {
    const doc = await readFile(DOC, 'utf8')
    for (const name of Object.keys(OUTPUT_SHAPES))
      assert.match(doc, new RegExp(`^### ${name}$`, 'm'))
  })
})

describe('every command has a JSON shape', () => {
  const { program } = createProgram(io)
  const shown = (c: Command): boolean => !(c as unknown as { _hidden: boolean })._hidden
  // A command with subcommands (`job`) prints nothing itself: each subcommand needs the shape.
  const listed = program.commands
    .filter(shown)
    .flatMap((c) =>
      c.commands.length === 0
        ? [{ name: c.name(), cmd: c }]
        : c.commands.filter(shown).map((s) => ({ name: `${c.name()} ${s.name()}`, cmd: s })),
    )
  it('covers the subcommands of job', () => {
    assert.ok(listed.some((l) => l.name === 'job run'))
    assert.ok(listed.some((l) => l.name === 'job check'))
  })
  for (const { name, cmd } of listed) {
    it(`${name}: takes --json and has a shape in OUTPUT_SHAPES`, () => {
      assert.ok(
        cmd.options.some((o) => o.long === '--json'),
        `${name} has no --json alias`,
      )
      const commands = Object.values(OUTPUT_SHAPES).map((s) => s.command)
      assert.ok(
        commands.some((c) => c === `guestbackup ${name}`),
        `no shape of guestbackup ${name} in src/cli/output/shapes.ts`,
      )
    })
  }
})
