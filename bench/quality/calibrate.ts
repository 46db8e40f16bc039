/**
 * Calibration of per-layer budgets (`layerBudget` + `allocateLayerBudgets`): how much each layer alone
 * loses when it keeps only the most recent tokens, on text the benchmark does not evaluate.
 *
 *   npx tsx bench/quality/calibrate.ts                                 # ref-12m: WikiText-2 windows 16-23
 *   npx tsx bench/quality/calibrate.ts --model models/stories260K   # stories260K: text it samples itself
 *
 * For every layer `l` and every grid budget `b` (default `L/32, L/16, L/8, L/4, L/2, 3L/4` of the context `L`),
 * the model scores the calibration windows with layer `l` keeping `b` tokens (StreamingLLM eviction: 4 sinks,
 * the most recent rest) and every other layer keeping everything; the layer's loss at `b` is the mean
 * increase of NLL over the full cache, in nats. `allocateLayerBudgets` then splits `layers x B` tokens for
 * each benchmark budget `B`. Writes `bench/results/calibration-<model>.json`, which `bench:quality` reads
 * for the `layerBudget` method. Options: `--text FILE`, `--skip K` (first calibration window, default 16:
 * after the windows the benchmark evaluates), `--windows N` (default 8), `--source text|sample` (sample:
 * `N` windows sampled from the model itself at temperature 1, seed `--seed`, starting from BOS),
 * `--grid 32,16,8,4,2,1.3333` (budgets `floor(L/k)`), `--budgets 2,3,4,5,10`, `--shard i/n` and `--from FILE` (as in
 * bench:quality), `--threads`, `--out`.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { KVCache, allocateLayerBudgets, fullCache, type LayerLossPoint } from '../../src/index.js';
import { LlamaEngine } from '../../examples/llama/engine.js';
import { LlamaModel } from '../../examples/llama/model.js';
import { loadCorpus } from './corpus.js';
import { folderName } from './gates.js';
import type { Configuration, MethodSpec } from './methods.js';
import { configure } from './methods.js';
import { Progress } from './progress.js';
import { runConfigurations } from './runner.js';
import { mean } from './stats.js';

/** What `bench/results/calibration-<model>.json` holds. */
export interface Calibration {
  readonly schema: 1;
  readonly command: string;
  readonly date: string;
  readonly model: string;
  /** `text:<file>` windows `skip .. skip + windows - 1`, or `sample:seed=<seed>`. */
  readonly source: string;
  readonly window: number;
  readonly windows: number;
  readonly sinks: number;
  readonly recent: number;
  /** Per-window mean NLL of the full cache on the calibration windows. */
  readonly full: number[];
  /** Per layer, the measured points (the full context at loss 0 included). */
  readonly curves: LayerLossPoint[][];
  /** Per benchmark budget (tokens per layer on average), the budgets of each layer. */
  readonly allocations: Record<string, number[]>;
}

/**
 * The layer budgets of a calibration for a mean budget `budget` (computed if the file does not list it).
 * @example
 * ```ts
 * const tokens = layerTokens(calibration, 409); // [286, 128, 1024, ...]
 * ```
 */
export function layerTokens(calibration: Calibration, budget: number): number[] {
  return calibration.allocations[String(budget)] ?? allocateLayerBudgets({ curves: calibration.curves, budget });
}

