/**
 * The generated part of docs/cli-json.md: one section per shape of {@link OUTPUT_SHAPES}, a
 * table of its fields made from the zod schema (through `z.toJSONSchema`), so the document
 * cannot say what the schemas do not. `scripts/cli-json-doc.ts` rewrites the document;
 * test/cli/output/doc.test.ts fails when it is out of date.
 */
import * as z from 'zod'
import { OUTPUT_SHAPES } from './shapes.ts'

/** The first line of the generated part of docs/cli-json.md. */
export const BEGIN =
  '<!-- shapes: generated from src/cli/output/shapes.ts (scripts/cli-json-doc.ts) -->'
/** The line after it. */
export const END = '<!-- end of shapes -->'

interface JsonSchema {
  type?: string | string[]
  properties?: Record<string, JsonSchema>
  required?: string[]
  items?: JsonSchema
  anyOf?: JsonSchema[]
  enum?: unknown[]
  const?: unknown
  description?: string
  default?: unknown
}

interface Row {
  path: string
  type: string
  optional: boolean
  description: string
}

const typeName = (s: JsonSchema): string => {
  if (s.const !== undefined) return JSON.stringify(s.const)
  if (s.enum !== undefined) return s.enum.map((v) => JSON.stringify(v)).join(' \\| ')
  if (s.anyOf !== undefined) return s.anyOf.map(typeName).join(' \\| ')
  const types = Array.isArray(s.type) ? s.type : [s.type ?? 'any']
  return types.map((t) => (t === 'array' ? `${typeName(s.items ?? {})}[]` : t)).join(' \\| ')
}

/** Rows of `s` at `path`: an object's fields, an array's items (`path[]`), nested ones flattened. */
const rows = (s: JsonSchema, path: string, optional: boolean, out: Row[]): void => {
  const item = s.type === 'array' ? s.items : undefined
  const obj = item?.properties !== undefined ? item : s.properties !== undefined ? s : undefined
  const union = (item ?? s).anyOf?.filter((a) => a.properties !== undefined)
  if (path !== '' || (obj === undefined && (union?.length ?? 0) === 0)) {
    const shown = obj !== undefined || (union?.length ?? 0) > 0
    const type = shown ? (item !== undefined ? 'object[]' : 'object') : typeName(s)
    out.push({ path, type, optional, description: s.description ?? '' })
  }
  const inner = item !== undefined ? `${path}[]` : path
  const objects = obj !== undefined ? [obj] : (union ?? [])
  // A field of a union is optional unless every member requires it.
  const requiredAll = (k: string): boolean => objects.every((o) => (o.required ?? []).includes(k))
  for (const o of objects) {
    for (const [key, sub] of Object.entries(o.properties ?? {})) {
      const p = inner === '' ? key : `${inner}.${key}`
      const seen = out.find((r) => r.path === p)
      const type = typeName(sub)
      // A field of several union members: its types joined, described once.
      if (seen !== undefined && !seen.type.includes(type)) seen.type = `${seen.type} \\| ${type}`
      if (seen === undefined) rows(sub, p, !requiredAll(key), out)
    }
  }
}

const cell = (text: string): string => text.replace(/\|/g, '\\|').replace(/\n/g, ' ')

/** The generated sections, from {@link BEGIN} to {@link END} inclusive. */
export const renderShapes = (): string => {
  const parts = [BEGIN, '']
  for (const [name, { command, schema }] of Object.entries(OUTPUT_SHAPES)) {
    const json = z.toJSONSchema(schema, { io: 'output', unrepresentable: 'any' }) as JsonSchema
    const out: Row[] = []
    rows(json, '', false, out)
    const top = json.type === 'array' ? 'an array; each element:' : 'an object:'
    parts.push(`### ${name}`, '', `\`${command}\` prints ${top}`, '')
    parts.push('| field | type | meaning |', '| --- | --- | --- |')
    for (const r of out) {
      const path = r.path === '' ? '(element)' : `\`${r.path}\`${r.optional ? ' (optional)' : ''}`
      parts.push(`| ${path} | ${r.type} | ${cell(r.description)} |`)
    }
    parts.push('')
  }
  parts.push(END)
  return parts.join('\n')
}

/**
 * `doc` with its generated part replaced by {@link renderShapes}.
 * @throws Error when `doc` lacks the {@link BEGIN} and {@link END} lines.
 */
export const spliceShapes = (doc: string): string => {
  const b = doc.indexOf(BEGIN)
  const e = doc.indexOf(END)
  if (b === -1 || e < b) throw new Error(`the document has no "${BEGIN}" ... "${END}" part`)
  return doc.slice(0, b) + renderShapes() + doc.slice(e + END.length)
}
