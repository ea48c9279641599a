/**
 * One call of the Proxmox VE plugin (docs/pve-protocol.md): a decoded request is dispatched to
 * the directory store (storage methods) or to a directory provider resumed from the request's
 * session (provider methods). Stateless between calls: a provider call ends by suspending the
 * provider (its guest locks released, nothing in progress discarded) and returns its state as
 * the reply's `session`.
 */
import type { ProviderLogFunction, ProviderLogLevel } from '../api/provider.ts'
import { BackupError, toBackupError } from '../errors.ts'
import type { DirectoryProvider } from '../provider/directory/provider.ts'
import type { DirectoryStorage } from '../provider/directory/storage.ts'
import { scfgPath, storageFromScfg } from './args.ts'
import type { FinalReply, JsonValue, PveRequest } from './protocol.ts'
import { PROVIDER_METHODS } from './provider-calls.ts'
import { STORAGE_METHODS } from './storage-calls.ts'

/** Where a call's log lines go, as they happen. */
export interface ReplySink {
  /** One log line (`{"log":…}`); a multi-line message is split into lines. */
  log(level: ProviderLogLevel, message: string): void
}

/**
 * How long a call waits for a guest lock another process holds, ms. vzdump already holds its
 * own per-guest lock (`/var/lock/qemu-server/lock-<vmid>.conf`, on this node) around a
 * backup, so what a call can meet here is a prune, remove or backup from another node (or a
 * CLI run) on the same shared store: a provider call (no overall timeout) waits 10 min, long
 * enough for a merge of another node's prune; a storage call waits 60 s, half the plugin's
 * 120 s timeout for storage methods (docs/pve-protocol.md), so it answers `LOCKED` naming the
 * holder instead of being cut off, with time left for its own work.
 */
export const PVE_LOCK_WAIT_MS = { provider: 10 * 60_000, storage: 60_000 } as const

/** Prefix of an internal error's message, as the CLI prints it. */
export const INTERNAL_PREFIX = 'internal error (a bug in guestbackup): '

/** Every method the service knows, storage methods first. */
export const METHODS: readonly string[] = [
  ...Object.keys(STORAGE_METHODS),
  ...Object.keys(PROVIDER_METHODS),
]

/** The final reply for a thrown error: our code and a one-line message. */
export const errorReply = (e: unknown): FinalReply => {
  const err = toBackupError(e, 'INTERNAL')
  const prefix = err.code === 'INTERNAL' ? INTERNAL_PREFIX : ''
  return { kind: 'error', code: err.code, message: `${prefix}${err.message}` }
}

const lineLog =
  (sink: ReplySink): ProviderLogFunction =>
  (level, message) => {
    for (const l of message.split(/\r?\n/)) if (l !== '') sink.log(level, l)
  }

/**
 * Serve one call. Never throws: a failure is an error reply (`PVE_METHOD` for an unknown
 * method, `PVE_ARGS` for arguments that do not fit, `SESSION_INVALID` for a forged session,
 * `CONFIG_INVALID` for a bad `scfg`, otherwise the failure's own code; anything that is not a
 * {@link BackupError} is `INTERNAL`).
 */
export const serveCall = async (
  request: PveRequest,
  sink: ReplySink,
  signal: AbortSignal,
): Promise<FinalReply> => {
  const log = lineLog(sink)
  try {
    // Own properties only: `constructor` is a method name by its syntax.
    const { method } = request
    const storageMethod = Object.hasOwn(STORAGE_METHODS, method)
      ? STORAGE_METHODS[method]
      : undefined
    const providerMethod = Object.hasOwn(PROVIDER_METHODS, method)
      ? PROVIDER_METHODS[method]
      : undefined
    if (storageMethod === undefined && providerMethod === undefined) {
      throw new BackupError('PVE_METHOD', `unknown method '${method}'`)
    }
    const { storeid } = request
    let built: DirectoryStorage | undefined
    const storage = (): DirectoryStorage => {
      if (storeid === null) throw new BackupError('PVE_ARGS', `${method} needs a storage id`)
      built ??= storageFromScfg(storeid, request.scfg, {
        waitMs: PVE_LOCK_WAIT_MS[storageMethod === undefined ? 'provider' : 'storage'],
        signal,
        log: (m) => {
          log('info', m)
        },
      })
      return built
    }
    if (storageMethod !== undefined) {
      const call = { storage, storeid, path: scfgPath(request.scfg), log, args: request.args }
      return { kind: 'result', result: await storageMethod(call) }
    }
    if (providerMethod === undefined) throw new BackupError('INTERNAL', 'no method')
    const provider: DirectoryProvider = await storage().resumeBackupProvider(
      log,
      request.session ?? null,
    )
    let result: JsonValue
    try {
      result = await providerMethod({
        provider,
        log,
        args: request.args,
        signal,
        storeid: storeid ?? '',
        scfg: request.scfg,
      })
    } catch (e) {
      await provider.suspend()
      throw e
    }
    // Through JSON: optional keys left undefined are dropped, as on the wire.
    const session = JSON.parse(JSON.stringify(await provider.suspend())) as JsonValue
    return { kind: 'result', result, session }
  } catch (e) {
    return errorReply(e)
  }
}
