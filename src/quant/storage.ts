/**
 * The storage format of a cache (dense, or packed KIVI-style) and the exact bytes a layer's store
 * reserves for it, which byte budgets are derived from. See `docs/packing.md`.
 * @module
 */
import { type DType, bytesPerElement } from '../core/dtype.js';
import { ArgumentError } from '../core/errors.js';
import { checkInt } from '../core/geometry.js';
import { readOptions } from '../core/options.js';
import { type PackFormat, formatBits, parsePackFormat } from './format.js';

/**
 * Packed storage of a cache: keys quantised per channel (a group is `groupSize` tokens of one channel),
 * values per token (a group is `groupSize` channels of one token), the newest `residual` tokens kept in
 * the cache's element type.
 * @example
 * ```ts
 * const storage: PackedStorageOptions = { format: 'int4', groupSize: 32, residual: 32 };
 * ```
 */
export interface PackedStorageOptions {
  readonly format: PackFormat;
  /** Tokens per key group and channels per value group: a multiple of 8 that divides `headDim`; default 32. */
  readonly groupSize?: number;
  /** Newest tokens always kept in full precision; default 32. */
  readonly residual?: number;
}

/**
 * Keys and values in the cache's element type, one row per token (the default).
 * @example
 * ```ts
 * const storage: DenseStorageOptions = { format: 'dense' };
 * ```
 */
export interface DenseStorageOptions {
  readonly format: 'dense';
}

/**
 * The `storage` option of a cache.
 * @example
 * ```ts
 * KVCache.create({ geometry, policy, dtype: 'f16', storage: { format: 'int4' } });
 * ```
 */
export type StorageOptions = DenseStorageOptions | PackedStorageOptions;

/**
 * A validated packed storage format.
 * @example
 * ```ts
 * const s: PackedStorage = resolveStorage({ format: 'int4' }, 128) as PackedStorage;
 * s.bits; // 4
 * ```
 */
export interface PackedStorage {
  readonly format: PackFormat;
  readonly bits: 2 | 4 | 8;
  readonly groupSize: number;
  readonly residual: number;
}

/**
 * A validated storage format.
 * @example
 * ```ts
 * const dense: StorageFormat = { format: 'dense' };
 * ```
 */
export type StorageFormat = DenseStorageOptions | PackedStorage;

/**
 * Whether a storage format is packed.
 * @example
 * ```ts
 * if (isPacked(storage)) console.log(storage.bits);
 * ```
 */
export function isPacked(storage: StorageFormat | undefined): storage is PackedStorage {
  return storage !== undefined && storage.format !== 'dense';
}

/**
 * Validates a `storage` option for a head size; throws {@link ArgumentError} naming the first bad field
 * (`storage.groupSize` when the group size is not a multiple of 8 dividing `headDim`).
 * @example
 * ```ts
 * resolveStorage({ format: 'int4', groupSize: 32 }, 128);
 * ```
 */
export function resolveStorage(value: unknown, headDim: number, argument = 'storage'): StorageFormat {
  if (value === undefined) return { format: 'dense' };
  if (typeof value !== 'object' || value === null) throw new ArgumentError("expected { format: 'dense' | 'int2' | 'int4' | 'int8', ... }", argument);
  if ((value as { format?: unknown }).format === 'dense') {
    readOptions(value, ['format']);
    return { format: 'dense' };
  }
  // `bits` is accepted so that a resolved format can be passed again.
  const o = readOptions(value, ['format', 'groupSize', 'residual', 'bits']);
  const format = parsePackFormat(o['format'], `${argument}.format`);
  if (o['bits'] !== undefined && o['bits'] !== formatBits(format)) {
    throw new ArgumentError(`expected ${formatBits(format)} for ${format}, got ${String(o['bits'])}`, `${argument}.bits`);
  }
  const groupSize = o['groupSize'] === undefined ? 32 : checkInt(o['groupSize'], `${argument}.groupSize`, 8, 512);
  if (groupSize % 8 !== 0) throw new ArgumentError(`expected a multiple of 8, got ${groupSize}`, `${argument}.groupSize`);
  if (headDim % groupSize !== 0) {
    throw new ArgumentError(`group size ${groupSize} does not divide the head size ${headDim}`, `${argument}.groupSize`);
  }
  const residual = o['residual'] === undefined ? 32 : checkInt(o['residual'], `${argument}.residual`, 0, 1 << 16);
  return Object.freeze({ format, bits: formatBits(format), groupSize, residual });
}

