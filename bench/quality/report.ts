/**
 * The results file (`bench/results/quality-*.json`), its Markdown table and its plot.
 * @module
 */
import type { Gate } from './gates.js';
import { plotSvg, type Series } from './plot.js';
import { mean, pairedDifference, perplexity, type PairedDifference } from './stats.js';

/** One configuration's measured numbers. */
export interface ConfigRecord {
  readonly id: string;
  readonly method: string;
  readonly description: string;
  readonly tracker: string;
  readonly trackerOptions: Record<string, unknown>;
  readonly policy: string;
  readonly policyOptions: Record<string, unknown>;
  /** Tokens kept per (window, layer, KV head); the window for the full cache. */
  readonly budget: number;
  /** `window / budget`. */
  readonly compression: number;
  readonly perWindowMeanNll: number[];
  readonly meanNll: number;
  readonly ppl: number;
  /** Paired difference from the full cache over the same windows (absent for `full` itself). */
  readonly vsFull?: PairedDifference;
  readonly seconds: number;
  readonly backend: string;
  readonly capacity: number;
  readonly evictions: number;
  /** Bytes of keys and values held at the end of a window, all layers (absent in older files). */
  readonly bytesKV?: number;
  /** A dense f16 cache of the whole window over `bytesKV`: fewer tokens and fewer bits together. */
  readonly compressionVsF16?: number;
}

/** A challenger against the best peer at one budget. */
export interface Comparison {
  readonly budget: number;
  readonly compression: number;
  /** The peer with the lowest perplexity at this budget. */
  readonly best: string;
  readonly bestPpl: number;
  readonly challengerPpl: number;
  /** Challenger minus best, paired over windows (negative: the challenger is better). */
  readonly difference: PairedDifference;
}

/** Everything a run wrote. */
export interface QualityResults {
  readonly schema: 1;
  readonly title: string;
  readonly command: string;
  /** Commands of the runs whose configurations this one reused (`--from`, `--resume`). */
  readonly sources?: string[];
  readonly date: string;
  readonly environment: Record<string, string | number>;
  readonly model: { readonly dir: string; readonly name: string; readonly parameters: number };
  readonly text: {
    readonly file: string; readonly name: string; readonly sha256: string; readonly bytes: number;
    readonly crlf: number; readonly lineEndings: string; readonly tokens: number; readonly bos: number | null;
    readonly windowsAvailable: number;
  };
  readonly window: number;
  readonly windows: number;
  /** Storage format and element type of every cache of the run (absent in older files: dense f32). */
  /** Tokens of each window fed as a prompt through prefill (absent: 0, every token decoded step by step). */
  readonly prefix?: number;
  readonly storage?: string;
  readonly dtype?: string;
  /**
   * A dense run over the same windows whose full cache is the reference of every `vsFull` here (packed
   * runs compare against it, so that the 4-bit-alone row has a difference too).
   */
  readonly baseline?: { readonly file: string; readonly command: string; readonly ppl: number };
  /** Compression factors of the matrix (budget `floor(window / k)`). */
  readonly compressions: number[];
  readonly methods: string[];
  readonly challenger?: string;
  readonly peers: string[];
  readonly configs: Record<string, ConfigRecord>;
  readonly comparisons: Comparison[];
  readonly gates: Gate[];
}

/**
 * Paired comparisons of `challenger` with the best of `peers` at every budget where both ran.
 * @example
 * ```ts
 * const rows = compare(configs, 'sinkhorn', ['streaming', 'scissorhands'], [1024, 682]);
 * ```
 */
export function compare(configs: Record<string, ConfigRecord>, challenger: string, peers: readonly string[], budgets: readonly number[]): Comparison[] {
  const out: Comparison[] = [];
  for (const budget of budgets) {
    const mine = configs[`${challenger}@${budget}`];
    const rivals = peers.map((p) => configs[`${p}@${budget}`]).filter((c): c is ConfigRecord => c !== undefined);
    if (!mine || rivals.length === 0) continue;
    const best = rivals.reduce((a, b) => (b.ppl < a.ppl ? b : a));
    out.push({
      budget, compression: mine.compression, best: best.method, bestPpl: best.ppl, challengerPpl: mine.ppl,
      difference: pairedDifference(mine.perWindowMeanNll, best.perWindowMeanNll),
    });
  }
  return out;
}

/**
 * A record from per-window NLLs, with its paired difference from the full cache (`full`; for the `full`
 * method itself only when the reference comes from another run, e.g. dense against 4-bit).
 */
export function record(base: Omit<ConfigRecord, 'meanNll' | 'ppl' | 'vsFull'>, full: readonly number[] | undefined, fullIsExternal = false): ConfigRecord {
  const meanNll = mean(base.perWindowMeanNll);
  return {
    ...base,
    meanNll,
    ppl: perplexity(base.perWindowMeanNll),
    ...(full && (base.method !== 'full' || fullIsExternal) ? { vsFull: pairedDifference(base.perWindowMeanNll, full) } : {}),
  };
}

