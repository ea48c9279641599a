import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { link, mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createTarArchive, estimateTarBytes } from '../../src/archive/index.ts'

const MiB = 1024 * 1024

describe('archive: estimate of the tar stream (progress total of a container backup)', () => {
  let dir: string
  const tree = (): string => join(dir, 'root')
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gb-tree-size-'))
    await mkdir(join(tree(), 'etc', 'sub'), { recursive: true })
    await writeFile(join(tree(), 'etc', 'a'), Buffer.alloc(3 * MiB + 100, 1))
    await writeFile(join(tree(), 'etc', 'sub', 'b'), 'short\n')
    await writeFile(join(tree(), 'empty'), '')
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  /** The bytes of the uncompressed stream `createTarArchive` (GNU tar) writes for the tree. */
  const tarBytes = async (name: string, excludes: string[] = []): Promise<number> => {
    const r = await createTarArchive({
      directory: tree(),
      excludes,
      output: join(dir, `${name}.tar`),
    })
    return r.tarBytes
  }

  it("equals GNU tar's stream for plain files and directories", async () => {
    assert.equal(await estimateTarBytes({ directory: tree() }), await tarBytes('plain'))
  })

  it('counts a hard-linked file once, as tar stores further links as link entries', async () => {
    await link(join(tree(), 'etc', 'a'), join(tree(), 'a-link'))
    try {
      const est = await estimateTarBytes({ directory: tree() })
      assert.equal(est, await tarBytes('linked'))
    } finally {
      await rm(join(tree(), 'a-link'))
    }
  })

  it('leaves out lost+found and literal excludes, anchored or by name', async () => {
    const plain = await estimateTarBytes({ directory: tree() })
    await mkdir(join(tree(), 'lost+found'))
    await mkdir(join(tree(), 'var', 'cache'), { recursive: true })
    await writeFile(join(tree(), 'var', 'cache', 'big'), Buffer.alloc(2 * MiB, 2))
    try {
      const est = await estimateTarBytes({ directory: tree(), excludes: ['/var/cache'] })
      assert.equal(est, await tarBytes('excluded', ['/var/cache']))
      // Only the directory var/ was added: the 2 MiB below the excluded one are not counted.
      assert.ok(est - plain < 64 * 1024, `${est} vs ${plain}`)
      assert.equal(await estimateTarBytes({ directory: tree(), excludes: ['cache'] }), est)
    } finally {
      await rm(join(tree(), 'lost+found'), { recursive: true })
      await rm(join(tree(), 'var'), { recursive: true })
    }
  })

  it("counts a sparse file's allocated bytes only (tar --sparse stores its data)", async () => {
    await truncate(join(tree(), 'empty'), 512 * MiB)
    try {
      const est = await estimateTarBytes({ directory: tree() })
      assert.ok(est < 8 * MiB, `a 512 MiB hole estimated as ${est} bytes`)
    } finally {
      await truncate(join(tree(), 'empty'), 0)
    }
  })
})
