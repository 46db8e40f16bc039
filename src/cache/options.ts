/**
 * Options of a {@link KVCache}, and their validation.
 * @module
 */
import { type DType, parseDType } from '../core/dtype.js';
import { ArgumentError, BudgetError } from '../core/errors.js';
import { type Geometry, checkGeometry, checkInt } from '../core/geometry.js';
import type { BackendName } from '../backend/select.js';
import type { BudgetPolicy, PromptRule } from '../policies/policy.js';
import { type StorageFormat, type StorageOptions, type StoreLayout, isPacked, resolveStorage } from '../quant/storage.js';
import type { ImportanceTracker } from '../trackers/tracker.js';

/**
 * How to build a cache.
 * @example
 * ```ts
 * const options: KVCacheOptions = {
 *   geometry: { layers: 2, queryHeads: 8, kvHeads: 2, headDim: 64 },
 *   maxSequences: 4,
 *   tracker: scissorhands(),
 *   policy: fixedBudget({ tokens: 256 }),
 * };
 * ```
 */
export interface KVCacheOptions {
  readonly geometry: Geometry;
  /** Policy that sets capacities and eviction counts (e.g. `fixedBudget`, `ratioBudget`, `fullCache`). */
  readonly policy: BudgetPolicy;
  /** Importance tracker; default `scissorhands()`. */
  readonly tracker?: ImportanceTracker;
  /** Batch slots that can be open at once; default 1. */
  readonly maxSequences?: number;
  /** Element type of stored keys and values; default `'f32'`. */
  readonly dtype?: DType;
  /**
   * How keys and values are stored: `{ format: 'dense' }` (default: one row per token in `dtype`), or
   * packed KIVI-style, e.g. `{ format: 'int4', groupSize: 32, residual: 32 }` (keys per channel, values
   * per token, the newest `residual` tokens in `dtype`; see `docs/packing.md`).
   */
  readonly storage?: StorageOptions;
  /** Backend; default `'auto'` (native CPU when built, else the TypeScript reference). */
  readonly backend?: BackendName;
  /** Softmax scale; default `1 / sqrt(headDim)`. */
  readonly scale?: number;
  /**
   * Rows per chunk when a prefill needs eviction on the way (a prefill that fits goes in one piece);
   * default a quarter of the room left beside the protected windows, at least 1. With a prompt policy
   * (`snapKV`, `pyramidKV`, `adaKV`) every prefill goes in chunks of at most the policy's `chunk` rows
   * (the headroom it reserves), which is also the default.
   */
  readonly prefillChunk?: number;
  /**
   * A method for prompts, different from the one that decodes (composition): `prefill` runs with this
   * tracker and policy, whose policy must compress prompts (`snapKV`, `pyramidKV`, `adaKV`: a
   * {@link PromptRule}); everything else runs with `tracker` and `policy`, which then evict each head down
   * to the budget the prompt policy gave it. Memory is laid out by the prompt policy. When a sequence
   * switches from one method to the other, the new tracker's state restarts on every kept token (zeroed,
   * then its append rule). E.g. SnapKV for the prompt, then Scissorhands while generating:
   * `{ tracker: scissorhands(), policy: fixedBudget({ tokens: 256 }), prompt: { tracker: snapKVScores(), policy: snapKV({ tokens: 256 }) } }`.
   */
  readonly prompt?: PromptMethod;
}

/**
 * The method a cache runs on prompts when it differs from the one that decodes.
 * @example
 * ```ts
 * const prompt: PromptMethod = { tracker: snapKVScores(), policy: adaKV({ tokens: 256 }) };
 * ```
 */
export interface PromptMethod {
  /** Tracker of the prompt; default the cache's `tracker`. Its aux words: none, or as many as the cache's tracker. */
  readonly tracker?: ImportanceTracker;
  /** A prompt-compression policy (with a `prompt` rule). */
  readonly policy: BudgetPolicy;
}