const signed = (x: number, digits = 1): string => `${x >= 0 ? '+' : ''}${x.toFixed(digits)}`;
const ci = (d: PairedDifference, digits = 1): string =>
  Number.isFinite(d.loPct) ? `[${signed(d.loPct, digits)}, ${signed(d.hiPct, digits)}]` : '';
const pplText = (ppl: number): string => (ppl >= 100 ? ppl.toFixed(2) : ppl >= 10 ? ppl.toFixed(3) : ppl.toFixed(4));

/**
 * The Markdown report: perplexity and its paired difference from the full cache per method and budget,
 * the challenger against the best peer, and the gates.
 * @example
 * ```ts
 * writeFileSync('quality-ref-12m.md', markdown(results));
 * ```
 */
export function markdown(r: QualityResults, svgName?: string): string {
  const lines: string[] = [];
  const configs = Object.values(r.configs);
  const full = r.configs['full'];
  const budgets = [...new Set(configs.filter((c) => c.method !== 'full' && r.compressions.some((k) => Math.floor(r.window / k) === c.budget)).map((c) => c.budget))]
    .sort((a, b) => b - a);
  const packed = r.storage !== undefined && r.storage !== 'dense';
  lines.push(`# Quality: ${r.model.name} on ${r.text.name}${packed ? `, ${r.storage} storage` : ''}${r.prefix ? `, ${r.prefix}-token prompts` : ''}`, '');
  lines.push(`${r.windows} windows of ${r.window} tokens (${(r.windows * r.window).toLocaleString('en-US')} predictions per configuration), teacher-forced ${r.prefix ? `(the first ${r.prefix} tokens of each window through \`prefill\`, where prompt methods compress, the rest token by token)` : 'token by token'} with real eviction through \`KVCache\` (${packed ? `${r.storage} storage with a ${r.dtype} residual window` : r.dtype ?? 'f32'}, backend \`${full?.backend ?? configs[0]?.backend ?? '?'}\`). `
    + `Perplexity = exp(mean NLL); in brackets, the paired difference from the ${r.baseline ? `dense full cache (${pplText(r.baseline.ppl)}, from \`${r.baseline.file}\`)` : 'full cache'} in % perplexity with its 95% t-interval over windows`
    + `${packed ? '; then the memory of keys and values at the end of a window against a dense f16 cache of the whole window (`stats().compressionVsF16`)' : ''}. `
    + `Protocol: [docs/quality-protocol.md](../../docs/quality-protocol.md). Generated ${r.date.slice(0, 10)} by:`, '');
  lines.push('```', ...(r.sources ?? []), r.command, '```', '');
  if (r.sources?.length) lines.push(`(The first ${r.sources.length === 1 ? 'command' : `${r.sources.length} commands`} ran the configurations; the last one merged them and wrote this report.)`, '');
  if (svgName) lines.push(`![perplexity against compression](${svgName})`, '');
  const header = ['method', ...budgets.map((b) => `${Number((r.window / b).toFixed(2))}x (${b})`)];
  lines.push(`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`);
  const memory = (c: ConfigRecord): string => (packed && c.compressionVsF16 !== undefined ? `, ${c.compressionVsF16.toFixed(1)}x mem` : '');
  const cell = (c: ConfigRecord, bold: boolean): string => {
    const d = c.vsFull;
    const text = `${pplText(c.ppl)}${d ? ` (${signed(d.pct)}%${memory(c)})` : memory(c) ? ` (${memory(c).slice(2)})` : ''}`;
    return `${bold ? `**${text}**` : text}${d ? `<br><sub>${ci(d)}</sub>` : ''}`;
  };
  if (full) lines.push(`| ${packed ? `full cache, ${r.storage} alone` : 'full cache'} | ${cell(full, false)} |${budgets.slice(1).map(() => ' |').join('')}`);
  for (const method of r.methods) {
    if (method === 'full') continue;
    const cells = budgets.map((b) => {
      const c = r.configs[`${method}@${b}`];
      return c ? cell(c, method === r.challenger) : '';
    });
    if (cells.every((c) => c === '')) continue;
    lines.push(`| ${method === r.challenger ? `**${method}**` : method} | ${cells.join(' | ')} |`);
  }
  lines.push('');
  lines.push('| method | configuration |', '|---|---|');
  for (const method of r.methods) {
    const c = configs.find((x) => x.method === method);
    if (!c) continue;
    const opts = (o: Record<string, unknown>): string => JSON.stringify(o).replace(/"/g, '');
    const policy = method === 'full' ? `fullCache(${opts(c.policyOptions)})` : `${c.policy}(${opts({ ...c.policyOptions, tokens: 'B' })})`;
    lines.push(`| ${method} | \`${c.tracker}(${Object.keys(c.trackerOptions).length ? opts(c.trackerOptions) : ''})\` + \`${policy}\`: ${c.description} |`);
  }
  lines.push('');
  if (r.challenger && r.comparisons.length > 0) {
    lines.push(`## ${r.challenger} against the best peer at each budget`, '');
    lines.push(`Peers: ${r.peers.join(', ')}. Difference = ${r.challenger} minus the best peer, paired over the ${r.windows} windows (negative: ${r.challenger} is better).`, '');
    lines.push('| compression | best peer | its ppl | ' + r.challenger + ' | difference in % ppl [95% CI] | windows won |', '|---|---|---:|---:|---:|---:|');
    for (const c of r.comparisons) {
      const mine = r.configs[`${r.challenger}@${c.budget}`]!.perWindowMeanNll;
      const theirs = r.configs[`${c.best}@${c.budget}`]!.perWindowMeanNll;
      const won = mine.filter((x, i) => x < theirs[i]!).length;
      lines.push(`| ${Number(c.compression.toFixed(2))}x (${c.budget}) | ${c.best} | ${pplText(c.bestPpl)} | ${pplText(c.challengerPpl)} | ${signed(c.difference.pct, 2)}% ${ci(c.difference, 2)} | ${won}/${mine.length} |`);
    }
    lines.push('');
  }
  if (r.gates.length > 0) {
    lines.push('## Correctness gates', '');
    lines.push('| source | reference | configuration | metric | windows | ours | theirs | difference | tolerance | result |', '|---|---|---|---|---:|---:|---:|---:|---:|---|');
    for (const g of r.gates) {
      const v = (x: number | string): string => (typeof x === 'number' ? (Number.isNaN(x) ? '' : pplText(x)) : x);
      const result = g.pass === null ? 'not run' : g.pass ? 'pass' : '**FAIL**';
      const diff = Number.isNaN(g.difference) ? '' : g.difference.toExponential(1);
      const metric = g.metric === 'per-window' ? 'max rel. diff of window NLL' : g.metric === 'ppl' ? 'rel. diff of ppl' : 'first ids';
      lines.push(`| ${g.source} | ${g.reference} | ${g.config} | ${metric} | ${g.windows} | ${v(g.ours)} | ${v(g.theirs)} | ${diff} | ${g.tolerance} | ${result} |`);
    }
    lines.push('');
  }
  const env = Object.entries(r.environment).map(([k, v]) => `${k} ${v}`).join(', ');
  lines.push(`Text: \`${r.text.name}\` (sha256 ${r.text.sha256.slice(0, 16)}..., ${r.text.bytes.toLocaleString('en-US')} bytes, ${r.text.crlf} CRLF read as ${r.text.lineEndings === 'lf' ? 'LF' : 'CRLF'}), ${r.text.tokens.toLocaleString('en-US')} tokens with BOS ${r.text.bos ?? 'none'}. Model: \`${r.model.name}\` (${r.model.parameters.toLocaleString('en-US')} parameters). ${env}.`, '');
  return `${lines.join('\n')}\n`;
}

