/**
 * Correctness gates: the benchmark's numbers against `shared/data/reference-eval.json` (full cache and
 * StreamingLLM, per-window mean NLL to 1e-4 relative) and `shared/data/oracle-eviction.json` (an
 * independent implementation of the eviction methods, perplexity to 0.5%).
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { perplexity } from './stats.js';

/** Tolerance of the full-cache and StreamingLLM gates: relative, per window. */
export const REFERENCE_TOLERANCE = 1e-4;
/** Tolerance of the eviction-method gates: relative, on perplexity. */
export const ORACLE_TOLERANCE = 0.005;

/** What a run evaluated, to match against the reference files. */
export interface GateContext {
  /** Model folder name, e.g. `ref-12m`. */
  readonly model: string;
  /** Text file name, e.g. `wikitext2-test.txt`. */
  readonly text: string;
  readonly window: number;
  /** The first ids of window 0 (to check the token stream). */
  readonly firstIds: readonly number[];
}

interface ReferenceEntry {
  model: string;
  text: string;
  window: number;
  windows: number;
  first_ids_of_window_0: number[];
  configs: Record<string, { per_window_mean_nll: number[] }>;
}

interface OracleFile {
  model: string;
  text: string;
  windows: number;
  window_tokens: number;
  configs: Record<string, { method: string; budget: number; ppl: number; per_window_mean_nll: number[]; opts: { drop?: number } }>;
}

/** One check of the benchmark against a reference number. */
export interface Gate {
  /** Which file the reference comes from. */
  readonly source: 'reference-eval.json' | 'oracle-eviction.json';
  /** The reference's own name for the configuration. */
  readonly reference: string;
  /** The benchmark configuration it is compared with. */
  readonly config: string;
  /** `per-window` (largest relative difference of a window's mean NLL) or `ppl` (relative, over the windows run). */
  readonly metric: 'per-window' | 'ppl' | 'stream';
  readonly tolerance: number;
  /** Windows compared. */
  readonly windows: number;
  /** The measured relative difference (NaN when the configuration was not run). */
  readonly difference: number;
  /** Benchmark and reference values (perplexity over the compared windows, or the first ids). */
  readonly ours: number | string;
  readonly theirs: number | string;
  /** `null` when the configuration was not run. */
  readonly pass: boolean | null;
}

/** A configuration the gates need: a method at a budget. */
export interface Needed {
  readonly method: string;
  readonly budget: number;
}

/** The reference files found beside the model (`<shared>/data/`), loaded once. */
export interface References {
  readonly reference?: ReferenceEntry;
  readonly oracle?: OracleFile;
}

/**
 * Loads the entries of `reference-eval.json` and `oracle-eviction.json` (in `dataDir`) that describe
 * this model, text and window length; either may be absent.
 * @example
 * ```ts
 * const refs = loadReferences('../shared/data', { model: 'ref-12m', text: 'wikitext2-test.txt', window: 2048, firstIds });
 * ```
 */
export function loadReferences(dataDir: string, context: GateContext): References {
  const out: { reference?: ReferenceEntry; oracle?: OracleFile } = {};
  const refPath = `${dataDir}/reference-eval.json`;
  if (existsSync(refPath)) {
    const file = JSON.parse(readFileSync(refPath, 'utf8')) as Record<string, unknown>;
    for (const value of Object.values(file)) {
      const e = value as Partial<ReferenceEntry>;
      if (typeof e === 'object' && e !== null && e.model === context.model && e.text === context.text && e.window === context.window) {
        out.reference = e as ReferenceEntry;
      }
    }
  }
  const oraclePath = `${dataDir}/oracle-eviction.json`;
  if (existsSync(oraclePath)) {
    const o = JSON.parse(readFileSync(oraclePath, 'utf8')) as OracleFile;
    if (o.model === context.model && o.text === context.text && o.window_tokens === context.window) out.oracle = o;
  }
  return out;
}

/** The benchmark method of an oracle configuration (`scissorhands` with `drop` is `scissorhands-m10`). */
function oracleMethod(method: string, opts: { drop?: number }): string {
  if (method === 'scissorhands' && opts.drop !== undefined) return 'scissorhands-m10';
  return ({ full: 'full', streaming: 'streaming', scissorhands: 'scissorhands', h2o: 'h2o', tova: 'tova', keynorm: 'keyNorm' } as Record<string, string>)[method] ?? method;
}

/** `streaming_s4_b256` to its sinks and budget. */
function parseStreaming(name: string): { sinks: number; budget: number } | undefined {
  const m = /^streaming_s(\d+)_b(\d+)$/.exec(name);
  return m ? { sinks: Number(m[1]), budget: Number(m[2]) } : undefined;
}

