/**
 * The job file's schema (docs/jobs.md): job options with the keys and meaning of vzdump's where
 * they exist (`bwlimit`, `lockwait` as `lock-wait`, `mode`, `notes-template`, `script`), and a
 * `[[guest]]` table per guest with the options of `guestbackup backup`. Values that are also
 * CLI options are checked by the CLI's own parsers (option-schemas.ts).
 */
import * as z from 'zod'
import {
  diskSchema,
  lockWaitSchema,
  pathSchema,
  rateSchema,
  vmidSchema,
} from '../option-schemas.ts'

/** A disk selected with `devices`: a Proxmox drive key, or `drive-<key>` as `--device` takes it. */
const deviceSchema = z
  .string()
  .regex(/^(?:drive-)?[a-z][a-z0-9]{0,31}$/, 'expected a drive key like scsi0 or drive-scsi0')

/**
 * vzdump's notes-template rules (PVE/VZDump.pm `$verify_notes_template`): one line, escapes
 * `\n` and `\\` only, variables `{{cluster}}`, `{{guestname}}`, `{{node}}`, `{{vmid}}`.
 */
export const notesTemplateSchema = z.string().superRefine((t, ctx) => {
  if (t.includes('\n')) ctx.addIssue({ code: 'custom', message: 'contains a line feed' })
  const bad: string[] = []
  for (const m of t.matchAll(/\\(.)/g)) {
    if (!/^[n\\]$/.test(m[1] ?? ''))
      bad.push(`escape sequence '\\${m[1] ?? ''}' at char ${m.index}`)
  }
  for (const m of t.matchAll(/\{\{([^\s{}]+)\}\}/g)) {
    const v = m[1] ?? ''
    // vzdump's position is `pos() - length($var)`: the match's end less the name, kept as is.
    if (!/^(cluster|guestname|node|vmid)$/.test(v)) {
      bad.push(`variable '${v}' at char ${m.index + 4}`)
    }
  }
  if (bad.length > 0) ctx.addIssue({ code: 'custom', message: `found unknown: ${bad.join(', ')}` })
})

/** One `[[guest]]`: a running VM (`qmp`), a stopped VM (`disks`) or a container (`rootfs`). */
export const jobGuestSchema = z
  .strictObject({
    vmid: vmidSchema,
    config: pathSchema,
    'firewall-config': pathSchema.optional(),
    qmp: pathSchema.optional(),
    qga: pathSchema.optional(),
    devices: z.array(deviceSchema).min(1, 'expected at least one device').optional(),
    'fleecing-dir': pathSchema.optional(),
    disks: z.array(diskSchema).min(1, 'expected at least one disk').optional(),
    rootfs: pathSchema.optional(),
    exclude: z.array(z.string().min(1, 'expected a pattern')).optional(),
    'allow-host-root': z.boolean().optional(),
  })
  .superRefine((g, ctx) => {
    const kinds = (['disks', 'qmp', 'rootfs'] as const).filter((k) => g[k] !== undefined)
    if (kinds.length !== 1) {
      ctx.addIssue({
        code: 'custom',
        message:
          kinds.length === 0
            ? 'give one of disks (stopped VM), qmp (running VM), rootfs (container)'
            : `give only one of ${kinds.join(', ')}`,
      })
    }
    const only = (keys: readonly (keyof typeof g)[], owner: 'qmp' | 'rootfs'): void => {
      if (g[owner] !== undefined) return
      for (const k of keys) {
        if (g[k] !== undefined) {
          ctx.addIssue({ code: 'custom', path: [k], message: `applies with ${owner} only` })
        }
      }
    }
    only(['qga', 'devices', 'fleecing-dir'], 'qmp')
    only(['exclude', 'allow-host-root'], 'rootfs')
  })

/** A guest of a job file as parsed. */
export type JobGuestSpec = z.output<typeof jobGuestSchema>

/** A whole job file. */
export const jobFileSchema = z.strictObject({
  store: pathSchema,
  bwlimit: rateSchema.optional(),
  'lock-wait': lockWaitSchema.optional(),
  mode: z.enum(['snapshot', 'suspend', 'stop']).optional(),
  'notes-template': notesTemplateSchema.optional(),
  script: pathSchema.optional(),
  guest: z.array(jobGuestSchema, { error: 'expected [[guest]] tables' }).min(1, 'no [[guest]]'),
})

/** A problem found across tables, with its path in the file. */
export interface JobIssue {
  path: (string | number)[]
  message: string
}

/**
 * Rules across the guests, checked on the file's raw data so that they are reported along with
 * every other problem (zod skips an object's refinements once one of its fields failed).
 */
export const jobCrossIssues = (raw: unknown): JobIssue[] => {
  const issues: JobIssue[] = []
  const job = (typeof raw === 'object' && raw !== null ? raw : {}) as Record<string, unknown>
  const guests = Array.isArray(job['guest']) ? (job['guest'] as unknown[]) : []
  const table = (g: unknown): Record<string, unknown> =>
    typeof g === 'object' && g !== null ? (g as Record<string, unknown>) : {}
  const seen = new Map<unknown, number>()
  guests.forEach((g, i) => {
    const { vmid } = table(g)
    if (typeof vmid !== 'number' && typeof vmid !== 'string') return
    const key = String(vmid)
    const first = seen.get(key)
    if (first === undefined) seen.set(key, i)
    else
      issues.push({
        path: ['guest', i, 'vmid'],
        message: `vmid ${key} is already guest[${first}]'s`,
      })
  })
  // guestbackup can neither stop nor suspend a VM it did not start (no Proxmox to restart it).
  const { mode } = job
  if (
    (mode === 'stop' || mode === 'suspend') &&
    guests.some((g) => table(g)['qmp'] !== undefined)
  ) {
    issues.push({
      path: ['mode'],
      message: `mode ${mode} is not supported for running VMs (qmp): use snapshot`,
    })
  }
  return issues
}

/** A job file as parsed. */
export type JobFile = z.output<typeof jobFileSchema>
