/**
 * Rewrite the generated part of docs/cli-json.md from src/cli/output/shapes.ts:
 * `node --import tsx scripts/cli-json-doc.ts`. test/cli/output/doc.test.ts fails until it is run
 * after a shape changes.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { format, resolveConfig } from 'prettier'
import { spliceShapes } from '../src/cli/output/doc.ts'

/** docs/cli-json.md, as the generated part of the shapes and prettier make it. */
export const renderDoc = async (path: string): Promise<string> => {
  const config = (await resolveConfig(path)) ?? {}
  return await format(spliceShapes(await readFile(path, 'utf8')), { ...config, filepath: path })
}

/** The document's path. */
export const DOC = fileURLToPath(new URL('../docs/cli-json.md', import.meta.url))

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await writeFile(DOC, await renderDoc(DOC))
}