/**
 * The plot of a run: perplexity against compression for every method of the matrix (each line starts
 * at the full cache), the challenger drawn thicker.
 * @example
 * ```ts
 * writeFileSync('quality-ref-12m.svg', plot(results));
 * ```
 */
export function plot(r: QualityResults): string {
  const full = r.configs['full'];
  const packed = r.storage !== undefined && r.storage !== 'dense';
  // x: the nominal compression k of each budget floor(window / k); for packed runs the measured memory
  // against dense f16, where each line starts from the dense full cache (1x) through the packed one.
  const factorOf = new Map(r.compressions.map((k) => [Math.floor(r.window / k), k]));
  const xOf = (c: ConfigRecord): number => (packed ? c.compressionVsF16 ?? Number.NaN : factorOf.get(c.budget)!);
  const reference = packed ? r.baseline?.ppl : full?.ppl;
  const series: Series[] = [];
  for (const method of r.methods) {
    if (method === 'full') continue;
    const points = Object.values(r.configs)
      .filter((c) => c.method === method && factorOf.has(c.budget))
      .map((c) => ({ x: xOf(c), y: c.ppl }));
    if (points.length === 0) continue;
    if (packed && full) points.push({ x: xOf(full), y: full.ppl });
    if (reference !== undefined) points.push({ x: 1, y: reference });
    series.push({ label: method, points: points.filter((p) => Number.isFinite(p.x)).sort((a, b) => a.x - b.x), highlight: method === r.challenger });
  }
  return plotSvg({
    title: `${r.model.name}: perplexity against KV-cache ${packed ? `memory (${r.storage} storage)` : 'compression'}`,
    subtitle: `${r.text.name}, ${r.windows} windows of ${r.window} tokens, teacher-forced with real eviction`,
    series,
    ...(packed ? { xLabel: 'memory of keys and values: dense f16 / held (log scale)', xTicks: [1, 2, 3, 5, 10, 20, 30, 50] } : {}),
    ...(reference !== undefined ? { reference } : {}),
  });
}
