/**
 * The quality benchmark: perplexity of a model under every KV-cache compression method at several
 * budgets, teacher-forced with real eviction through the SDK's `KVCache`, with paired differences from
 * the full cache, correctness gates, a Markdown table and an SVG plot. Protocol: docs/quality-protocol.md.
 *
 *   npm run bench:quality                                              # ref-12m, 16 x 2048 of WikiText-2
 *   npm run bench:quality -- --model models/stories260K                # 30 x 512 of the TinyStories sample
 *   npm run bench:quality -- --windows 2 --methods full,streaming --budgets 4
 *   npm run bench:quality -- --define 'sh-sinks=scissorhands:{"policy":{"sinks":4}}' --methods full,sh-sinks
 *   npm run bench:quality -- --options 'scissorhands:{"tracker":{"window":200}}'
 *   npm run bench:quality -- --prefix 1024 --methods full,snapkv,adakv   # the first 1024 tokens of each window through prefill
 *   npm run bench:quality -- --storage int4 --dtype f16 --no-gates --baseline bench/results/quality-ref-12m.json
 *       # every row with 4-bit storage (docs/packing.md) and an f16 residual window: `full` is 4-bit alone, the
 *       # others 4-bit with each tracker; differences from the dense run's full cache, memory against dense f16
 *
 * Writes `<out>/<name>.json` (after every group of configurations, so `--resume` can pick up a stopped
 * run), `<name>.md` and `<name>.svg`.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { BackendName, DType, StorageOptions } from '../../src/index.js';
import { LlamaEngine } from '../../examples/llama/engine.js';
import { LlamaModel } from '../../examples/llama/model.js';
import { loadCorpus, type LineEndings } from './corpus.js';
import { evaluateGates, folderName, loadReferences, neededConfigurations } from './gates.js';
import { layerTokens, type Calibration } from './calibrate.js';
import { BUILTIN_METHODS, configure, derive, layerBudgetMethod, type Configuration, type MethodSpec } from './methods.js';
import { Progress } from './progress.js';
import { compare, markdown, plot, record, type ConfigRecord, type QualityResults } from './report.js';
import { runConfigurations } from './runner.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** `../shared` beside the repository, else `/work/shared`. */
const sharedDir = [resolve(root, '../shared'), '/work/shared'].find((d) => existsSync(d)) ?? resolve(root, '../shared');

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: join(sharedDir, 'models/ref-12m') },
    text: { type: 'string' },
    window: { type: 'string' },
    windows: { type: 'string' },
    budgets: { type: 'string', default: '2,3,4,5,10' },
    methods: { type: 'string' },
    define: { type: 'string', multiple: true, default: [] },
    options: { type: 'string', multiple: true, default: [] },
    challenger: { type: 'string' },
    peers: { type: 'string' },
    batch: { type: 'string' },
    parallel: { type: 'string' },
    threads: { type: 'string', default: 'auto' },
    kernel: { type: 'string', default: 'auto' },
    backend: { type: 'string', default: 'auto' },
    // Storage of every cache: dense (default) or int2/int4/int8 (groups of 32, residual window 32).
    storage: { type: 'string', default: 'dense' },
    dtype: { type: 'string', default: 'f32' },
    // A dense run over the same windows whose full cache every difference is taken from.
    baseline: { type: 'string' },
    // Tokens at the start of every window fed as a prompt through prefill (prompt methods compress it).
    prefix: { type: 'string', default: '0' },
    'line-endings': { type: 'string', default: 'lf' },
    gates: { type: 'boolean', default: true },
    'no-gates': { type: 'boolean', default: false },
    strict: { type: 'boolean', default: false },
    'no-extra': { type: 'boolean', default: false },
    resume: { type: 'boolean', default: false },
    calibration: { type: 'string' },
    from: { type: 'string', multiple: true, default: [] },
    shard: { type: 'string' },
    out: { type: 'string', default: join(root, 'bench/results') },
    name: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('*/')[0]);
  process.exit(0);
}

