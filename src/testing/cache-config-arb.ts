/**
 * The {@link cacheConfigArb} arbitrary.
 * @module
 */
import * as fc from 'fast-check';
import { DTYPES, type DType } from '../core/dtype.js';
import type { Geometry } from '../core/geometry.js';
import type { BudgetPolicy } from '../policies/policy.js';
import type { PackFormat } from '../quant/format.js';
import { type StorageOptions, storeBytesPerSequence } from '../quant/storage.js';
import type { ImportanceTracker } from '../trackers/tracker.js';
import { type CacheConfig, configLayout } from './config.js';
import { geometryArb } from './geometry-arb.js';
import { policySpecArb } from './policy-spec-arb.js';
import { type Spec, policySpec } from './spec.js';
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
  /**
   * Storage formats to draw; default `['dense']`. A packed format is drawn with a group size (8, 16 or 32)
   * that divides the head size and a residual window of 0 to 8 tokens (geometries whose head size is not
   * a multiple of 8 stay dense).
   */
  readonly storages?: readonly ('dense' | PackFormat)[];
  /**
   * Whether a third of the configurations replace their policy by a `byteBudget` whose bytes pay for 2
   * to 16 tokens in the drawn layout; default false.
   */
  readonly byteBudgets?: boolean;
}

/** A storage option for a head size, or none (dense). */
function storageArb(formats: readonly ('dense' | PackFormat)[], headDim: number): fc.Arbitrary<StorageOptions | undefined> {
  const groups = [8, 16, 32].filter((g) => headDim % g === 0);
  const packed = formats.filter((f): f is PackFormat => f !== 'dense');
  const options: fc.Arbitrary<StorageOptions | undefined>[] = [];
  if (formats.includes('dense') || groups.length === 0 || packed.length === 0) options.push(fc.constant(undefined));
  if (groups.length > 0 && packed.length > 0) {
    options.push(fc.record({
      format: fc.constantFrom(...packed),
      groupSize: fc.constantFrom(...groups),
      residual: fc.constantFrom(0, 1, 3, 8),
    }));
  }
  return fc.oneof(...options);
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
  const base = fc
    .record({
      geometry: constraints.geometry ?? geometryArb(),
      tracker: constraints.tracker ?? trackerSpecArb(),
      policy: constraints.policy ?? policySpecArb(),
      dtype: fc.constantFrom(...(constraints.dtypes ?? DTYPES)),
      maxSequences: fc.integer({ min: 1, max: constraints.maxSequences ?? 3 }),
      prefillChunk: fc.option(fc.integer({ min: 1, max: 6 }), { nil: undefined, freq: 3 }),
    })
    .map(({ prefillChunk, ...rest }): CacheConfig => (prefillChunk === undefined ? rest : { ...rest, prefillChunk }));
  const storages = constraints.storages ?? ['dense'];
  const stored = storages.length === 1 && storages[0] === 'dense'
    ? base
    : base.chain((config) => storageArb(storages, config.geometry.headDim).map((storage): CacheConfig => (storage === undefined ? config : { ...config, storage })));
  if (constraints.byteBudgets !== true) return stored;
  return stored.chain((config) => fc.oneof(
    { arbitrary: fc.constant(config), weight: 2 },
    { arbitrary: byteBudgetArb(config).map((policy): CacheConfig => ({ ...config, policy })), weight: 1 },
  ));
}

/** A `byteBudget` paying for 2 to 16 tokens per head in a configuration's layout (sinks and recent small). */
function byteBudgetArb(config: CacheConfig): fc.Arbitrary<Spec<BudgetPolicy>> {
  const { geometry } = config;
  const layout = configLayout(config);
  const perToken = (t: number): number => geometry.layers * storeBytesPerSequence(layout, geometry.kvHeads, geometry.headDim, t);
  return fc.record({ sinks: fc.integer({ min: 0, max: 1 }), recent: fc.integer({ min: 0, max: 2 }), extra: fc.integer({ min: 0, max: 14 }), slack: fc.nat({ max: 99 }) })
    .map(({ sinks, recent, extra, slack }) => {
      const tokens = sinks + Math.max(recent, 1) + extra;
      // Between the bytes of `tokens` and those of `tokens + 1`: the budget must give exactly `tokens`.
      const bytes = perToken(tokens) + Math.floor(((perToken(tokens + 1) - perToken(tokens) - 1) * slack) / 100);
      return policySpec('byteBudget', { bytes, sinks, recent });
    });
}