/** Options after validation, with defaults filled in. */
export interface ResolvedOptions {
  readonly geometry: Geometry;
  readonly policy: BudgetPolicy;
  readonly tracker: ImportanceTracker;
  readonly maxSequences: number;
  readonly dtype: DType;
  readonly storage: StorageFormat;
  readonly backend: BackendName;
  readonly scale: number;
  readonly capacities: readonly number[];
  readonly prefillChunks: readonly number[];
  /** The prompt method when it differs from the decoding one (its tracker with the store's aux words). */
  readonly prompt?: { readonly tracker: ImportanceTracker; readonly policy: BudgetPolicy };
  /** The rule by which prefill compresses (from `prompt.policy`, else `policy`), if any. */
  readonly rule?: PromptRule;
  /** `[layer]` token slots per sequence of a per-head layout (a rule with per-head budgets). */
  readonly slots?: readonly number[];
}

function checkTracker(tracker: ImportanceTracker, argument: string): void {
  checkObject(tracker, argument, ['onAppend', 'onObserve']);
  checkInt(tracker.auxWords, `${argument}.auxWords`, 0, 1 << 16);
  if (tracker.scope !== 'head' && tracker.scope !== 'layer') throw new ArgumentError("expected 'head' or 'layer'", `${argument}.scope`);
  if (tracker.gqa !== 'mean' && tracker.gqa !== 'max') throw new ArgumentError("expected 'mean' or 'max'", `${argument}.gqa`);
}

/** The prompt method with its tracker adapted to the store's aux words, checked. */
function resolvePrompt(prompt: PromptMethod, tracker: ImportanceTracker, policy: BudgetPolicy): { tracker: ImportanceTracker; policy: BudgetPolicy } {
  if (typeof prompt !== 'object' || prompt === null) throw new ArgumentError('expected { tracker?, policy }', 'prompt');
  checkObject(prompt.policy, 'prompt.policy', ['capacity', 'evictions']);
  if (prompt.policy.prompt === undefined) {
    throw new ArgumentError('expected a prompt-compression policy (snapKV, pyramidKV, adaKV or one with a prompt rule)', 'prompt.policy');
  }
  const rule = prompt.policy.prompt;
  checkRule(rule, 'prompt.policy.prompt');
  const least = prompt.policy.sinks + rule.window;
  if (policy.sinks + Math.max(policy.recent, 1) > least + 1) {
    throw new BudgetError(
      `the decoding policy protects ${policy.sinks} sinks and ${policy.recent} recent tokens, more than a head whose prompt left it `
      + `its ${least} sinks and window can spare while decoding`, 'policy');
  }
  const own = prompt.tracker ?? tracker;
  checkTracker(own, 'prompt.tracker');
  if (own.auxWords === tracker.auxWords) return { tracker: own, policy: prompt.policy };
  if (own.auxWords !== 0) {
    throw new ArgumentError(`the prompt tracker needs ${own.auxWords} aux words per token, the cache's tracker ${tracker.auxWords}`, 'prompt.tracker');
  }
  // A tracker with no aux words never reads them: it runs on a store that has the decoding tracker's.
  return { tracker: { ...own, auxWords: tracker.auxWords }, policy: prompt.policy };
}

function checkRule(rule: PromptRule, argument: string): void {
  if (typeof rule !== 'object' || rule === null || typeof rule.tokens !== 'function') throw new ArgumentError('expected a prompt rule', argument);
  checkInt(rule.window, `${argument}.window`, 1);
  checkInt(rule.chunk, `${argument}.chunk`, 1);
  if (rule.split !== undefined && typeof rule.split !== 'function') throw new ArgumentError('expected a function', `${argument}.split`);
}

function checkObject(value: unknown, argument: string, keys: readonly string[]): void {
  if (typeof value !== 'object' || value === null) throw new ArgumentError('expected an object', argument);
  for (const key of keys) {
    if (typeof (value as Record<string, unknown>)[key] !== 'function') {
      throw new ArgumentError(`expected a ${key}() method`, argument);
    }
  }
}

/**
 * Validates options and fills in defaults; throws a typed error naming the first bad option.
 * @example
 * ```ts
 * const resolved = resolveOptions(options, scissorhands());
 * ```
 */
