/**
 * Options of a {@link KVCache}, and their validation.
 * @module
 */
import { type DType, parseDType } from '../core/dtype.js';
import { ArgumentError, BackendError, BudgetError } from '../core/errors.js';
import { type Geometry, checkGeometry, checkInt } from '../core/geometry.js';
import type { BackendName } from '../backend/select.js';
import type { BudgetPolicy } from '../policies/policy.js';
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
   * default a quarter of the room left beside the protected windows, at least 1.
   */
  readonly prefillChunk?: number;
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
  checkObject(tracker, 'tracker', ['onAppend', 'onObserve']);
  checkInt(tracker.auxWords, 'tracker.auxWords', 0, 1 << 16);
  if (tracker.scope !== 'head' && tracker.scope !== 'layer') throw new ArgumentError("expected 'head' or 'layer'", 'tracker.scope');
  if (tracker.gqa !== 'mean' && tracker.gqa !== 'max') throw new ArgumentError("expected 'mean' or 'max'", 'tracker.gqa');
  const maxSequences = checkInt(options.maxSequences ?? 1, 'maxSequences', 1, 1 << 16);
  const dtype = parseDType(options.dtype ?? 'f32', 'dtype');
  const storage = resolveStorage(options.storage, geometry.headDim);
  const layout: StoreLayout = { dtype, storage, auxWords: tracker.auxWords };
  const backend = options.backend ?? 'auto';
  if (isPacked(storage) && backend === 'cuda') {
    throw new BackendError("packed storage runs on the 'cpu' and 'reference' backends; the cuda backend stores dense keys and values", 'storage');
  }
  const scale = options.scale ?? 1 / Math.sqrt(geometry.headDim);
  if (typeof scale !== 'number' || !Number.isFinite(scale) || scale <= 0) {
    throw new ArgumentError(`expected a finite positive number, got ${String(scale)}`, 'scale');
  }
  const sinks = checkInt(policy.sinks, 'policy.sinks', 0);
  const recent = checkInt(policy.recent, 'policy.recent', 0);
  const capacities: number[] = [];
  const prefillChunks: number[] = [];
  for (let layer = 0; layer < geometry.layers; layer++) {
    const capacity = policy.capacity(layer, geometry, layout);
    if (typeof capacity !== 'number' || !Number.isInteger(capacity) || capacity < 1 || capacity > 2 ** 24) {
      throw new BudgetError(`policy.capacity(${layer}) must be an integer in [1, 2^24], got ${String(capacity)}`, 'policy');
    }
    if (sinks + recent > capacity) {
      throw new BudgetError(`capacity ${capacity} of layer ${layer} is smaller than sinks + recent = ${sinks + recent}`, 'policy');
    }
    capacities.push(capacity);
    const room = capacity - sinks;
    const chunk = options.prefillChunk === undefined
      ? Math.max(1, Math.floor((room - recent) / 4))
      : checkInt(options.prefillChunk, 'prefillChunk', 1);
    prefillChunks.push(Math.min(chunk, room));
  }
  return { geometry, policy, tracker, maxSequences, dtype, storage, backend, scale, capacities, prefillChunks };
}
