/**
 * Reading a job file: TOML (smol-toml), then the schema of schema.ts. Every problem is one line
 * `FILE:LINE:COLUMN: reason` for the syntax, `FILE: path.in.file: reason` for the content, with
 * array indexes from 0 (`guest[1].disks[0]` is the first disk of the second `[[guest]]`).
 */
import { dirname, resolve } from 'node:path'
import { TomlError, parse } from 'smol-toml'
import type * as z from 'zod'
import { BackupError } from '../../errors.ts'
import { readInputFile } from '../../io/beneath.ts'
import { jobCrossIssues, jobFileSchema } from './schema.ts'
import type { JobFile } from './schema.ts'

/** Job files are small: a few hundred guests at most. */
export const JOB_FILE_MAX_BYTES = 1024 * 1024

/** `guest[1].disks[0]` of a zod path; `(file)` for the top level. */
export const formatPath = (path: readonly PropertyKey[]): string => {
  let out = ''
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`
    else out += `${out === '' ? '' : '.'}${String(p)}`
  }
  return out === '' ? '(file)' : out
}

/** One line per issue: the path in the file, then the reason. */
const issueLines = (file: string, issues: readonly z.core.$ZodIssue[]): string[] =>
  issues.flatMap((i) =>
    // An unknown key's issue sits on its table: name each key itself.
    i.code === 'unrecognized_keys'
      ? i.keys.map((k) => `${file}: ${formatPath([...i.path, k])}: unknown key`)
      : [`${file}: ${formatPath(i.path)}: ${i.message}`],
  )

/** The result of {@link parseJobText}: the job, or its error lines. */
export type ParsedJob = { ok: true; job: JobFile } | { ok: false; errors: string[] }

/** Parse and validate a job file's text; `file` names it in the error lines. */
export const parseJobText = (file: string, text: string): ParsedJob => {
  let data: unknown
  try {
    data = parse(text)
  } catch (e) {
    if (!(e instanceof TomlError)) throw e
    // smol-toml's message is "Invalid TOML document: REASON" and a code excerpt after a blank line.
    const reason = (e.message.split('\n')[0] ?? '').replace(/^Invalid TOML document: /, '')
    return { ok: false, errors: [`${file}:${e.line}:${e.column}: ${reason}`] }
  }
  const r = jobFileSchema.safeParse(data)
  const errors = [
    ...(r.success ? [] : issueLines(file, r.error.issues)),
    ...jobCrossIssues(data).map((i) => `${file}: ${formatPath(i.path)}: ${i.message}`),
  ]
  if (!r.success || errors.length > 0) return { ok: false, errors }
  return { ok: true, job: r.data }
}

/** Read and validate a job file; its error lines, or the job. */
export const readJobFile = async (file: string): Promise<ParsedJob> =>
  parseJobText(file, await readInputFile(file, 'job file', JOB_FILE_MAX_BYTES))

/** Read a job file that must be valid: one `CONFIG_INVALID` error with every line otherwise. */
export const loadJobFile = async (file: string): Promise<JobFile> => {
  const r = await readJobFile(file)
  if (!r.ok) {
    throw new BackupError('CONFIG_INVALID', `invalid job file:\n${r.errors.join('\n')}`, {
      details: { errors: r.errors },
    })
  }
  return r.job
}

/** A path of the job file, relative ones taken from the file's directory. */
export const jobPath = (file: string, p: string): string => resolve(dirname(file), p)