/**
 * The configurations the gates compare (method and budget), whether or not the run asked for them.
 * @example
 * ```ts
 * neededConfigurations(refs); // [{ method: 'full', budget: 2048 }, { method: 'streaming', budget: 256 }, ...]
 * ```
 */
export function neededConfigurations(refs: References, window: number): Needed[] {
  const out: Needed[] = [];
  if (refs.reference) {
    for (const name of Object.keys(refs.reference.configs)) {
      if (name === 'full') out.push({ method: 'full', budget: window });
      const s = parseStreaming(name);
      if (s && s.sinks === 4) out.push({ method: 'streaming', budget: s.budget });
    }
  }
  if (refs.oracle) {
    for (const c of Object.values(refs.oracle.configs)) {
      out.push({ method: oracleMethod(c.method, c.opts), budget: c.method === 'full' ? window : c.budget });
    }
  }
  const seen = new Set<string>();
  return out.filter((n) => {
    const key = `${n.method}@${n.budget}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** The largest relative difference between two per-window series, over their common windows. */
function maxRelative(ours: readonly number[], theirs: readonly number[]): { n: number; worst: number } {
  const n = Math.min(ours.length, theirs.length);
  let worst = 0;
  for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(ours[i]! - theirs[i]!) / Math.abs(theirs[i]!));
  return { n, worst };
}

/**
 * Compares the results (per-window mean NLL by configuration id, `method@budget` or `full`) with every
 * reference number that applies.
 * @example
 * ```ts
 * const gates = evaluateGates(refs, context, new Map([['full', fullNlls], ['streaming@1024', s]]));
 * ```
 */
export function evaluateGates(refs: References, context: GateContext, results: ReadonlyMap<string, readonly number[]>): Gate[] {
  const gates: Gate[] = [];
  const idOf = (method: string, budget: number): string => (method === 'full' ? 'full' : `${method}@${budget}`);
  const perWindow = (source: Gate['source'], reference: string, config: string, theirs: number[]): Gate => {
    const ours = results.get(config);
    if (!ours) {
      return { source, reference, config, metric: 'per-window', tolerance: REFERENCE_TOLERANCE, windows: 0, difference: NaN, ours: NaN, theirs: NaN, pass: null };
    }
    const { n, worst } = maxRelative(ours, theirs);
    return {
      source, reference, config, metric: 'per-window', tolerance: REFERENCE_TOLERANCE, windows: n, difference: worst,
      ours: perplexity(ours.slice(0, n)), theirs: perplexity(theirs.slice(0, n)), pass: n > 0 && worst <= REFERENCE_TOLERANCE,
    };
  };
  if (refs.reference) {
    const first = refs.reference.first_ids_of_window_0;
    const ours = context.firstIds.slice(0, first.length);
    const same = ours.length === first.length && ours.every((x, i) => x === first[i]);
    gates.push({
      source: 'reference-eval.json', reference: 'first_ids_of_window_0', config: 'token stream', metric: 'stream', tolerance: 0,
      windows: 1, difference: same ? 0 : 1, ours: ours.join(','), theirs: first.join(','), pass: same,
    });
    for (const [name, c] of Object.entries(refs.reference.configs)) {
      if (name === 'full') gates.push(perWindow('reference-eval.json', name, 'full', c.per_window_mean_nll));
      const s = parseStreaming(name);
      if (s && s.sinks === 4) gates.push(perWindow('reference-eval.json', name, idOf('streaming', s.budget), c.per_window_mean_nll));
    }
  }
  if (refs.oracle) {
    for (const [name, c] of Object.entries(refs.oracle.configs)) {
      const method = oracleMethod(c.method, c.opts);
      const config = idOf(method, c.budget);
      if (method === 'full' || method === 'streaming') {
        gates.push(perWindow('oracle-eviction.json', name, config, c.per_window_mean_nll));
        continue;
      }
      const ours = results.get(config);
      if (!ours) {
        gates.push({ source: 'oracle-eviction.json', reference: name, config, metric: 'ppl', tolerance: ORACLE_TOLERANCE, windows: 0, difference: NaN, ours: NaN, theirs: NaN, pass: null });
        continue;
      }
      const n = Math.min(ours.length, c.per_window_mean_nll.length);
      const a = perplexity(ours.slice(0, n));
      const b = perplexity(c.per_window_mean_nll.slice(0, n));
      const difference = Math.abs(a / b - 1);
      gates.push({
        source: 'oracle-eviction.json', reference: name, config, metric: 'ppl', tolerance: ORACLE_TOLERANCE, windows: n,
        difference, ours: a, theirs: b, pass: difference <= ORACLE_TOLERANCE,
      });
    }
  }
  return gates;
}

/** `ref-12m` from `../shared/models/ref-12m/` (trailing slashes ignored). */
export function folderName(path: string): string {
  return basename(path.replace(/[/\\]+$/, ''));
}
