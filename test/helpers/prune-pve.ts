/**
 * Fixtures of the port of pve-storage src/test/prune_backups_test.pm (see
 * test/storage/prune-pve.test.ts): the mocked list_volumes backup lists and the expected-marks
 * generators of the Perl test.
 */
import assert from 'node:assert/strict'
import type {
  PlannedPruneMark,
  PruneGuestEntry,
  PruneMarkKind,
  PruneSubtype,
} from '../../src/storage/prune.ts'
import { byVolid, DAY, HOUR } from './prune.ts'

const STORE = 'BackTest123'
export const VMIDS = [1234, 9001]
export const BASE = 1577881101 // 2020_01_01-12_18_21 UTC

export interface ListEntry {
  volid: string
  ctime: number
  vmid: number
  subtype: PruneSubtype
  protected?: true
}

const defaultEntries = (vmid: number): ListEntry[] => [
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2018_05_26-11_18_21.tar.zst`,
    ctime: BASE - 585 * DAY - HOUR,
    vmid,
    subtype: 'qemu',
  },
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2019_12_31-11_18_21.tar.zst`,
    ctime: BASE - DAY - HOUR,
    vmid,
    subtype: 'qemu',
  },
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2019_12_31-11_18_51.tar.zst`,
    ctime: BASE - DAY - HOUR + 30,
    vmid,
    subtype: 'qemu',
    protected: true,
  },
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2019_12_31-11_19_21.tar.zst`,
    ctime: BASE - DAY - HOUR + 60,
    vmid,
    subtype: 'qemu',
  },
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2020_01_01-11_18_21.tar.zst`,
    ctime: BASE - HOUR,
    vmid,
    subtype: 'qemu',
  },
  {
    volid: `${STORE}:backup/vzdump-qemu-${vmid}-2020_01_01-12_18_21.tar.zst`,
    ctime: BASE,
    vmid,
    subtype: 'qemu',
  },
  {
    volid: `${STORE}:backup/vzdump-lxc-${vmid}-2020_01_01-12_18_21.tar.zst`,
    ctime: BASE,
    vmid,
    subtype: 'lxc',
  },
]

export const LISTS: Record<string, ListEntry[]> = {
  default: VMIDS.flatMap(defaultEntries),
  year1970: [
    {
      volid: `${STORE}:backup/vzdump-lxc-321-1970_01_01-00_01_23.tar.zst`,
      ctime: 83,
      vmid: 321,
      subtype: 'lxc',
    },
    {
      volid: `${STORE}:backup/vzdump-lxc-321-2070_01_01-00_01_00.tar.zst`,
      ctime: DAY * (365 * 100 + 25) + 60,
      vmid: 321,
      subtype: 'lxc',
    },
  ],
  threeway: [
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2019_12_25-12_18_21.tar.zst`,
      ctime: BASE - 7 * DAY,
      vmid: 7654,
      subtype: 'qemu',
    },
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2019_12_31-12_18_21.tar.zst`,
      ctime: BASE - DAY,
      vmid: 7654,
      subtype: 'qemu',
    },
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2020_01_01-12_18_21.tar.zst`,
      ctime: BASE,
      vmid: 7654,
      subtype: 'qemu',
    },
  ],
  weekboundary: [
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2020_12_03-12_18_21.tar.zst`,
      ctime: BASE + (366 - 31 + 2) * DAY,
      vmid: 7654,
      subtype: 'qemu',
    },
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2020_12_04-12_18_21.tar.zst`,
      ctime: BASE + (366 - 31 + 3) * DAY,
      vmid: 7654,
      subtype: 'qemu',
    },
    {
      volid: `${STORE}:backup/vzdump-qemu-7654-2020_12_07-12_18_21.tar.zst`,
      ctime: BASE + (366 - 31 + 6) * DAY,
      vmid: 7654,
      subtype: 'qemu',
    },
  ],
}

export const toGuestEntries = (list: readonly ListEntry[]): PruneGuestEntry[] =>
  list.map((e) => ({
    volid: e.volid,
    ctime: e.ctime,
    vmid: e.vmid,
    subtype: e.subtype,
    protected: e.protected === true,
  }))

type M = PruneMarkKind | ''

/**
 * generate_expected of the Perl test: marks for the five unprotected qemu backups (oldest first)
 * and the lxc backup of each vmid; the protected qemu backup is always 'protected'.
 */
export const generateExpected = (
  vmids: readonly number[],
  type: PruneSubtype | undefined,
  marks: readonly [M, M, M, M, M, M],
): PlannedPruneMark[] => {
  const out: PlannedPruneMark[] = []
  for (const vmid of vmids) {
    const entries = defaultEntries(vmid)
    const qemuMarks = [marks[0], marks[1], 'protected', marks[2], marks[3], marks[4]] as const
    entries.forEach((e, i) => {
      if (e.subtype === 'qemu' && type !== 'lxc') {
        out.push({
          volid: e.volid,
          ctime: e.ctime,
          vmid,
          subtype: 'qemu',
          mark: qemuMarks[i] as PruneMarkKind,
        })
      }
      if (e.subtype === 'lxc' && type !== 'qemu') {
        out.push({
          volid: e.volid,
          ctime: e.ctime,
          vmid,
          subtype: 'lxc',
          mark: marks[5] as PruneMarkKind,
        })
      }
    })
  }
  return out.sort(byVolid)
}

export const explicit = (list: string, marks: readonly PruneMarkKind[]): PlannedPruneMark[] => {
  const entries = LISTS[list]!
  assert.equal(entries.length, marks.length)
  return entries.map((e, i) => ({
    volid: e.volid,
    ctime: e.ctime,
    vmid: e.vmid,
    subtype: e.subtype,
    mark: marks[i]!,
  }))
}
