/**
 * Layer stores in host memory, shared by the `reference` and `cpu` backends: allocation, size, reset and
 * the read-only views the cache hands out.
 * @module
 */
import { bytesPerElement, parseDType, type HostArray } from '../core/dtype.js';
import { ArgumentError } from '../core/errors.js';
import { MAX_HEAD_DIM, checkInt } from '../core/geometry.js';
import { isPacked, resolveStorage } from '../quant/storage.js';
import type { HeadInspection, HeadView, LayerStore, LayerStoreSpec } from './backend.js';
import { allocatePacked, packedStoreBytes, viewPacked } from './packed-store.js';

/**
 * Validates a spec and allocates a zeroed host store.
 * @example
 * ```ts
 * const store = allocateHostStore({ layer: 0, dtype: 'f16', maxSequences: 2, kvHeads: 2, headDim: 64, capacity: 256, auxWords: 0 });
 * ```
 */
export function allocateHostStore(spec: LayerStoreSpec): LayerStore {
  const dtype = parseDType(spec.dtype, 'dtype');
  const maxSequences = checkInt(spec.maxSequences, 'maxSequences', 1, 1 << 16);
  const kvHeads = checkInt(spec.kvHeads, 'kvHeads', 1, 4096);
  const headDim = checkInt(spec.headDim, 'headDim', 1, MAX_HEAD_DIM);
  const capacity = checkInt(spec.capacity, 'capacity', 1);
  const auxWords = checkInt(spec.auxWords, 'auxWords', 0, 1 << 16);
  const layer = checkInt(spec.layer, 'layer', 0);
  const tokens = maxSequences * kvHeads * capacity;
  const elementBytes = bytesPerElement(dtype);
  const storage = resolveStorage(spec.storage, headDim);
  // Packed stores keep their keys and values in `packed`; dense ones one row per token slot.
  const rows = isPacked(storage) ? 0 : tokens * headDim * elementBytes;
  try {
    return {
      layer, dtype, maxSequences, kvHeads, headDim, capacity, auxWords,
      keys: new Uint8Array(rows),
      values: new Uint8Array(rows),
      positions: new Int32Array(tokens),
      scores: new Float32Array(tokens),
      aux: new Uint32Array(tokens * auxWords),
      lengths: new Int32Array(maxSequences * kvHeads),
      steps: new Float64Array(maxSequences),
      ...(isPacked(storage) ? { packed: allocatePacked(storage, maxSequences, kvHeads, headDim, capacity, dtype) } : {}),
    };
  } catch (e) {
    if (e instanceof RangeError) throw new ArgumentError(`${tokens} token slots of ${headDim} elements cannot be allocated`, 'capacity');
    throw e;
  }
}

/**
 * Bytes a host store holds.
 * @example
 * ```ts
 * hostStoreBytes(store);
 * ```
 */
export function hostStoreBytes(store: LayerStore): number {
  return store.keys.byteLength + store.values.byteLength + store.positions.byteLength + store.scores.byteLength
    + store.aux.byteLength + store.lengths.byteLength + store.steps.byteLength
    + (store.packed === undefined ? 0 : packedStoreBytes(store.packed));
}

/**
 * Empties one sequence of a host store (its lengths and clock).
 * @example
 * ```ts
 * clearHostStore(store, seq);
 * ```
 */
export function clearHostStore(store: LayerStore, seq: number): void {
  store.lengths.fill(0, seq * store.kvHeads, (seq + 1) * store.kvHeads);
  store.steps[seq] = 0;
  store.packed?.packed.fill(0, seq * store.kvHeads, (seq + 1) * store.kvHeads);
  store.packed?.runs.fill(0, seq * store.kvHeads, (seq + 1) * store.kvHeads);
}

/**
 * Copies of the positions and scores one head keeps.
 * @example
 * ```ts
 * const { positions, scores } = inspectHostStore(store, seq, 0);
 * ```
 */
export function inspectHostStore(store: LayerStore, seq: number, kvHead: number): HeadInspection {
  const slot = seq * store.kvHeads + kvHead;
  const first = slot * store.capacity;
  const end = first + store.lengths[slot]!;
  return { positions: store.positions.slice(first, end), scores: store.scores.slice(first, end) };
}

/**
 * Live views of the keys, values and positions one head keeps.
 * @example
 * ```ts
 * const { keys, length } = viewHostStore(store, seq, 0);
 * ```
 */
export function viewHostStore(store: LayerStore, seq: number, kvHead: number): HeadView {
  if (store.packed !== undefined) return viewPacked(store, seq, kvHead);
  const slot = seq * store.kvHeads + kvHead;
  const length = store.lengths[slot]!;
  const d = store.headDim;
  const first = slot * store.capacity;
  const bytes = bytesPerElement(store.dtype);
  const elements = (raw: Uint8Array): HostArray => {
    const offset = raw.byteOffset + first * d * bytes;
    return store.dtype === 'f32'
      ? new Float32Array(raw.buffer, offset, length * d)
      : new Uint16Array(raw.buffer, offset, length * d);
  };
  return {
    length,
    keys: elements(store.keys),
    values: elements(store.values),
    positions: store.positions.subarray(first, first + length),
  };
}
