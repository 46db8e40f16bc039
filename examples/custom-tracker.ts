/**
 * A tracker and a budget policy written in TypeScript, used with KVCache on the bundled stories260K.
 *
 *   npx tsx examples/custom-tracker.ts
 *
 * - `decayedAttention` (an {@link ImportanceTracker}): a token's score is an exponential moving average of
 *   the attention it receives, so tokens that stop being looked at fade. Lower score = evicted first.
 * - `halfOfSeen` (a {@link BudgetPolicy}): keep at most half of the tokens seen so far (never fewer than
 *   `floor`, never more than `cap`, the capacity reserved up front), protecting 4 sinks and 8 recent tokens.
 *
 * The decode loop is written out with `engine.step` to show what an engine does per step; `cache.inspect`
 * then shows which original positions one head kept.
 */
import { fileURLToPath } from 'node:url';
import { KVCache, fullCache, streamingLLM, type BudgetPolicy, type ImportanceTracker } from '../src/index.js';
import { LlamaModel } from './llama/model.js';
import { LlamaEngine, argmax } from './llama/engine.js';
import { loadTokenizer } from './llama/tokenizer.js';

function decayedAttention(decay = 0.9): ImportanceTracker {
  return {
    name: 'decayedAttention',
    input: 'attention', // the cache hands over each step's attention probabilities
    scope: 'head', // each KV head evicts on its own scores
    auxWords: 0, // no per-token state beyond the score
    gqa: 'max', // a KV head's probability: the largest over the query heads that read it
    onAppend(t) {
      t.scores[t.index] = 1; // a new token starts out important
    },
    onObserve(o) {
      for (let j = 0; j < o.length; j++) o.scores[j] = decay * o.scores[j]! + (1 - decay) * o.probs[j]!;
    },
  };
}

function halfOfSeen(floor: number, cap: number): BudgetPolicy {
  const sinks = 4;
  const recent = 8;
  if (floor < sinks + recent || cap < floor) throw new Error('need sinks + recent <= floor <= cap');
  return {
    name: 'halfOfSeen',
    sinks,
    recent,
    capacity: () => cap,
    evictions: ({ length, incoming, seen }) => {
      const allowed = Math.min(cap, Math.max(floor, Math.ceil((seen + incoming) / 2)));
      return Math.max(0, length + incoming - allowed);
    },
  };
}

const dir = fileURLToPath(new URL('../models/stories260K', import.meta.url));
const model = await LlamaModel.load(dir, { maxRows: 2 });
const engine = new LlamaEngine(model);
const tokenizer = loadTokenizer(dir);
const steps = 300;

using full = KVCache.create({ geometry: engine.geometry, maxSequences: 1, tracker: streamingLLM(), policy: fullCache({ maxTokens: steps }) });
using custom = KVCache.create({ geometry: engine.geometry, maxSequences: 1, tracker: decayedAttention(), policy: halfOfSeen(32, 96) });

// Both caches decode the same prompt, one token per step: row 0 through `full`, row 1 through `custom`.
const a = full.open();
const b = custom.open();
const outA = tokenizer.encode('Once upon a time, there was a little dog named Max.');
const outB = [...outA];
const V = model.config.vocabSize;
for (let pos = 0; pos + 1 < steps; pos++) {
  const logitsA = engine.step(full, [a], [outA[pos]!], [pos]);
  if (pos + 1 >= outA.length) outA.push(argmax(logitsA, 0, V));
  const logitsB = engine.step(custom, [b], [outB[pos]!], [pos]);
  if (pos + 1 >= outB.length) outB.push(argmax(logitsB, 0, V));
}

const kept = custom.inspect(b, model.config.layers - 1, 0);
const s = custom.stats();
console.log(`--- full cache ---\n${tokenizer.decode(outA)}\n`);
console.log(`--- decayedAttention + halfOfSeen(32, 96) ---\n${tokenizer.decode(outB)}\n`);
console.log(`kept per head: ${custom.length(b, 0)} of ${custom.seen(b)} tokens seen; reserved ${(s.bytesReserved / 1024).toFixed(1)} KiB vs ${(full.stats().bytesReserved / 1024).toFixed(1)} KiB for the full cache`);
console.log(`last layer, KV head 0 keeps positions: ${[...kept.positions].join(' ')}`);
console.log(`same token at ${outB.filter((t, i) => t === outA[i]).length} of ${steps} positions`);
model.close();