/** A xorshift32 stream in [0, 1): the sampler's only randomness. */
function uniform(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/**
 * `count` windows of `length + 1` tokens sampled from the model at temperature 1 from BOS, decoded
 * together with a full cache.
 * @example
 * ```ts
 * const windows = sampleWindows(engine, 4, 2048, 0, 0);
 * ```
 */
export function sampleWindows(engine: LlamaEngine, count: number, length: number, bos: number, seed: number): number[][] {
  const vocab = engine.model.config.vocabSize;
  const next = uniform(seed);
  using cache = KVCache.create({ geometry: engine.geometry, maxSequences: count, policy: fullCache({ maxTokens: length + 1 }) });
  const seqs = Array.from({ length: count }, () => cache.open());
  const out = seqs.map(() => [bos]);
  for (let t = 0; t < length; t++) {
    const logits = engine.step(cache, seqs, out.map((w) => w[t]!), seqs.map(() => t));
    for (let r = 0; r < count; r++) {
      let max = -Infinity;
      for (let i = 0; i < vocab; i++) max = Math.max(max, logits[r * vocab + i]!);
      let sum = 0;
      for (let i = 0; i < vocab; i++) sum += Math.exp(logits[r * vocab + i]! - max);
      let u = next() * sum;
      let pick = vocab - 1;
      for (let i = 0; i < vocab; i++) {
        u -= Math.exp(logits[r * vocab + i]! - max);
        if (u <= 0) {
          pick = i;
          break;
        }
      }
      out[r]!.push(pick);
    }
  }
  return out;
}

/** The ablation of one layer at `tokens` (every other layer keeps the whole window). */
function ablation(layer: number, layers: number, tokens: number, window: number, sinks: number, recent: number): MethodSpec {
  return {
    name: `layer${layer}`,
    description: `layer ${layer} keeps ${tokens}, the others everything`,
    tracker: 'streamingLLM',
    trackerOptions: {},
    policy: 'layerBudget',
    policyOptions: { tokens: Array.from({ length: layers }, (_, l) => (l === layer ? tokens : window)), sinks, recent },
  };
}

async function main(): Promise<void> {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
  const sharedDir = [resolve(root, '../shared'), '/work/shared'].find((d) => existsSync(d)) ?? resolve(root, '../shared');
  const { values: args } = parseArgs({
    options: {
      model: { type: 'string', default: join(sharedDir, 'models/ref-12m') },
      text: { type: 'string' },
      source: { type: 'string' },
      skip: { type: 'string', default: '16' },
      windows: { type: 'string', default: '8' },
      seed: { type: 'string', default: '0' },
      grid: { type: 'string', default: '32,16,8,4,2,1.3333' },
      budgets: { type: 'string', default: '2,3,4,5,10' },
      sinks: { type: 'string', default: '4' },
      recent: { type: 'string', default: '1' },
      shard: { type: 'string' },
      from: { type: 'string', multiple: true, default: [] },
      threads: { type: 'string', default: '1' },
      out: { type: 'string', default: join(root, 'bench/results') },
    },
  });
  const modelDir = resolve(args.model);
  const modelName = folderName(modelDir);
  const count = Number(args.windows);
  const sinks = Number(args.sinks);
  const recent = Number(args.recent);
  const source = args.source ?? (modelName === 'stories260K' ? 'sample' : 'text');
  const model = await LlamaModel.load(modelDir, { maxRows: 64, threads: args.threads === '2' ? 2 : 1 });
  const engine = new LlamaEngine(model);
  const window = model.config.maxPositions;
  const layers = model.config.layers;
  let windows: number[][];
  let sourceText: string;
  if (source === 'sample') {
    windows = sampleWindows(engine, count, window, model.config.bos ?? 0, Number(args.seed));
    sourceText = `sample:seed=${args.seed}`;
  } else {
    const textFile = resolve(args.text ?? join(sharedDir, 'data', modelName === 'stories260K' ? 'tinystories-valid-sample.txt' : 'wikitext2-test.txt'));
    const skip = Number(args.skip);
    windows = loadCorpus(modelDir, textFile, window, skip + count, model.config.bos, 'lf').windows.slice(skip);
    sourceText = `text:${basename(textFile)}:windows=${skip}..${skip + count - 1}`;
  }
  const grid = args.grid.split(',').map((k) => Math.floor(window / Number(k)));
  const full: MethodSpec = { name: 'full', description: 'no eviction', tracker: 'streamingLLM', trackerOptions: {}, policy: 'fullCache', policyOptions: { maxTokens: 'W' } };
  let configs: Configuration[] = [configure(full, window, window)];
  for (let l = 0; l < layers; l++) for (const b of grid) configs.push({ ...configure(ablation(l, layers, b, window, sinks, recent), b, window), id: `layer${l}@${b}` });

  // Shards and reuse, as in bench:quality.
  const stem = `calibration-${modelName}`;
  const shard = args.shard === undefined ? undefined : /^(\d+)\/(\d+)$/.exec(args.shard);
  const outDir = resolve(args.out);
  mkdirSync(outDir, { recursive: true });
  const done = new Map<string, number[]>();
  for (const f of args.from) {
    const previous = JSON.parse(readFileSync(resolve(f), 'utf8')) as { source: string; runs: Record<string, number[]> };
    if (previous.source !== sourceText) throw new Error(`${f}: another calibration source (${previous.source})`);
    for (const [id, nll] of Object.entries(previous.runs)) done.set(id, nll);
  }
  configs = configs.filter((c) => !done.has(c.id));
  if (shard) configs = configs.filter((_, i) => i % Number(shard[2]) === Number(shard[1]));
  const bar = new Progress(configs.length * count * window, 'calibration');
  runConfigurations(engine, configs, windows, {
    batch: count, parallel: Math.max(1, Math.floor(64 / count)), backend: 'auto',
    onProgress: (n) => bar.update(n),
    onResult: (r) => done.set(r.configuration.id, r.perWindowMeanNll),
  });
  bar.done();
  model.close();
  const command = `npx tsx bench/quality/calibrate.ts ${process.argv.slice(2).join(' ')}`.trim();
  if (shard) {
    const file = join(outDir, `${stem}.shard-${shard[1]}-of-${shard[2]}.json`);
    writeFileSync(file, `${JSON.stringify({ source: sourceText, runs: Object.fromEntries(done) }, null, 1)}\n`);
    console.error(`wrote ${relative(process.cwd(), file)}`);
    return;
  }
  const fullNll = done.get('full')!;
  const curves = Array.from({ length: layers }, (_, l) => [
    ...grid.map((b) => ({ tokens: b, loss: mean(done.get(`layer${l}@${b}`)!.map((x, w) => x - fullNll[w]!)) })),
    { tokens: window, loss: 0 },
  ]);
  const allocations = Object.fromEntries(args.budgets.split(',').map((k) => {
    const budget = Math.floor(window / Number(k));
    return [String(budget), allocateLayerBudgets({ curves, budget, min: Math.min(...grid), max: window })];
  }));
  const calibration: Calibration = {
    schema: 1, command, date: new Date().toISOString(), model: modelName, source: sourceText, window, windows: count, sinks, recent,
    full: fullNll, curves, allocations,
  };
  const file = join(outDir, `${stem}.json`);
  writeFileSync(file, `${JSON.stringify(calibration, null, 1)}\n`);
  console.log(`layer losses (nats) at ${grid.join(', ')} tokens:`);
  curves.forEach((c, l) => console.log(`  layer ${l}: ${c.slice(0, -1).map((p) => p.loss.toFixed(4)).join('  ')}`));
  for (const [b, tokens] of Object.entries(allocations)) console.log(`  B = ${b}: [${tokens.join(', ')}] (sum ${tokens.reduce((a, x) => a + x, 0)} of ${layers * Number(b)})`);
  console.error(`wrote ${relative(process.cwd(), file)}`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
