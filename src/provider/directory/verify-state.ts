/**
 * The last verification of a backup, kept beside it as `<type>-<time>.verify` (like Proxmox's
 * `.notes` and `.protected` attributes: the backup directory itself never changes once
 * committed). A record that is unreadable or not ours counts as never verified.
 */
import * as z from 'zod'
import type { Verification } from '../../api/storage.ts'
import { isBackupError } from '../../errors.ts'
import type { Dir } from '../../io/beneath.ts'
import type { StoreLayout, VolumeRef } from './layout.ts'

const VerificationSchema = z.strictObject({
  state: z.enum(['ok', 'failed']),
  time: z.string().max(64),
  detail: z.string().max(4096).optional(),
})

/** The recorded verification of `ref`, if any. */
export const readVerification = async (
  layout: StoreLayout,
  guest: Dir,
  ref: VolumeRef,
): Promise<Verification | undefined> => {
  try {
    const text = await guest.tryReadFile(layout.verifyName(ref), 64 * 1024)
    if (text === undefined) return undefined
    const r = VerificationSchema.safeParse(JSON.parse(text))
    return r.success ? stripUndefined(r.data) : undefined
  } catch (e) {
    if (e instanceof SyntaxError || isBackupError(e, 'UNSAFE_PATH')) return undefined
    throw e
  }
}

/** Record the verification of `ref` (atomically). */
export const writeVerification = async (
  layout: StoreLayout,
  guest: Dir,
  ref: VolumeRef,
  v: Verification,
): Promise<void> => {
  await guest.writeFileAtomic(layout.verifyName(ref), `${JSON.stringify(v)}\n`)
}

const stripUndefined = (v: z.infer<typeof VerificationSchema>): Verification =>
  v.detail === undefined ? { state: v.state, time: v.time } : { ...v, detail: v.detail }
