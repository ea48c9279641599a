import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isBackupError } from '../../../src/errors.ts'
import { parseStoreOptions } from '../../../src/provider/directory/options.ts'
import { initStore } from '../../../src/provider/directory/store.ts'
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

// New stores compress VM images; a store whose file predates the option (and a Proxmox storage
// without gb-vm-compress, which passes no value) reads as `none`, so nothing changes under it.
describe('provider/directory/options: vm-compress', () => {
  it('is zstd for a new store, none where the file does not name it, and init changes it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'gb-options-'))
    try {
      const store = join(dir, 's')
      assert.equal((await initStore(store, {})).options['vm-compress'], 'zstd')
      assert.equal(
        (await initStore(store, { 'vm-compress': 'none' })).options['vm-compress'],
        'none',
      )
      // Re-running init keeps what the file says.
      assert.equal((await initStore(store, {})).options['vm-compress'], 'none')
      // A store file written before the option existed.
      const file = join(store, 'guestbackup-store.json')
      const old = JSON.parse(await readFile(file, 'utf8')) as { options: Record<string, unknown> }
      delete old.options['vm-compress']
      await writeFile(file, JSON.stringify(old))
      assert.equal((await initStore(store, {})).options['vm-compress'], 'none')
      assert.equal(parseStoreOptions({ path: '/s' })['vm-compress'], 'none')
      assert.throws(
        () => parseStoreOptions({ path: '/s', 'vm-compress': 'gzip' }),
        (e: unknown) => isBackupError(e, 'CONFIG_INVALID') && e.message.includes('vm-compress'),
      )
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
