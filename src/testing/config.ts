/**
 * A cache configuration as plain, printable data, and the cache it builds.
 * @module
 */
import type { BackendName } from '../backend/select.js';
import { KVCache } from '../cache/kv-cache.js';
import type { DType } from '../core/dtype.js';
import type { Geometry } from '../core/geometry.js';
import type { BudgetPolicy } from '../policies/policy.js';
import { type StorageOptions, type StoreLayout, resolveStorage } from '../quant/storage.js';
import type { ImportanceTracker } from '../trackers/tracker.js';
import type { Spec } from './spec.js';

/**
 * Everything needed to build a {@link KVCache}, with trackers and policies as printable recipes.
 * @example
 * ```ts
 * const config: CacheConfig = {
 *   geometry: { layers: 1, queryHeads: 2, kvHeads: 1, headDim: 4 },
 *   tracker: trackerSpec('h2o'), policy: policySpec('fixedBudget', { tokens: 8, recent: 2 }),
 *   dtype: 'f32', maxSequences: 2,
 * };
 * ```
 */
export interface CacheConfig {
  readonly geometry: Geometry;
  readonly tracker: Spec<ImportanceTracker>;
  readonly policy: Spec<BudgetPolicy>;
  readonly dtype: DType;
  readonly maxSequences: number;
  /** `prefillChunk` option; absent means the cache's default. */
  readonly prefillChunk?: number;
  /** `storage` option; absent means dense. */
  readonly storage?: StorageOptions;
  /** `prompt` option (composition): the method prefill runs with; absent means the cache's own. */
  readonly prompt?: { readonly tracker?: Spec<ImportanceTracker>; readonly policy: Spec<BudgetPolicy> };
}

/**
 * Builds a cache from a configuration on a backend (fresh tracker and policy instances).
 * @example
 * ```ts
 * using cache = createCache(config, 'reference');
 * ```
 */
export function createCache(config: CacheConfig, backend: BackendName): KVCache {
  return KVCache.create({
    geometry: config.geometry,
    tracker: config.tracker.create(),
    policy: config.policy.create(),
    dtype: config.dtype,
    maxSequences: config.maxSequences,
    backend,
    ...(config.prefillChunk === undefined ? {} : { prefillChunk: config.prefillChunk }),
    ...(config.storage === undefined ? {} : { storage: config.storage }),
    ...(config.prompt === undefined ? {} : {
      prompt: { policy: config.prompt.policy.create(), ...(config.prompt.tracker === undefined ? {} : { tracker: config.prompt.tracker.create() }) },
    }),
  });
}

/**
 * The store layout a configuration's cache hands its policy (element type, storage format, tracker
 * words per token), for calling `policy.capacity` as the cache does.
 * @example
 * ```ts
 * const capacity = config.policy.create().capacity(0, config.geometry, configLayout(config));
 * ```
 */
export function configLayout(config: CacheConfig): StoreLayout {
  return {
    dtype: config.dtype,
    storage: resolveStorage(config.storage, config.geometry.headDim),
    auxWords: config.tracker.create().auxWords,
  };
}
