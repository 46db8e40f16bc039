/**
 * The {@link cacheConfigArb} arbitrary.
 * @module
 */
import * as fc from 'fast-check';
import { DTYPES, type DType } from '../core/dtype.js';
import type { Geometry } from '../core/geometry.js';
import type { BudgetPolicy } from '../policies/policy.js';
import type { ImportanceTracker } from '../trackers/tracker.js';
import type { CacheConfig } from './config.js';
import { geometryArb } from './geometry-arb.js';
import { policySpecArb } from './policy-spec-arb.js';
import type { Spec } from './spec.js';
import { trackerSpecArb } from './tracker-spec-arb.js';

/**
 * Constraints of {@link cacheConfigArb}; each part defaults to the kit's own arbitrary.
 * @example
 * ```ts
 * const c: CacheConfigConstraints = { tracker: fc.constant(trackerSpec('h2o')), dtypes: ['f32'] };
 * ```
 */
export interface CacheConfigConstraints {
  /** Default {@link geometryArb}(). */
  readonly geometry?: fc.Arbitrary<Geometry>;
  /** Default {@link trackerSpecArb}(): every built-in. */
  readonly tracker?: fc.Arbitrary<Spec<ImportanceTracker>>;
  /** Default {@link policySpecArb}(): every built-in, small budgets. */
  readonly policy?: fc.Arbitrary<Spec<BudgetPolicy>>;
  /** Default all of `f32`, `f16`, `bf16`. */
  readonly dtypes?: readonly DType[];
  /** Most sequence slots; default 3. */
  readonly maxSequences?: number;
}

/**
 * Cache configurations: tracker x policy x dtype x batch slots, over small geometries, sometimes with
 * an explicit `prefillChunk` (1 to 6 rows) so that long prompts go through the cache in chunks.
 *
 * @example
 * ```ts
 * import fc from 'fast-check';
 * import { cacheConfigArb, createCache } from 'scissorhands/testing';
 * fc.assert(fc.property(cacheConfigArb(), (config) => {
 *   using cache = createCache(config, 'reference');
 *   return cache.stats().tokensKept === 0;
 * }));
 * ```
 */
export function cacheConfigArb(constraints: CacheConfigConstraints = {}): fc.Arbitrary<CacheConfig> {
  return fc
    .record({
      geometry: constraints.geometry ?? geometryArb(),
      tracker: constraints.tracker ?? trackerSpecArb(),
      policy: constraints.policy ?? policySpecArb(),
      dtype: fc.constantFrom(...(constraints.dtypes ?? DTYPES)),
      maxSequences: fc.integer({ min: 1, max: constraints.maxSequences ?? 3 }),
      prefillChunk: fc.option(fc.integer({ min: 1, max: 6 }), { nil: undefined, freq: 3 }),
    })
    .map(({ prefillChunk, ...rest }): CacheConfig => (prefillChunk === undefined ? rest : { ...rest, prefillChunk }));
}
