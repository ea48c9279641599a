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

const rssCell = (v: VariantResult): string =>
  v.rssKiB.length === 0 ? '—' : `${Math.round(Math.max(...v.rssKiB) / 1024)} MiB`

/** The table alone. */
export const renderTable = (results: readonly ScenarioResult[], runs: number): string => {
  const lines = [
    `| scenario | tool | median s (min–max, ${runs} runs) | MB/s of data | ours ÷ tool | peak RSS |`,
    '|---|---|---|---:|---:|---:|',
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
        `| ${group} | ${cell(v.label)} | ${fmtSummary(sum)} | ${rate} | ${ratioCell(ours, v)} | ${rssCell(v)} |`,
      )
    }
  }
  return lines.join('\n')
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
  const rssNote = hasGnuTime
    ? 'peak RSS = GNU time `%M` of the timed command: the largest of the process and the ' +
      'children it waited for (for our CLI: Node, or a qemu-nbd it started if larger; for ' +
      'nbdcopy rows: nbdcopy only, not the servers)'
    : 'peak RSS = `process.resourceUsage().maxRSS` of our Node process (GNU time is not ' +
      'installed, so the reference tools have no RSS)'
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
    ...results.map((s) => `- **${s.title}**: ${s.description}.`),
    '- Every timing is wall clock and **includes a final `sync`** (the output is on disk); ' +
      'before every run the source is read once (warm cache) and `sync` runs untimed.',
    '- Ours = the whole `bin/guestbackup backup` call: Node/tsx start, qemu-nbd start for source ' +
      'and target, NBD handshakes, copy, flush, store bookkeeping.',
    '- nbdcopy "servers already running" = nbdcopy alone, its best case (nbdcopy + sync; the ' +
      'target qemu-nbd is stopped untimed). "End to end" also times starting and stopping both ' +
      'qemu-nbd and creating the target image.',
    '- ours ÷ tool = median of ours / median of the tool: < 1 means guestbackup is faster. ' +
      'MB/s = 10^6 bytes of guest data per second (holes are not counted).',
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
