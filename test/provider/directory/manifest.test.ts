/**
 * The manifest is read from the store, which a hostile writer may have edited: every name in it
 * becomes part of a path, so each rule of `readManifest` is exercised here and must refuse with
 * its own message.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isBackupError } from '../../../src/errors.ts'
import { Dir } from '../../../src/io/beneath.ts'
import { parseVolname } from '../../../src/provider/directory/layout.ts'
import {
  MANIFEST_MAX_BYTES,
  readManifest,
  writeManifest,
} from '../../../src/provider/directory/manifest.ts'
import type { Manifest } from '../../../src/provider/directory/manifest.ts'

const REF = parseVolname('backup/100/qemu-2026-01-02T03:04:05Z')
const PARENT = 'backup/100/qemu-2026-01-01T00:00:00Z'

const valid = (): Manifest => ({
  version: 1,
  vmid: 100,
  type: 'qemu',
  ctime: REF.ctime,
  archiveName: REF.archiveName,
  completed: '2026-01-02T03:05:00Z',
  files: { 'drive-scsi0.qcow2': 4096, 'guest.conf': 10 },
  parent: PARENT,
  disks: {
    'drive-scsi0': {
      file: 'drive-scsi0.qcow2',
      format: 'qcow2',
      size: 1048576,
      parent: PARENT,
      bitmapMode: 'new',
      dataBytes: 0,
      zeroBytes: 0,
    },
  },
  firewall: false,
  warnings: [],
})

describe('provider/directory/manifest: what a manifest may name', () => {
  let base: string
  let n = 0
  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'gb-manifest-'))
  })
  after(async () => {
    await rm(base, { recursive: true, force: true })
  })

  /** Write `text` as the manifest of a fresh backup directory and read it back against REF. */
  const read = async (text: string, ref = REF): Promise<Manifest> => {
    const path = join(base, String(n++))
    await mkdir(path)
    await writeFile(join(path, 'manifest.json'), text)
    await using dir = await Dir.open(path)
    return await readManifest(dir, ref)
  }
  const edited = (edit: (m: Record<string, unknown> & Manifest) => void): string => {
    const m = valid() as Record<string, unknown> & Manifest
    edit(m)
    return JSON.stringify(m)
  }
  const refused = async (text: string, why: RegExp): Promise<void> => {
    await assert.rejects(read(text), (e: unknown) => {
      assert.ok(isBackupError(e, 'ARCHIVE_INVALID'), String(e))
      assert.match(e.message, why)
      return true
    })
  }
  const disk0 = (m: Manifest) => {
    const d = m.disks?.['drive-scsi0']
    assert.ok(d !== undefined)
    return d
  }

  it('reads back what writeManifest wrote', async () => {
    const path = join(base, 'roundtrip')
    await mkdir(path)
    await using dir = await Dir.open(path)
    await writeManifest(dir, valid())
    assert.deepEqual(await readManifest(dir, REF), valid())
  })

  it('refuses a missing, oversized or non-JSON manifest', async () => {
    const path = join(base, 'empty')
    await mkdir(path)
    await using dir = await Dir.open(path)
    await assert.rejects(
      readManifest(dir, REF),
      (e: unknown) =>
        isBackupError(e, 'ARCHIVE_INVALID') && e.message.includes('no readable manifest'),
    )
    await refused(' '.repeat(MANIFEST_MAX_BYTES + 1), /no readable manifest/)
    await refused('{', /is not JSON/)
  })

  it('refuses unknown fields and names that are not plain', async () => {
    await refused(
      edited((m) => (m['extra'] = 1)),
      /is invalid/,
    )
    await refused(
      edited((m) => (m.files = { '../escape': 1 })),
      /is invalid/,
    )
    await refused(
      edited((m) => (m.files = { '.hidden': 1 })),
      /is invalid/,
    )
    await refused(
      edited((m) => (m.parent = '../../etc')),
      /is invalid/,
    )
    await refused(
      edited((m) => {
        const d = disk0(m)
        m.disks = { '../x': d }
      }),
      /is invalid/,
    )
    await refused(
      edited((m) => (disk0(m).format = 'raw' as 'qcow2')),
      /is invalid/,
    )
  })

  it('refuses a version 2 manifest without the digests it must record', async () => {
    const hex = 'a'.repeat(64)
    const v2 = (m: Record<string, unknown> & Manifest): void => {
      m.version = 2
      m.digests = { 'guest.conf': hex, 'drive-scsi0.blocks': hex }
      disk0(m).digest = {
        algorithm: 'sha256',
        blockSize: 4194304,
        blocks: 'drive-scsi0.blocks',
        content: hex,
        metadata: hex,
      }
    }
    assert.equal((await read(edited(v2))).version, 2)
    await refused(
      edited((m) => {
        v2(m)
        delete m.digests
      }),
      /records no digests$/,
    )
    await refused(
      edited((m) => {
        v2(m)
        delete disk0(m).digest
      }),
      /records no digest of drive-scsi0$/,
    )
    await refused(
      edited((m) => {
        v2(m)
        const d = disk0(m).digest
        if (d !== undefined) d.blocks = 'drive-scsi1.blocks'
      }),
      /names digest file drive-scsi1\.blocks$/,
    )
    // A digest is exactly 64 lower-case hex digits.
    await refused(
      edited((m) => {
        v2(m)
        m.digests = { 'guest.conf': `x${hex}` }
      }),
      /is invalid/,
    )
    const ct = (m: Record<string, unknown> & Manifest): void => {
      v2(m)
      m.type = 'lxc'
      m.archiveName = REF.archiveName.replace('qemu', 'lxc')
      delete m.disks
      delete m.parent
      m.container = { file: 'archive.tar', format: 'tar', excludes: [] }
    }
    const ctRef = parseVolname(REF.volname.replace('qemu', 'lxc'))
    const ctRefused = async (text: string, why: RegExp): Promise<void> => {
      await assert.rejects(read(text, ctRef), (e: unknown) => {
        assert.ok(isBackupError(e, 'ARCHIVE_INVALID'), String(e))
        assert.match(e.message, why)
        return true
      })
    }
    await ctRefused(edited(ct), /records no digest of the archive$/)
    await ctRefused(
      edited((m) => {
        ct(m)
        if (m.container) m.container.digest = { algorithm: 'sha256', members: 'other.members' }
      }),
      /names member list other\.members$/,
    )
    const ok = edited((m) => {
      ct(m)
      if (m.container) m.container.digest = { algorithm: 'sha256', members: 'archive.members' }
    })
    assert.equal((await read(ok, ctRef)).container?.digest?.members, 'archive.members')
  })

  it('refuses a manifest that describes another backup', async () => {
    await refused(
      edited((m) => (m.vmid = 101)),
      /names another backup/,
    )
    await refused(
      edited((m) => (m.type = 'lxc')),
      /names another backup/,
    )
    await refused(
      edited((m) => (m.archiveName = '100/qemu-2026-01-02T03:04:06Z')),
      /names another backup/,
    )
  })

  it('refuses a parent of another guest or type, or not older', async () => {
    for (const parent of [
      'backup/101/qemu-2026-01-01T00:00:00Z',
      'backup/100/lxc-2026-01-01T00:00:00Z',
      REF.volname,
      'backup/100/qemu-2026-01-03T00:00:00Z',
    ]) {
      await refused(
        edited((m) => (m.parent = parent)),
        /names a foreign parent/,
      )
      await refused(
        edited((m) => (disk0(m).parent = parent)),
        /names a foreign parent/,
      )
    }
  })

  it("refuses a disk whose file is not the device's image", async () => {
    await refused(
      edited((m) => (disk0(m).file = 'guest.conf')),
      /names file guest\.conf for drive-scsi0/,
    )
  })
})
