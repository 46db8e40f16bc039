/**
 * The full-cache baseline.
 * @module
 */
import { checkInt } from '../core/geometry.js';
import { readOptions } from '../core/options.js';
import type { BudgetPolicy } from './policy.js';

/**
 * Options of {@link fullCache}.
 * @example
 * ```ts
 * const options: FullCacheOptions = { maxTokens: 2048 };
 * ```
 */
export interface FullCacheOptions {
  /** Tokens reserved per (sequence, layer, KV head): the longest sequence it can hold. Required. */
  readonly maxTokens: number;
}

/**
 * A {@link BudgetPolicy} made by {@link fullCache}, with its setting.
 * @example
 * ```ts
 * fullCache({ maxTokens: 2048 }).maxTokens; // 2048
 * ```
 */
export interface FullCachePolicy extends BudgetPolicy {
  /** Tokens reserved, the most a sequence can hold. */
  readonly maxTokens: number;
}

/**
 * Never evicts: the baseline every compressed cache is compared with. It reserves `maxTokens` slots;
 * a sequence that outgrows them is the cache's error to report. `maxTokens` must be an integer `>= 1`
 * ({@link ArgumentError}).
 * @example
 * ```ts
 * const policy = fullCache({ maxTokens: 2048 });
 * policy.evictions({ layer: 0, length: 2000, incoming: 1, seen: 2000 }); // 0
 * ```
 */
export function fullCache(options: FullCacheOptions): FullCachePolicy {
  const o = readOptions(options, ['maxTokens']);
  const maxTokens = checkInt(o['maxTokens'], 'maxTokens', 1);
  return Object.freeze({
    name: 'fullCache',
    sinks: 0,
    recent: 0,
    maxTokens,
    capacity: (): number => maxTokens,
    evictions: (): number => 0,
  });
}
