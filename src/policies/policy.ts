/**
 * The budget-policy interface: how many tokens a cache reserves, which ones are protected, and how
 * many to drop when new tokens arrive. Which tokens go is the tracker's business (lowest score first).
 * @module
 */
import type { Geometry } from '../core/geometry.js';
import type { StoreLayout } from '../quant/storage.js';

/**
 * The state a policy decides on, for one (sequence, layer).
 * @example
 * ```ts
 * const e = policy.evictions({ layer: 0, length: 512, incoming: 1, seen: 2000 });
 * ```
 */
export interface EvictionContext {
  readonly layer: number;
  /** Tokens kept now (per KV head). */
  readonly length: number;
  /** Tokens about to be appended. */
  readonly incoming: number;
  /** Tokens this (sequence, layer) has seen so far, before the incoming ones. */
  readonly seen: number;
  /** Token slots the layer reserves per (sequence, KV head); the cache always passes it. */
  readonly capacity?: number;
  /**
   * The tokens this KV head may keep, when a prompt policy ({@link PromptRule}) has given the heads of the
   * layer their own budgets; the cache then asks for each head separately. Token-budget policies
   * (`fixedBudget`, `layerBudget`, ...) evict down to it instead of their own budget.
   */
  readonly budget?: number;
}

/**
 * What one prompt compression splits among the heads of a layer ({@link PromptRule.split}).
 * @example
 * ```ts
 * const context: SplitContext = { layer: 0, keep: 96, scores: [Float32Array.of(0.5, 0.1), Float32Array.of(0.2)] };
 * ```
 */
export interface SplitContext {
  readonly layer: number;
  /** Candidate tokens the layer keeps in all, over its heads. */
  readonly keep: number;
  /** Per KV head, the (pooled) scores of its candidates, in slot order (higher is kept first). */
  readonly scores: readonly Float32Array[];
}

/**
 * How a policy compresses prompts (SnapKV, PyramidKV, Ada-KV): the cache prefills in chunks of at most
 * `chunk` rows and, after each chunk that leaves a layer over its budget, keeps per head the newest
 * `window` tokens, the sinks, and the candidates in between with the highest scores, where the scores are
 * the attention of the chunk's last `window` rows (the observation window; the tracker's state restarts
 * before them) pooled by the tracker's `pooling`. Memory: `tokens(layer) + chunk` slots per head, in all.
 * @example
 * ```ts
 * const rule: PromptRule = { window: 32, chunk: 64, tokens: () => 256 };
 * ```
 */
export interface PromptRule {
  /** Observation window: rows whose attention scores a compression, and newest tokens it keeps. */
  readonly window: number;
  /** Most prompt rows one chunk appends beyond the budget (the headroom every head reserves). */
  readonly chunk: number;
  /** Tokens a head of `layer` keeps after a compression, on average over the layer's heads. */
  tokens(layer: number, geometry: Geometry): number;
  /**
   * Per-head budgets: how many candidates each head keeps (integers, each at most its candidates, in all
   * at most `keep`). Absent: every head keeps `tokens(layer)` tokens.
   */
  split?(context: SplitContext): Int32Array;
}

/**
 * Decides capacities and eviction counts. The cache guarantees that what it asks is feasible: it
 * never appends more than `capacity - sinks` tokens at once, and it checks that the answer keeps the
 * cache within `capacity` and never touches protected tokens.
 *
 * @example
 * ```ts
 * const everyOther: BudgetPolicy = {
 *   name: 'half', sinks: 4, recent: 16,
 *   capacity: () => 1024,
 *   evictions: ({ length, incoming }) => Math.max(0, length + incoming - 1024),
 * };
 * ```
 */
export interface BudgetPolicy {
  readonly name: string;
  /** First tokens of a sequence that are never dropped. */
  readonly sinks: number;
  /** Newest tokens (the incoming ones included) that are never dropped. */
  readonly recent: number;
  /**
   * Token slots reserved per (sequence, KV head) of a layer; memory is reserved from this up front.
   * `layout` (element type, storage format, tracker words; the cache always passes it) lets a policy
   * derive tokens from bytes.
   */
  capacity(layer: number, geometry: Geometry, layout?: StoreLayout): number;
  /** How many kept tokens to drop before `incoming` tokens are appended. */
  evictions(context: EvictionContext): number;
  /** Present on prompt-compression policies (`snapKV`, `pyramidKV`, `adaKV`): how prefill compresses. */
  readonly prompt?: PromptRule;
}
