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
}
