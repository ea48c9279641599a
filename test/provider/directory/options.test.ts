import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { isBackupError } from '../../../src/errors.ts'
import { parseStoreOptions } from '../../../src/provider/directory/options.ts'
import { KEEP_ALL_CONFLICT_MESSAGE } from '../../../src/storage/prune-options.ts'

// One validator for prune-backups: the store file, `init` and the plugin options all go through
// parseStoreOptions, which accepts exactly what Proxmox's parser accepts.
describe('provider/directory/options: prune-backups', () => {
  const parse = (spec: string) => parseStoreOptions({ path: '/s', 'prune-backups': spec })

  it("accepts Proxmox's booleans and spellings", () => {
    for (const spec of ['keep-all=yes', 'keep-all=1', 'keep-last=3,keep-daily=7', 'keep-last=0']) {
      assert.equal(parse(spec)['prune-backups'], spec)
    }
  })

  it('refuses what Proxmox refuses, with its message', () => {
    assert.throws(
      () => parse('keep-all=1,keep-last=3'),
      (e: unknown) =>
        isBackupError(e, 'CONFIG_INVALID') && e.message.includes(KEEP_ALL_CONFLICT_MESSAGE),
    )
    for (const bad of ['keep-last=-1', 'keep-weird=1', 'keep-last=3,keep-last=4']) {
      assert.throws(
        () => parse(bad),
        (e: unknown) => isBackupError(e, 'CONFIG_INVALID'),
        bad,
      )
    }
  })
})