// Methods: the built-ins, the SDK's layerBudget when a calibration of this model exists, variants
// (--define) and changed options (--options).
let methods: MethodSpec[] = [...BUILTIN_METHODS];
const calibrationFile = args.calibration ?? join(root, 'bench/results', `calibration-${folderName(resolve(args.model))}.json`);
if (existsSync(calibrationFile)) {
  const calibration = JSON.parse(readFileSync(calibrationFile, 'utf8')) as Calibration;
  methods.push(layerBudgetMethod((b) => layerTokens(calibration, b), `${calibration.model}, ${calibration.source}`));
} else if (args.calibration) {
  throw new Error(`${args.calibration} does not exist`);
}
for (const d of args.define) {
  const spec = derive(methods, d);
  methods = [...methods.filter((m) => m.name !== spec.name), spec];
}
for (const o of args.options) {
  const spec = derive(methods, o);
  methods = methods.map((m) => (m.name === spec.name ? spec : m));
}
// By default: every method but the gates' variant; prompt methods only for runs with a prompt (`--prefix`),
// and never on packed storage, which prompt compression refuses.
const actsOnPrompt = (m: MethodSpec): boolean =>
  m.prompt !== undefined || (m.policyOptionsAt === undefined && configure(m, 512, 2048).make().policy.prompt !== undefined);
const defaultMethods = methods
  .filter((m) => m.name !== 'scissorhands-m10' && (!actsOnPrompt(m) || (Number(args.prefix) > 0 && args.storage === 'dense')))
  .map((m) => m.name);
const chosen = (args.methods?.split(',') ?? defaultMethods).map((s) => s.trim()).filter(Boolean);
for (const name of chosen) if (!methods.some((m) => m.name === name)) throw new Error(`unknown method '${name}' (known: ${methods.map((m) => m.name).join(', ')})`);
const methodOf = (name: string): MethodSpec => methods.find((m) => m.name === name)!;

// Model and text.
const modelDir = resolve(args.model);
const modelName = folderName(modelDir);
const probe = await LlamaModel.load(modelDir, { maxRows: 1, threads: 1 });
const config = probe.config;
const parameters = probe.parameters;
probe.close();
const textFile = resolve(args.text ?? join(sharedDir, 'data', modelName === 'stories260K' ? 'tinystories-valid-sample.txt' : 'wikitext2-test.txt'));
const window = Number(args.window ?? config.maxPositions);
if (!Number.isInteger(window) || window < 2 || window > config.maxPositions) throw new Error(`--window must be in [2, ${config.maxPositions}]`);
const lineEndings = args['line-endings'] as LineEndings;
if (lineEndings !== 'lf' && lineEndings !== 'keep') throw new Error("--line-endings is 'lf' or 'keep'");
const probeCorpus = loadCorpus(modelDir, textFile, window, 0, config.bos, lineEndings);
// Default: enough windows for 32,768 predictions per configuration, or all the text holds.
const windowCount = args.windows === 'all' ? probeCorpus.available
  : Number(args.windows ?? Math.min(probeCorpus.available, Math.ceil(32768 / window)));
const corpus = loadCorpus(modelDir, textFile, window, windowCount, config.bos, lineEndings);

// Budgets: compression factors k (budget floor(window / k)), or absolute token counts written `64t`.
const compressions = args.budgets.split(',').map((s) => s.trim()).filter(Boolean).map((s) => (s.endsWith('t') ? window / Number(s.slice(0, -1)) : Number(s)));
const budgetOf = (k: number): number => Math.floor(window / k);

// The configurations: every chosen method at every budget, plus what the gates need.
const wanted: Configuration[] = [];
const add = (c: Configuration): void => {
  if (!wanted.some((x) => x.id === c.id)) wanted.push(c);
};
for (const name of chosen) {
  if (methodOf(name).policy === 'fullCache') add(configure(methodOf(name), window, window));
  else for (const k of compressions) add(configure(methodOf(name), budgetOf(k), window));
}
const context = { model: modelName, text: basename(textFile), window, firstIds: corpus.windows[0]?.slice(0, 8) ?? [] };
const gatesOn = args.gates && !args['no-gates'];
const refs = gatesOn ? loadReferences(join(dirname(textFile)), context) : {};
if (gatesOn && !args['no-extra']) {
  for (const n of neededConfigurations(refs, window)) {
    const m = methods.find((x) => x.name === n.method);
    // A gate compares the oracle's semantics: only if the method was not redefined with --options.
    if (m && BUILTIN_METHODS.some((b) => b.name === m.name && JSON.stringify(b) === JSON.stringify(m))) add(configure(m, n.budget, window));
  }
}

