import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import {
  DEFAULT_UNPRIVILEGED_MAP,
  formatIdMapEntry,
  idMapOfConfig,
  mapToCt,
  mapToHost,
  parseIdMapArgs,
  parseIdMapEntry,
  procIdMap,
  rootUid,
  validateIdMap,
} from '../../src/api/idmap-parse.ts'
import type { IdMapEntry } from '../../src/api/idmap.ts'

const usage = (re: RegExp) => (e: unknown) =>
  e instanceof Error && (e as { code?: string }).code === 'USAGE' && re.test(e.message)

const entry = fc.record({
  type: fc.constantFrom('u' as const, 'g' as const),
  ct: fc.nat(2 ** 31),
  host: fc.nat(2 ** 31),
  count: fc.integer({ min: 1, max: 2 ** 20 }),
})

describe('api/idmap-parse', () => {
  it('both spellings of an entry parse alike and round-trip', () => {
    fc.assert(
      fc.property(entry, (e) => {
        const text = formatIdMapEntry(e)
        assert.deepEqual(parseIdMapEntry(text), { ...e })
        assert.deepEqual(parseIdMapEntry(text.replaceAll(' ', ':')), { ...e })
      }),
    )
  })

  it('refuses malformed entries, count 0 and ids beyond 32 bits', () => {
    for (const bad of ['x:0:1:1', 'u:0:1', 'u:-1:1:1', 'u:0:1:1:1', 'u 0 1 1x']) {
      assert.throws(() => parseIdMapEntry(bad), usage(/invalid id map entry/), bad)
    }
    assert.throws(() => parseIdMapEntry('u:0:1:0'), usage(/count 0/))
    assert.throws(() => parseIdMapEntry('u:0:4294967295:1'), usage(/beyond/))
    assert.throws(() => parseIdMapEntry('u:4294967000:0:1000'), usage(/beyond/))
  })

  it('needs both u and g entries', () => {
    assert.throws(() => parseIdMapArgs(['u:0:100000:65536']), usage(/no 'g' entry/))
    assert.throws(() => parseIdMapArgs(['g:0:100000:65536']), usage(/no 'u' entry/))
  })

  it('refuses overlaps on either side with pve-container wording', () => {
    assert.throws(
      () => parseIdMapArgs(['u:0:100000:1000', 'u:999:300000:10', 'g:0:100000:65536']),
      usage(
        /invalid map entry 'u 999 300000 10': container uid 999 is also mapped by entry 'u 0 100000 1000'/,
      ),
    )
    assert.throws(
      () => parseIdMapArgs(['u:0:100000:1000', 'u:1000:100500:10', 'g:0:100000:65536']),
      usage(/host uid 100500 is also mapped/),
    )
    // Types are separate: a u and a g range may cover the same ids.
    assert.equal(parseIdMapArgs(['u:0:100000:65536', 'g:0:100000:65536']).length, 2)
  })

  it('a map is accepted iff no two same-type ranges intersect on a side', () => {
    fc.assert(
      fc.property(fc.array(entry, { minLength: 0, maxLength: 5 }), (es) => {
        const all: IdMapEntry[] = [
          ...es,
          { type: 'u', ct: 2 ** 32 - 100, host: 2 ** 32 - 100, count: 1 },
        ]
        all.push({ type: 'g', ct: 2 ** 32 - 100, host: 2 ** 32 - 100, count: 1 })
        const overlap = all.some((a, i) =>
          all.some(
            (b, j) =>
              i < j &&
              a.type === b.type &&
              ((a.ct < b.ct + b.count && b.ct < a.ct + a.count) ||
                (a.host < b.host + b.count && b.host < a.host + a.count)),
          ),
        )
        let ok = true
        try {
          validateIdMap(all)
        } catch {
          ok = false
        }
        assert.equal(ok, !overlap)
      }),
    )
  })

  it('mapToHost and mapToCt are inverse inside the map', () => {
    fc.assert(
      fc.property(fc.nat(65535), (id) => {
        const host = mapToHost(DEFAULT_UNPRIVILEGED_MAP, 'u', id)
        assert.equal(host, id + 100000)
        assert.equal(mapToCt(DEFAULT_UNPRIVILEGED_MAP, 'u', id + 100000), id)
      }),
    )
    assert.equal(mapToHost(DEFAULT_UNPRIVILEGED_MAP, 'g', 65536), undefined)
    assert.equal(mapToCt(DEFAULT_UNPRIVILEGED_MAP, 'u', 0), undefined)
    assert.equal(rootUid(DEFAULT_UNPRIVILEGED_MAP), 100000)
    assert.equal(procIdMap(DEFAULT_UNPRIVILEGED_MAP, 'g'), '0 100000 65536\n')
  })

  it('container configs: lxc.idmap lines, else unprivileged implies the default map', () => {
    const conf = [
      'arch: amd64',
      'unprivileged: 1',
      'lxc.idmap: u 0 200000 1000',
      'lxc.idmap: g 0 200000 1000',
      'lxc.idmap: u 1000 1000 1',
      '',
      '[snap1]',
      'lxc.idmap: g 5 5 5',
    ].join('\n')
    assert.deepEqual(idMapOfConfig(conf), [
      { type: 'u', ct: 0, host: 200000, count: 1000 },
      { type: 'g', ct: 0, host: 200000, count: 1000 },
      { type: 'u', ct: 1000, host: 1000, count: 1 },
    ])
    assert.deepEqual(idMapOfConfig('unprivileged: 1\n'), DEFAULT_UNPRIVILEGED_MAP)
    assert.equal(idMapOfConfig('unprivileged: 0\nhostname: x\n'), undefined)
    assert.equal(idMapOfConfig('hostname: x\n'), undefined)
    assert.throws(() => idMapOfConfig('lxc.idmap: u 0 1\n'), usage(/invalid id map entry/))
  })
})
