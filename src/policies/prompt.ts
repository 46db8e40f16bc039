/**
 * Prompt-compression policies: SnapKV (one budget for every head), PyramidKV (budgets falling through the
 * layers) and Ada-KV (one budget per layer shared by its heads, with a per-head floor).
 * @module
 */
import { ArgumentError, BudgetError } from '../core/errors.js';
import type { Geometry } from '../core/geometry.js';
import { type OptionBag, intOption, readOptions } from '../core/options.js';
import { dropOption, evictionCount, protectionOptions } from './budget.js';
import type { BudgetPolicy, EvictionContext, PromptRule, SplitContext } from './policy.js';

/**
 * Options shared by {@link snapKV}, {@link pyramidKV} and {@link adaKV}.
 * @example
 * ```ts
 * const options: PromptPolicyOptions = { tokens: 256, window: 32, chunk: 64 };
 * ```
 */
export interface PromptPolicyOptions {
  /** The budget `B`: tokens kept per (sequence, layer, KV head), on average. Required. */
  readonly tokens: number;
  /** Observation window: the last prompt rows whose attention scores the prompt, and the newest tokens kept; default 32. */
  readonly window?: number;
  /** First tokens never dropped; default 0 (the papers have none). */
  readonly sinks?: number;
  /** Tokens dropped at least once a head is over its budget while decoding; default 1. */
  readonly drop?: number;
  /**
   * Most prompt rows a prefill chunk appends before the layer is compressed again: every head reserves
   * this much above its budget; default `max(window, floor(tokens / 4))`.
   */
  readonly chunk?: number;
}

/**
 * Options of {@link pyramidKV}.
 * @example
 * ```ts
 * const options: PyramidKVOptions = { tokens: 256, beta: 20 };
 * ```
 */
export interface PyramidKVOptions extends PromptPolicyOptions {
  /** Steepness: the last layer keeps `window + (tokens - window) / beta`; default 20. */
  readonly beta?: number;
}

/**
 * Options of {@link adaKV}.
 * @example
 * ```ts
 * const options: AdaKVOptions = { tokens: 256, floor: 0.2 };
 * ```
 */
export interface AdaKVOptions extends PromptPolicyOptions {
  /** Share of the uniform per-head candidate budget every head keeps at least; default 0.2. */
  readonly floor?: number;
}

/**
 * A prompt-compression policy, with its settings.
 * @example
 * ```ts
 * const p: PromptPolicy = snapKV({ tokens: 256 });
 * p.prompt.window; // 32
 * ```
 */
export interface PromptPolicy extends BudgetPolicy {
  /** The mean budget `B`. */
  readonly tokens: number;
  readonly drop: number;
  readonly prompt: PromptRule;
}

const SHARED = ['tokens', 'window', 'sinks', 'drop', 'chunk'] as const;

/**
 * The policy around a prompt rule: protection of the sinks and the observation window, eviction down to
 * each head's budget while decoding, and memory for `tokens(layer) + chunk` tokens per head.
 */
function promptPolicy(
  name: string, o: OptionBag, layerTokens: (layer: number, geometry: Geometry, base: number, window: number) => number,
  split?: (context: SplitContext) => Int32Array,
): PromptPolicy {
  const tokens = intOption(o, 'tokens', 0, 1);
  const window = intOption(o, 'window', 32, 1, 1 << 20);
  const { sinks, floor } = protectionOptions({ sinks: o['sinks'], recent: window });
  if (tokens <= sinks + window) {
    throw new BudgetError(`budget ${tokens} leaves no candidate beside sinks ${sinks} and window ${window}`, 'tokens');
  }
  const drop = dropOption(o, sinks + window + 1, { sinks, recent: window, floor });
  const chunk = intOption(o, 'chunk', Math.max(window, Math.floor(tokens / 4)), 1);
  const protection = { sinks, recent: window };
  const tokensAt = (layer: number, geometry: Geometry): number => Math.max(sinks + window + 1, layerTokens(layer, geometry, tokens, window));
  const prompt: PromptRule = Object.freeze({ window, chunk, tokens: tokensAt, ...(split === undefined ? {} : { split }) });
  return Object.freeze({
    name,
    sinks,
    recent: window,
    tokens,
    drop,
    prompt,
    // A head's slots: its budget and room for one chunk (with per-head budgets, one head may take up to
    // the whole layer's budget).
    capacity: (layer: number, geometry: Geometry): number =>
      (split === undefined ? tokensAt(layer, geometry) : tokensAt(layer, geometry) * geometry.kvHeads) + chunk,
    evictions: (context: EvictionContext): number => evictionCount(tokens, drop, protection, context),
  });
}

/**
 * SnapKV (Li et al., 2024): after a prompt, every KV head keeps the newest `window` tokens and the
 * `tokens - window` earlier ones that the last `window` prompt queries attended to most (their
 * probabilities summed over the window rows, GQA-averaged, smoothed by the tracker's pooling). Use it with
 * the {@link snapKVScores} tracker (window attention, average pooling of 5), alone or as the `prompt` of a
 * cache that decodes with another method. While decoding each head evicts down to its budget, lowest
 * score first (with `snapKVScores` the scores keep summing attention: H2O from the observation window on).
 *
 * Memory: `tokens + chunk` token slots per (sequence, layer, KV head). Checks: `tokens > sinks + window`
 * ({@link BudgetError}), integer options ({@link ArgumentError}).
 * @example
 * ```ts
 * using cache = KVCache.create({ geometry, tracker: snapKVScores(), policy: snapKV({ tokens: 256 }) });
 * ```
 */