// Output and resume.
const outDir = resolve(args.out);
// --shard i/n: this process runs only its share of the configurations (balanced by their attention
// cost), into `<name>.shard-i-of-n.json`; a later run with `--from` those files writes the whole report.
const shard = args.shard === undefined ? undefined : (/^(\d+)\/(\d+)$/.exec(args.shard) ?? undefined);
if (args.shard !== undefined && (!shard || Number(shard[1]) >= Number(shard[2]))) throw new Error('--shard is i/n with 0 <= i < n');
if (!['dense', 'int2', 'int4', 'int8'].includes(args.storage)) throw new Error(`--storage is dense, int2, int4 or int8, got ${args.storage}`);
const storage: StorageOptions = args.storage === 'dense' ? { format: 'dense' } : { format: args.storage as 'int4' };
if (!['f32', 'f16', 'bf16'].includes(args.dtype)) throw new Error(`--dtype is f32, f16 or bf16, got ${args.dtype}`);
const dtype = args.dtype as DType;
const prefix = Number(args.prefix);
if (!Number.isInteger(prefix) || prefix < 0) throw new Error(`--prefix is a whole number of tokens, got ${args.prefix}`);
const stem = `${args.name ?? `quality-${modelName}${args.storage === 'dense' ? '' : `-${args.storage}`}${prefix > 0 ? `-prefix${prefix}` : ''}`}${shard ? `.shard-${shard[1]}-of-${shard[2]}` : ''}`;
mkdirSync(outDir, { recursive: true });
const jsonPath = join(outDir, `${stem}.json`);
const records: Record<string, ConfigRecord> = {};
const sources: string[] = [];
const sameWindows = (r: QualityResults): boolean =>
  r.text.sha256 === corpus.sha256 && r.window === window && r.windows === windowCount && r.text.lineEndings === lineEndings && r.model.name === modelName;
const sameRun = (r: QualityResults): boolean =>
  sameWindows(r) && (r.storage ?? 'dense') === args.storage && (r.dtype ?? 'f32') === dtype && (r.prefix ?? 0) === prefix;
// --resume reuses this run's own file; --from reuses other runs' files (e.g. shards run in parallel).
for (const file of [...(args.resume && existsSync(jsonPath) ? [jsonPath] : []), ...args.from.map((f) => resolve(f))]) {
  const previous = JSON.parse(readFileSync(file, 'utf8')) as QualityResults;
  if (!sameRun(previous)) {
    console.error(`${relative(process.cwd(), file)}: another model, text, window or window count; not reused`);
    continue;
  }
  let reused = 0;
  sources.push(...(previous.sources ?? []), previous.command);
  for (const c of Object.values(previous.configs)) {
    const now = wanted.find((w) => w.id === c.id);
    if (!records[c.id] && now && JSON.stringify(now.trackerOptions) === JSON.stringify(c.trackerOptions)
      && JSON.stringify(now.policyOptions) === JSON.stringify(c.policyOptions) && now.method.tracker === c.tracker && now.method.policy === c.policy) {
      records[c.id] = c;
      reused++;
    }
  }
  console.error(`${relative(process.cwd(), file)}: ${reused} configurations reused`);
}
let baseline: { file: string; command: string; ppl: number; perWindow: number[] } | undefined;
if (args.baseline) {
  const b = JSON.parse(readFileSync(resolve(args.baseline), 'utf8')) as QualityResults;
  const full = b.configs['full'];
  if (!sameWindows(b) || !full) throw new Error(`${args.baseline}: not a run of the same model, text and windows with a full cache`);
  baseline = { file: relative(root, resolve(args.baseline)), command: b.command, ppl: full.ppl, perWindow: full.perWindowMeanNll };
}
let todo = wanted.filter((c) => !records[c.id]);
if (shard) {
  // Tokens attended per prediction, on average: min(t, budget) over positions t < window.
  const cost = (c: Configuration): number => c.budget - (c.budget * c.budget) / (2 * window);
  const load = new Array<number>(Number(shard[2])).fill(0);
  const mine: Configuration[] = [];
  for (const c of [...todo].sort((a, b) => cost(b) - cost(a) || a.id.localeCompare(b.id))) {
    const s = load.indexOf(Math.min(...load));
    load[s]! += cost(c);
    if (s === Number(shard[1])) mine.push(c);
  }
  todo = mine;
}
// The full cache first, so the others' differences can be computed as they come.
todo.sort((a, b) => Number(b.method.policy === 'fullCache') - Number(a.method.policy === 'fullCache'));

// Engine: `parallel` configurations x `batch` windows decoded together.
const batch = Math.max(1, Math.min(Number(args.batch ?? windowCount), windowCount));
const parallel = Math.max(1, Number(args.parallel ?? Math.max(1, Math.floor(64 / batch))));
const threads = args.threads === 'auto' ? 'auto' : (Number(args.threads) as 1 | 2);
const model = await LlamaModel.load(modelDir, { maxRows: parallel * batch, threads, kernel: args.kernel as 'simd' | 'js' | 'auto' });
const engine = new LlamaEngine(model);

