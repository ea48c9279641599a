import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
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
  const listed = program.commands.filter((c) => !(c as unknown as { _hidden: boolean })._hidden)
  for (const cmd of listed) {
    it(`${cmd.name()}: takes --json and has a shape in OUTPUT_SHAPES`, () => {
      assert.ok(
        cmd.options.some((o) => o.long === '--json'),
        `${cmd.name()} has no --json alias`,
      )
      const commands = Object.values(OUTPUT_SHAPES).map((s) => s.command)
      assert.ok(
        commands.some((c) => c === `guestbackup ${cmd.name()}`),
        `no shape of guestbackup ${cmd.name()} in src/cli/output/shapes.ts`,
      )
    })
  }
})
