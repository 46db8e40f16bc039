/**
 * Teacher-forced throughput of the example engine, with the NLL it computes on the way.
 *
 *   npx tsx examples/bench-throughput.ts                                   # ref-12m, 8 windows of 2048
 *   npx tsx examples/bench-throughput.ts --model models/stories260K        # 8 windows of 512
 *   npx tsx examples/bench-throughput.ts --windows 8 --tokens 256 --threads 1 --kernel js
 *
 * Windows are decoded together, one token per step for all of them (one pass over the weights per
 * step), through a full KVCache. For ref-12m the per-window mean NLL is printed beside
 * shared/data/reference-eval.json (the stream is `[0] + tokens`, window w covers tokens
 * `[2048 w, 2048 w + 2048]`: 2048 predictions).
 */
import { existsSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { KVCache, fullCache, streamingLLM } from '../src/index.js';
import { LlamaEngine } from './llama/engine.js';
import { LlamaModel } from './llama/model.js';
import { loadTokenizer } from './llama/tokenizer.js';

const sharedDir = ['../shared', '/work/shared'].find((d) => existsSync(d)) ?? '../shared';
const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: `${sharedDir}/models/ref-12m` },
    windows: { type: 'string', default: '8' },
    tokens: { type: 'string' },
    threads: { type: 'string', default: 'auto' },
    backend: { type: 'string', default: 'auto' },
    kernel: { type: 'string', default: 'auto' },
  },
});
const B = Number(args.windows);
const model = await LlamaModel.load(args.model, {
  maxRows: B,
  threads: args.threads === 'auto' ? 'auto' : (Number(args.threads) as 1 | 2),
  kernel: args.kernel as 'simd' | 'js' | 'auto',
});
const engine = new LlamaEngine(model);
const tok = loadTokenizer(args.model);
const isRef = model.config.vocabSize === 8192;
const window = Math.min(Number(args.tokens ?? model.config.maxPositions), model.config.maxPositions);
const text = readFileSync(`${sharedDir}/data/${isRef ? 'wikitext2-test.txt' : 'tinystories-valid-sample.txt'}`, 'utf8');
// Enough text for B windows (about 3.4 bytes per token), tokenized once.
const sample = text.slice(0, Math.ceil((B * window + 1) * 5));
const ids = isRef ? [0, ...tok.encode(sample, false)] : tok.encode(sample);
const windows = Array.from({ length: B }, (_, w) => ids.slice(w * window, w * window + window + 1));

using cache = KVCache.create({
  geometry: engine.geometry, maxSequences: B, tracker: streamingLLM(),
  policy: fullCache({ maxTokens: window }), backend: args.backend as 'auto',
});
const start = performance.now();
let last = start;
const nlls = engine.score(cache, windows, {
  onProgress: (n) => {
    const now = performance.now();
    if (now - last > 10_000) {
      last = now;
      console.error(`  ${n} tokens, ${((1000 * n) / (now - start)).toFixed(1)} tokens/s`);
    }
  },
});
const seconds = (performance.now() - start) / 1000;
const scored = nlls.reduce((s, a) => s + a.length, 0);
const means = nlls.map((a) => a.reduce((s, x) => s + x, 0) / a.length);
const reference = isRef && window === 2048
  ? (JSON.parse(readFileSync(`${sharedDir}/data/reference-eval.json`, 'utf8')) as Record<string, { configs: { full: { per_window_mean_nll: number[] } } }>)['ref-12m/wikitext2-test']!.configs.full.per_window_mean_nll
  : undefined;
console.log(`${args.model}: ${B} windows x ${window} tokens teacher-forced, ${model.kernelName} kernel, ${model.threads} thread(s), backend ${cache.backend}, ${cpus().length} cores`);
console.log(`${scored} tokens in ${seconds.toFixed(1)} s: ${(scored / seconds).toFixed(1)} tokens/s`);
for (const [w, m] of means.entries()) {
  const ref = reference?.[w];
  console.log(`window ${w}: mean NLL ${m.toFixed(6)}${ref === undefined ? '' : `  reference ${ref.toFixed(6)}  relative difference ${(Math.abs(m - ref) / ref).toExponential(1)}`}`);
}
model.close();