const challenger = args.challenger ?? (chosen.includes('layerBudget') ? 'layerBudget' : undefined);
const peers = (args.peers?.split(',') ?? chosen.filter((m) => m !== 'full' && m !== challenger && BUILTIN_METHODS.some((b) => b.name === m)))
  .filter((m) => m !== challenger);
const command = `npm run bench:quality -- ${process.argv.slice(2).map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ')}`.trim();

function results(): QualityResults {
  const full = baseline?.perWindow ?? records['full']?.perWindowMeanNll;
  const configs: Record<string, ConfigRecord> = {};
  for (const c of wanted) {
    const r = records[c.id];
    if (r) configs[c.id] = record(r, full, baseline !== undefined);
  }
  const perWindow = new Map(Object.values(configs).map((c) => [c.id, c.perWindowMeanNll]));
  const methodsInRun = [...chosen, ...wanted.map((c) => c.method.name).filter((m) => !chosen.includes(m))].filter((m, i, a) => a.indexOf(m) === i);
  return {
    schema: 1,
    title: `${modelName} on ${basename(textFile)}`,
    command,
    ...(sources.length ? { sources: [...new Set(sources)].filter((c) => c !== command) } : {}),
    date: new Date().toISOString(),
    environment: {
      node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model ?? '?', kernel: model.kernelName, threads: model.threads,
      batch, parallel,
    },
    model: { dir: relative(root, modelDir) || modelDir, name: modelName, parameters },
    text: {
      file: relative(root, textFile), name: basename(textFile), sha256: corpus.sha256, bytes: corpus.bytes, crlf: corpus.crlf,
      lineEndings, tokens: corpus.tokens, bos: corpus.bos ?? null, windowsAvailable: corpus.available,
    },
    window,
    windows: windowCount,
    ...(prefix > 0 ? { prefix } : {}),
    storage: args.storage,
    dtype,
    ...(baseline ? { baseline: { file: baseline.file, command: baseline.command, ppl: baseline.ppl } } : {}),
    compressions,
    methods: methodsInRun,
    ...(challenger ? { challenger } : {}),
    peers,
    configs,
    comparisons: challenger ? compare(configs, challenger, peers, compressions.map(budgetOf)) : [],
    gates: gatesOn ? evaluateGates(refs, context, perWindow) : [],
  };
}

function save(final: boolean): QualityResults {
  const r = results();
  writeFileSync(jsonPath, `${JSON.stringify(r, null, 1)}\n`);
  if (final) {
    writeFileSync(join(outDir, `${stem}.svg`), plot(r));
    writeFileSync(join(outDir, `${stem}.md`), markdown(r, `${stem}.svg`));
  }
  return r;
}

const tokensPerConfig = windowCount * window;
console.error(`${modelName}: ${windowCount} windows x ${window} tokens of ${basename(textFile)}; ${todo.length} configurations to run `
  + `(${wanted.length - todo.length} reused), ${parallel} x ${batch} rows per step, ${model.kernelName} kernel, ${model.threads} thread(s)`);
const bar = new Progress(todo.length * tokensPerConfig, '');
try {
  runConfigurations(engine, todo, corpus.windows, {
    batch,
    parallel,
    backend: args.backend as BackendName,
    prefix,
    storage,
    dtype,
    onProgress: (n) => bar.update(n),
    onResult: (res) => {
      const c = res.configuration;
      records[c.id] = {
        id: c.id, method: c.method.name, description: c.method.description, tracker: c.method.tracker, trackerOptions: c.trackerOptions,
        policy: c.method.policy, policyOptions: c.policyOptions, budget: c.budget, compression: c.compression,
        perWindowMeanNll: res.perWindowMeanNll, meanNll: 0, ppl: 0, seconds: res.seconds, backend: res.backend,
        capacity: res.capacity, evictions: res.evictions, bytesKV: res.bytesKV, compressionVsF16: res.compressionVsF16,
      };
      const r = save(false).configs[c.id]!;
      const d = r.vsFull;
      console.error(`  ${c.id.padEnd(28)} ppl ${r.ppl.toFixed(4)}${d ? `  ${d.pct >= 0 ? '+' : ''}${d.pct.toFixed(2)}% [${d.loPct.toFixed(2)}, ${d.hiPct.toFixed(2)}]` : ''}`);
    },
  });
} finally {
  bar.done();
  model.close();
}
const final = save(true);
console.log(markdown(final));
const failed = final.gates.filter((g) => g.pass === false);
console.error(`wrote ${relative(process.cwd(), jsonPath)}, .md, .svg; gates: ${final.gates.filter((g) => g.pass).length} pass, ${failed.length} fail, ${final.gates.filter((g) => g.pass === null).length} not run`);
if (args.strict && failed.length > 0) process.exit(1);
