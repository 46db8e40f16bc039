/**
 * A budget in bytes per sequence, turned into tokens by the cache's storage format.
 * @module
 */
import { ArgumentError, BudgetError } from '../core/errors.js';
import { type Geometry, checkInt } from '../core/geometry.js';
import { readOptions } from '../core/options.js';
import { type StoreLayout, resolveStorage, storeBytesPerSequence } from '../quant/storage.js';
import { dropOption, evictionCount, protectionOptions } from './budget.js';
import type { BudgetPolicy, EvictionContext } from './policy.js';

/**
 * Options of {@link byteBudget}.
 * @example
 * ```ts
 * const options: ByteBudgetOptions = { bytes: 64 * 2 ** 20, recent: 10 };
 * ```
 */
export interface ByteBudgetOptions {
  /**
   * Bytes one sequence slot may reserve, over all layers: keys and values in the cache's storage format
   * (codes, scales, zero points, run tables and residual window when packed), positions, tracker scores
   * and words, lengths and clock. Required.
   */
  readonly bytes: number;
  /** First tokens never dropped; default 0. */
  readonly sinks?: number;
  /** Newest tokens never dropped, the incoming ones included; default 10. */
  readonly recent?: number;
  /** Tokens dropped at least, once the budget is exceeded; default 1. */
  readonly drop?: number;
}

/**
 * A {@link BudgetPolicy} made by {@link byteBudget}, with its settings.
 * @example
 * ```ts
 * const p: ByteBudgetPolicy = byteBudget({ bytes: 2 ** 26 });
 * p.tokens(geometry, { dtype: 'f16', storage: { format: 'dense' }, auxWords: 0 });
 * ```
 */
export interface ByteBudgetPolicy extends BudgetPolicy {
  /** Bytes per sequence slot, over all layers. */
  readonly bytes: number;
  /** Tokens dropped at least once the budget is exceeded. */
  readonly drop: number;
  /** The token budget (and capacity) of every layer for a geometry and store layout. */
  tokens(geometry: Geometry, layout: StoreLayout): number;
}

/**
 * Keeps as many tokens per (sequence, layer, KV head) as `bytes` pays for: the largest `t` such that
 * every layer's store at a capacity of `t` tokens reserves at most `bytes / layers` per sequence slot,
 * exactly as the cache allocates it (`stats().bytesPerSequence <= bytes`). The same token count is then
 * the budget of a `fixedBudget`: with `int4` storage the same bytes buy about 3x the tokens of
 * `f16`. The cache hands the policy its store layout (element type, storage, tracker words) at
 * creation; `capacity` without one throws {@link ArgumentError} (`layout`), and so does `evictions`
 * before any `capacity` unless the context carries the capacity.
 *
 * Checks: `bytes` a positive integer, `sinks`, `recent`, `drop` as for `fixedBudget`
 * ({@link ArgumentError}); a budget that pays for fewer than `sinks + max(recent, 1)` tokens, or a
 * `drop` above what a full cache can drop, throws {@link BudgetError} (`bytes` / `drop`) when the cache
 * is created.
 * @example
 * ```ts
 * const cache = KVCache.create({
 *   geometry, dtype: 'f16', storage: { format: 'int4' },
 *   policy: byteBudget({ bytes: 32 * 2 ** 20, recent: 10 }),
 * });
 * cache.stats().bytesPerSequence; // <= 32 MiB
 * ```
 */
export function byteBudget(options: ByteBudgetOptions): ByteBudgetPolicy {
  const o = readOptions(options, ['bytes', 'sinks', 'recent', 'drop']);
  const bytes = o['bytes'];
  if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes < 1) {
    throw new ArgumentError(`expected a positive integer, got ${String(bytes)}`, 'bytes');
  }
  const protection = protectionOptions(o);
  const { sinks, recent } = protection;
  if (o['drop'] !== undefined) checkInt(o['drop'], 'drop', 1);
  /** Per layer: the last capacity computed, for `evictions` calls that do not carry one. */
  const capacities = new Map<number, number>();

  const tokens = (geometry: Geometry, layout: StoreLayout): number => {
    const perLayer = bytes / geometry.layers;
    const storage = resolveStorage(layout.storage, geometry.headDim, 'layout.storage');
    const fits = (t: number): boolean => storeBytesPerSequence({ ...layout, storage }, geometry.kvHeads, geometry.headDim, t) <= perLayer;
    if (!fits(1)) return 0;
    let lo = 1;
    let hi = 2 ** 24;
    if (fits(hi)) return hi;
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (fits(mid)) lo = mid;
      else hi = mid;
    }
    return lo;
  };

  let drop = 1;
  return Object.freeze({
    name: 'byteBudget',
    sinks,
    recent,
    bytes,
    get drop(): number {
      return drop;
    },
    tokens,
    capacity: (layer: number, geometry: Geometry, layout?: StoreLayout): number => {
      if (layout === undefined) throw new ArgumentError('byteBudget needs the store layout to turn bytes into tokens', 'layout');
      const t = tokens(geometry, layout);
      if (t < protection.floor) {
        throw new BudgetError(
          `${bytes} bytes per sequence pay for ${t} tokens per layer and KV head, fewer than sinks + max(recent, 1) = ${protection.floor}`,
          'bytes',
        );
      }
      drop = dropOption(o, t, protection);
      capacities.set(layer, t);
      return t;
    },
    evictions: (context: EvictionContext): number => {
      const budget = context.capacity ?? capacities.get(context.layer);
      if (budget === undefined) throw new ArgumentError('no capacity known for this layer: call capacity() first, or pass context.capacity', 'context');
      return evictionCount(budget, drop, protection, context);
    },
  });
}