/**
 * What the bytes of a layer's store depend on besides its capacity: the element type, the storage
 * format and the tracker's words per token. The cache passes it to a policy's `capacity()`.
 * @example
 * ```ts
 * const layout: StoreLayout = { dtype: 'f16', storage: { format: 'dense' }, auxWords: 13 };
 * ```
 */
export interface StoreLayout {
  readonly dtype: DType;
  readonly storage: StorageFormat;
  readonly auxWords: number;
}

/**
 * The per-(sequence, KV head) sizes of packed storage at a capacity of `capacity` tokens:
 * `packedSlots = capacity - residual` token slots of codes when `capacity >= residual + groupSize`
 * (else 0: such a cache never fills a group beside its residual window, so never packs),
 * `residualSlots = min(capacity, residual + groupSize)` full-precision slots, and
 * `maxRuns = 2 * ceil(packedSlots / groupSize)` key runs (enough that two neighbours can always be
 * merged when a new run needs an entry; see `docs/packing.md`).
 * @example
 * ```ts
 * packedSizes({ format: 'int4', bits: 4, groupSize: 32, residual: 32 }, 1024); // { packedSlots: 992, residualSlots: 64, maxRuns: 62 }
 * ```
 */
export function packedSizes(storage: PackedStorage, capacity: number): { packedSlots: number; residualSlots: number; maxRuns: number } {
  const packedSlots = capacity >= storage.residual + storage.groupSize ? capacity - storage.residual : 0;
  return {
    packedSlots,
    residualSlots: Math.min(capacity, storage.residual + storage.groupSize),
    maxRuns: 2 * Math.ceil(packedSlots / storage.groupSize),
  };
}

/**
 * Bytes of keys and values one (sequence, KV head) reserves at a capacity (codes, scales, zero points,
 * run table and residual window for packed storage), without positions and tracker state.
 * @example
 * ```ts
 * kvBytesPerHead({ format: 'dense' }, 'f16', 128, 1024); // 524288
 * ```
 */
export function kvBytesPerHead(storage: StorageFormat, dtype: DType, headDim: number, capacity: number): number {
  const element = bytesPerElement(dtype);
  if (!isPacked(storage)) return capacity * 2 * headDim * element;
  const { packedSlots, residualSlots, maxRuns } = packedSizes(storage, capacity);
  const codes = (headDim * storage.bits) / 8;
  const valueGroups = headDim / storage.groupSize;
  return packedSlots * (2 * codes + 4 * valueGroups) // key and value codes, value scales and zeros
    + maxRuns * (4 * headDim + 4 + 1) // key scales and zeros, run lengths and generations
    + residualSlots * 2 * headDim * element // the residual window
    + 8; // packed tokens and runs in use
}

/**
 * Bytes one sequence slot reserves in one layer's store: keys and values ({@link kvBytesPerHead}), plus
 * positions, scores and tracker words per token slot, per-head lengths and the sequence's clock.
 * `bytesPerSequence * maxSequences` is what the store allocates.
 * @example
 * ```ts
 * storeBytesPerSequence({ dtype: 'f16', storage: { format: 'int4', bits: 4, groupSize: 32, residual: 32 }, auxWords: 13 }, 8, 128, 1024);
 * ```
 */
export function storeBytesPerSequence(layout: StoreLayout, kvHeads: number, headDim: number, capacity: number): number {
  const perHead = kvBytesPerHead(layout.storage, layout.dtype, headDim, capacity) + capacity * (8 + 4 * layout.auxWords) + 4;
  return kvHeads * perHead + 8;
}