export function resolveOptions(options: KVCacheOptions, defaultTracker: () => ImportanceTracker): ResolvedOptions {
  if (typeof options !== 'object' || options === null) throw new ArgumentError('expected an options object', 'options');
  const geometry = checkGeometry(options.geometry, 'geometry');
  checkObject(options.policy, 'policy', ['capacity', 'evictions']);
  const policy = options.policy;
  const tracker = options.tracker ?? defaultTracker();
  checkTracker(tracker, 'tracker');
  const prompt = options.prompt === undefined ? undefined : resolvePrompt(options.prompt, tracker, policy);
  // The policy that lays memory out: the prompt's, whose budgets the decoding policy then keeps to.
  const layoutPolicy = prompt?.policy ?? policy;
  const rule = layoutPolicy.prompt;
  if (rule !== undefined) checkRule(rule, prompt === undefined ? 'policy.prompt' : 'prompt.policy.prompt');
  const maxSequences = checkInt(options.maxSequences ?? 1, 'maxSequences', 1, 1 << 16);
  const dtype = parseDType(options.dtype ?? 'f32', 'dtype');
  const storage = resolveStorage(options.storage, geometry.headDim);
  const layout: StoreLayout = { dtype, storage, auxWords: tracker.auxWords };
  const backend = options.backend ?? 'auto';
  // Packed storage runs on every backend; per-head layouts (the prompt rules) need dense rows on all of them.
  if (rule !== undefined && isPacked(storage)) {
    throw new ArgumentError('prompt compression (snapKV, pyramidKV, adaKV) needs dense storage', 'storage');
  }
  if (rule?.split !== undefined && (tracker.scope === 'layer' || prompt?.tracker.scope === 'layer')) {
    throw new ArgumentError("per-head budgets need trackers of scope 'head': one choice per layer cannot fit heads of different lengths", 'tracker');
  }
  const scale = options.scale ?? 1 / Math.sqrt(geometry.headDim);
  if (typeof scale !== 'number' || !Number.isFinite(scale) || scale <= 0) {
    throw new ArgumentError(`expected a finite positive number, got ${String(scale)}`, 'scale');
  }
  const sinks = checkInt(layoutPolicy.sinks, 'policy.sinks', 0);
  const recent = checkInt(layoutPolicy.recent, 'policy.recent', 0);
  checkInt(policy.sinks, 'policy.sinks', 0);
  checkInt(policy.recent, 'policy.recent', 0);
  const capacities: number[] = [];
  const prefillChunks: number[] = [];
  const slots: number[] = [];
  for (let layer = 0; layer < geometry.layers; layer++) {
    const capacity = layoutPolicy.capacity(layer, geometry, layout);
    if (typeof capacity !== 'number' || !Number.isInteger(capacity) || capacity < 1 || capacity > 2 ** 24) {
      throw new BudgetError(`policy.capacity(${layer}) must be an integer in [1, 2^24], got ${String(capacity)}`, 'policy');
    }
    if (sinks + recent > capacity) {
      throw new BudgetError(`capacity ${capacity} of layer ${layer} is smaller than sinks + recent = ${sinks + recent}`, 'policy');
    }
    capacities.push(capacity);
    if (rule !== undefined) {
      // Prompts go in chunks of at most the rule's headroom; per-head budgets share the layer's slots.
      const tokens = checkInt(rule.tokens(layer, geometry), 'policy.prompt.tokens', sinks + rule.window, capacity);
      prefillChunks.push(Math.min(rule.chunk, options.prefillChunk === undefined ? rule.chunk : checkInt(options.prefillChunk, 'prefillChunk', 1)));
      if (rule.split !== undefined) slots.push((tokens + rule.chunk) * geometry.kvHeads);
      continue;
    }
    const room = capacity - sinks;
    const chunk = options.prefillChunk === undefined
      ? Math.max(1, Math.floor((room - recent) / 4))
      : checkInt(options.prefillChunk, 'prefillChunk', 1);
    prefillChunks.push(Math.min(chunk, room));
  }
  return {
    geometry, policy, tracker, maxSequences, dtype, storage, backend, scale, capacities, prefillChunks,
    ...(prompt === undefined ? {} : { prompt }),
    ...(rule === undefined ? {} : { rule }),
    ...(slots.length === 0 ? {} : { slots }),
  };
}