export function snapKV(options: PromptPolicyOptions): PromptPolicy {
  const o = readOptions(options, SHARED);
  return promptPolicy('snapKV', o, (_layer, _geometry, tokens) => tokens);
}

/**
 * PyramidKV (Cai et al., 2024): SnapKV's selection with per-layer budgets that fall linearly through the
 * layers, as the reference implementation computes them: with `min = floor((B - window) / beta)`,
 * `max = 2 (B - window) - min` and `step = floor((max - min) / (layers - 1))`, layer `l` keeps
 * `window + max - l * step` tokens per head (one layer: `B`), and never fewer than `sinks + window + 1`.
 * The budgets sum to `layers x B` up to the rounding of `step` (slightly more).
 * @example
 * ```ts
 * pyramidKV({ tokens: 256 }).prompt.tokens(0, { layers: 32, queryHeads: 32, kvHeads: 8, headDim: 128 }); // 469 (layer 31: 66)
 * ```
 */
export function pyramidKV(options: PyramidKVOptions): PromptPolicy {
  const o = readOptions(options, [...SHARED, 'beta']);
  const beta = intOption(o, 'beta', 20, 1);
  return promptPolicy('pyramidKV', o, (layer, geometry, tokens, window) => {
    if (geometry.layers === 1) return tokens;
    const min = Math.floor((tokens - window) / beta);
    const max = 2 * (tokens - window) - min;
    const step = Math.floor((max - min) / (geometry.layers - 1));
    return window + max - layer * step;
  });
}

/**
 * Ada-KV (Feng et al., 2024) over SnapKV's scores: one budget per layer, `tokens x kvHeads`, shared by its
 * heads. Beside its sinks and observation window, each head keeps at least `floor(f * keep / kvHeads)` of
 * its best candidates (`f` the `floor` option, `keep` the layer's candidate budget), and the rest of the
 * budget goes to the best remaining candidates of the whole layer (global top-k; equal scores: the lower
 * head and slot go first). Heads then keep different numbers of tokens, the store lays them out so, and
 * each head evicts down to its own budget while decoding. Needs dense storage and a tracker of scope
 * `head`. Memory: `(tokens + chunk) x kvHeads` slots per (sequence, layer).
 * @example
 * ```ts
 * using cache = KVCache.create({ geometry, tracker: snapKVScores(), policy: adaKV({ tokens: 256 }) });
 * ```
 */
export function adaKV(options: AdaKVOptions): PromptPolicy {
  const o = readOptions(options, [...SHARED, 'floor']);
  const floorOption = o['floor'] ?? 0.2;
  if (typeof floorOption !== 'number' || !(floorOption >= 0 && floorOption <= 1)) {
    throw new ArgumentError(`expected a number in [0, 1], got ${String(floorOption)}`, 'floor');
  }
  return promptPolicy('adaKV', o, (_layer, _geometry, tokens) => tokens, (context) => adaSplit(context, floorOption));
}

/** Higher `(score, head, slot)` first, NaN last: the order in which candidates are kept. */
function keptFirst(a: { score: number; head: number; slot: number }, b: { score: number; head: number; slot: number }): number {
  const nanA = Number.isNaN(a.score);
  const nanB = Number.isNaN(b.score);
  if (nanA !== nanB) return nanA ? 1 : -1;
  if (!nanA && a.score !== b.score) return b.score - a.score;
  return b.head !== a.head ? b.head - a.head : b.slot - a.slot;
}

/**
 * Ada-KV's split: every head first keeps its best `floor(f * keep / heads)` candidates (or all it has),
 * then the rest of `keep` goes to the best remaining candidates over all heads. Within a head the order is
 * the eviction order reversed (higher score first, the later slot first on ties), so the counts returned
 * keep exactly the tokens the global ranking chose.
 * @example
 * ```ts
 * adaSplit({ layer: 0, keep: 4, scores: [Float32Array.of(9, 8, 7), Float32Array.of(1, 2, 3)] }, 0.5); // [3, 1]
 * ```
 */
export function adaSplit(context: SplitContext, floor: number): Int32Array {
  const heads = context.scores.length;
  const counts = new Int32Array(heads);
  const total = context.scores.reduce((a, s) => a + s.length, 0);
  if (total <= context.keep) {
    context.scores.forEach((s, h) => (counts[h] = s.length));
    return counts;
  }
  const least = Math.floor((floor * context.keep) / heads);
  const rest: { score: number; head: number; slot: number }[] = [];
  context.scores.forEach((scores, head) => {
    const ranked = Array.from(scores, (score, slot) => ({ score, head, slot })).sort(keptFirst);
    counts[head] = Math.min(least, ranked.length);
    for (let i = counts[head]!; i < ranked.length; i++) rest.push(ranked[i]!);
  });
  rest.sort(keptFirst);
  const left = context.keep - counts.reduce((a, b) => a + b, 0);
  for (let i = 0; i < Math.min(left, rest.length); i++) counts[rest[i]!.head]! += 1;
  return counts;
}
