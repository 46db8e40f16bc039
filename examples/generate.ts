/**
 * Greedy generation with a full KV cache and with a compressed one, side by side.
 *
 *   npm run example
 *   npm run example -- --tracker h2o --budget 64 --tokens 300 --prompt "Tom had a red ball"
 *   npm run example -- --model ../shared/models/ref-12m --prompt "It was late in the evening when the stranger"
 *
 * Prints both texts, what each cache reserved and used, and how far the compressed output agrees with
 * the full-cache output. Flags: --model DIR (default: the bundled stories260K), --prompt TEXT,
 * --tokens N (new tokens, default 200), --tracker NAME (scissorhands, h2o, tova, streamingLLM, keyNorm,
 * random; default scissorhands), --budget N (tokens kept per head; default a quarter of prompt + new
 * tokens), --recent N (protected newest tokens, default 10), --sinks N (default 0 and 4 for
 * streamingLLM), --dtype f32|f16|bf16, --backend auto|cpu|reference, --threads 1|2|auto,
 * --kernel simd|js|auto (the matrix-product kernel).
 */
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { KVCache, fixedBudget, fullCache, streamingLLM, trackers, type CacheStats } from '../src/index.js';
import { LlamaModel } from './llama/model.js';
import { LlamaEngine } from './llama/engine.js';
import { loadTokenizer } from './llama/tokenizer.js';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: fileURLToPath(new URL('../models/stories260K', import.meta.url)) },
    prompt: { type: 'string', default: '' },
    tokens: { type: 'string', default: '200' },
    tracker: { type: 'string', default: 'scissorhands' },
    budget: { type: 'string' },
    recent: { type: 'string', default: '10' },
    sinks: { type: 'string' },
    dtype: { type: 'string', default: 'f32' },
    backend: { type: 'string', default: 'auto' },
    threads: { type: 'string', default: 'auto' },
    kernel: { type: 'string', default: 'auto' },
  },
});

const model = await LlamaModel.load(args.model, {
  maxRows: 1,
  threads: args.threads === 'auto' ? 'auto' : (Number(args.threads) as 1 | 2),
  kernel: args.kernel as 'simd' | 'js' | 'auto',
});
const engine = new LlamaEngine(model);
const tokenizer = loadTokenizer(args.model);
const config = model.config;

// The prompt: the tokenizer's own special tokens (stories260K adds <s>); a model whose tokenizer adds
// none (ref-12m) gets its BOS in front, as it was trained.
let prompt = tokenizer.encode(args.prompt);
if (config.bos !== undefined && prompt[0] !== config.bos) prompt = [config.bos, ...prompt];
const newTokens = Math.min(Number(args.tokens), config.maxPositions - prompt.length);
const total = prompt.length + newTokens;
const budget = args.budget === undefined ? Math.max(16, Math.ceil(total / 4)) : Number(args.budget);
const sinks = args.sinks === undefined ? (args.tracker === 'streamingLLM' ? 4 : 0) : Number(args.sinks);
const dtype = args.dtype as 'f32' | 'f16' | 'bf16';
const backend = args.backend as 'auto' | 'cpu' | 'reference';

/** Generates greedily through `cache`; returns the new tokens, the peak stats and the time taken. */
function run(cache: KVCache): { ids: number[]; peak: CacheStats; ms: number } {
  let peak = cache.stats();
  const start = performance.now();
  const [ids] = engine.generate(cache, [prompt], {
    maxNewTokens: newTokens,
    stop: [], // run the full length so both outputs can be compared token by token
    onStep: () => {
      const s = cache.stats();
      if (s.bytesUsed >= peak.bytesUsed) peak = s;
    },
  });
  return { ids: ids!.slice(prompt.length), peak, ms: performance.now() - start };
}

const kib = (bytes: number) => `${(bytes / 1024).toFixed(1)} KiB`;
const geometry = engine.geometry;

// The full cache never evicts, so it needs no importance state: a score-free tracker keeps it lean.
using full = KVCache.create({ geometry, dtype, backend, tracker: streamingLLM(), policy: fullCache({ maxTokens: total }) });
const a = run(full);
using small = KVCache.create({
  geometry, dtype, backend,
  tracker: trackers.get(args.tracker)(),
  policy: fixedBudget({ tokens: budget, sinks, recent: Number(args.recent) }),
});
const b = run(small);

let prefix = 0;
while (prefix < a.ids.length && a.ids[prefix] === b.ids[prefix]) prefix++;
const same = a.ids.filter((t, i) => t === b.ids[i]).length;

console.log(`model ${args.model} (${config.layers} layers, ${config.heads}/${config.kvHeads} heads of ${config.headDim}), backend ${full.backend}, ${model.kernelName} kernel, ${model.threads} thread(s)`);
console.log(`prompt: ${prompt.length} tokens; ${newTokens} new tokens, greedy\n`);
console.log(`--- full cache (${total} tokens) ---\n${tokenizer.decode([...prompt, ...a.ids])}\n`);
console.log(`--- ${args.tracker}, budget ${budget} tokens per head (recent ${args.recent}, sinks ${sinks}) ---\n${tokenizer.decode([...prompt, ...b.ids])}\n`);
console.log('cache memory        reserved      used at peak   entries kept / seen   evictions   (entries: token x layer x KV head)');
for (const [name, r] of [['full', a], [args.tracker, b]] as const) {
  const s = r.peak;
  console.log(`${name.padEnd(18)}  ${kib(s.bytesReserved).padStart(11)}  ${kib(s.bytesUsed).padStart(13)}   ${`${s.tokensKept} / ${s.tokensSeen}`.padStart(19)}   ${String(s.evictions).padStart(9)}`);
}
console.log(`(keys and values of every token seen, ${dtype}: ${kib(a.peak.bytesFull)}; the rest is positions and importance state)`);
console.log(`\ncompressed / full: ${(b.peak.bytesReserved / a.peak.bytesReserved).toFixed(3)} of the memory reserved, ${(b.peak.bytesUsed / a.peak.bytesUsed).toFixed(3)} of the memory used`);
console.log(`agreement with the full-cache output: the first ${prefix} of ${newTokens} new tokens are identical; ${same} of ${newTokens} (${((100 * same) / newTokens).toFixed(1)}%) match position by position`);
console.log(`speed: ${((1000 * total) / a.ms).toFixed(0)} tokens/s (full), ${((1000 * total) / b.ms).toFixed(0)} tokens/s (compressed)`);
model.close();
