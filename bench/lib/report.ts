/** The Markdown report: header with the machine, one table, notes. */
import { format, resolveConfig } from 'prettier'
import type { ScenarioResult, VariantResult } from './harness.ts'
import type { MachineInfo } from './machine.ts'
import { hasGnuTime } from './procs.ts'
import { fmtSummary, mbps, summarize } from './stats.ts'

const cell = (s: string): string => s.replaceAll('|', '\\|')

const ratioCell = (ours: VariantResult | undefined, v: VariantResult): string => {
  if (v.role !== 'reference' || ours === undefined || ours.seconds.length === 0) return '—'
  const r = summarize(ours.seconds).median / summarize(v.seconds).median
  return r.toFixed(2)
}

const mib = (kib: number): string => `${Math.round(kib / 1024)} MiB`

/** Peak RSS of each process name (largest first), else GNU time's figure for the whole call. */
const rssCell = (v: VariantResult): string => {
  const byName = [...v.rssByName].filter(([, kib]) => kib >= 1024).sort((a, b) => b[1] - a[1])
  if (byName.length > 0) return byName.map(([name, kib]) => `${name} ${mib(kib)}`).join(' · ')
  return v.rssKiB.length === 0 ? '—' : mib(Math.max(...v.rssKiB))
}

/** Median CPU seconds, and per GiB of data when the row copies data. */
const cpuCell = (v: VariantResult, bytes: number): string => {
  if (v.cpuSec.length === 0) return '—'
  const med = summarize(v.cpuSec).median
  const perGiB =
    bytes > 0 && v.role !== 'info' ? ` (${(med / (bytes / 1024 ** 3)).toFixed(2)}/GiB)` : ''
  return `${med.toFixed(2)}${perGiB}`
}

const cpuRatioCell = (ours: VariantResult | undefined, v: VariantResult): string => {
  if (v.role !== 'reference' || ours === undefined) return '—'
  if (ours.cpuSec.length === 0 || v.cpuSec.length === 0) return '—'
  const theirs = summarize(v.cpuSec).median
  return theirs <= 0 ? '—' : (summarize(ours.cpuSec).median / theirs).toFixed(2)
}

/** The table alone. */
export const renderTable = (results: readonly ScenarioResult[], runs: number): string => {
  const lines = [
    `| scenario | tool | median s (min–max, ${runs} runs) | MB/s of data | ours ÷ tool | CPU s (per GiB) | CPU ours ÷ tool | peak RSS |`,
    '|---|---|---|---:|---:|---:|---:|---|',
  ]
  for (const s of results) {
    const ours = s.variants.find((v) => v.role === 'ours')
    for (const [i, v] of s.variants.entries()) {
      if (v.seconds.length === 0) continue
      const sum = summarize(v.seconds)
      const bytes = v.dataBytes ?? s.dataBytes
      const rate = bytes > 0 && v.role !== 'info' ? String(mbps(bytes, sum.median)) : '—'
      const group = i === 0 ? `**${s.title}**` : ''
      lines.push(
        `| ${group} | ${cell(v.label)} | ${fmtSummary(sum)} | ${rate} | ${ratioCell(ours, v)} | ${cpuCell(v, bytes)} | ${cpuRatioCell(ours, v)} | ${rssCell(v)} |`,
      )
    }
  }
  return lines.join('\n')
}

const loadRange = (load: readonly number[]): string => {
  if (load.length === 0) return 'not sampled'
  return `${Math.min(...load).toFixed(1)}–${Math.max(...load).toFixed(1)}`
}

/** Options shown in the report. */
export interface ReportOptions {
  runs: number
  scratchParent: string
  /** 1-minute load average when the measurements ended. */
  loadEnd: number
}

/** The whole report. */
export const renderReport = (
  m: MachineInfo,
  results: readonly ScenarioResult[],
  o: ReportOptions,
): string => {
  const rssNote =
    "peak RSS = the largest `VmHWM` (proc(5)) of each process name among the benchmark's " +
    'descendants, sampled every 100 ms during the runs: our Node process and every tool it ' +
    'starts, the reference tool and the servers working for it' +
    (hasGnuTime ? '' : ' (GNU time is not installed: short-lived tools may be missed)')
  return [
    '# guestbackup benchmark',
    '',
    `- Date: ${m.date}`,
    `- Machine: ${m.nproc} CPUs (nproc), ${m.cpuModel}, ${m.memory}, ${m.kernel}`,
    `- Scratch: ${m.scratchFs} (temp dir under ${o.scratchParent})`,
    `- guestbackup: git ${m.revision}`,
    `- Software: ${m.qemu}; ${m.libnbd}; ${m.node}`,
    `- Load average (1 min): ${m.loadStart.toFixed(1)} at start, ${o.loadEnd.toFixed(1)} at end` +
      ` (above ${m.nproc}: other processes competed for the CPUs; expect noisy numbers)`,
    `- Command: \`make bench\` (= \`npm run bench\`), ${o.runs} runs per tool, interleaved`,
    '',
    renderTable(results, o.runs),
    '',
    ...results.flatMap((s) => [
      `- **${s.title}**: ${s.description}; load average ${loadRange(s.load)} during its runs.`,
      ...s.variants.flatMap((v) =>
        v.durability === undefined ? [] : [`  - ${v.label} — durability: ${v.durability}.`],
      ),
    ]),
    '- Every timing is wall clock and **includes a final `sync`** (the output is on disk); ' +
      'before every run the source is read once (warm cache) and `sync` runs untimed.',
    '- Ours = the whole `bin/guestbackup backup` call: Node/tsx start, qemu-nbd start for source ' +
      'and target, NBD handshakes, copy, flush, store bookkeeping.',
    '- nbdcopy "servers already running" = nbdcopy alone, its best case (nbdcopy + sync; the ' +
      'target qemu-nbd is stopped untimed). "End to end" also times starting and stopping both ' +
      'qemu-nbd and creating the target image.',
    '- ours ÷ tool = median of ours / median of the tool: < 1 means guestbackup is faster. ' +
      'MB/s = 10^6 bytes of guest data per second (holes are not counted).',
    '- CPU s = user + system CPU seconds of every process that worked for the run (proc(5) ' +
      '`cutime`/`cstime` of the children the benchmark reaped, i.e. the timed tool with every ' +
      'process it waited for, plus `utime`/`stime` of servers kept running across runs); ' +
      'per GiB of guest data; CPU ours ÷ tool compares the medians.',
    `- ${rssNote}.`,
    '- Each output was checked identical to its source with `qemu-img compare` (untimed).',
    '',
    ...results.flatMap((s) =>
      s.details === undefined ? [] : [`## ${s.title}`, '', ...s.details, ''],
    ),
  ].join('\n')
}

/**
 * Format with the repository's prettier settings (aligned table columns), so that the committed
 * results file passes `prettier --check`. Returns the input unchanged if prettier fails.
 */
export const formatMarkdown = async (md: string, path: string): Promise<string> => {
  try {
    const config = (await resolveConfig(path)) ?? {}
    return await format(md, { ...config, parser: 'markdown', filepath: path })
  } catch {
    return md
  }
}
