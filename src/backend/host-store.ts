/**
 * Layer stores in host memory, shared by the `reference` and `cpu` backends: allocation, size, reset and
 * the read-only views the cache hands out.
 * @module
 */
import { bytesPerElement, decodeElement, parseDType, type HostArray } from '../core/dtype.js';
import { ArgumentError, BudgetError } from '../core/errors.js';
import { MAX_HEAD_DIM, checkInt } from '../core/geometry.js';
import { isPacked, resolveStorage } from '../quant/storage.js';
import type { ImportanceTracker } from '../trackers/tracker.js';
import type { Backend, HeadInspection, HeadLayout, HeadView, LayerStore, LayerStoreSpec } from './backend.js';
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
  const storage = resolveStorage(spec.storage, headDim);
  const slots = spec.slots === undefined ? kvHeads * capacity : checkInt(spec.slots, 'slots', kvHeads, 2 ** 31 - 1);
  if (spec.slots !== undefined && isPacked(storage)) {
    throw new ArgumentError('packed storage has no per-head layout: heads with their own budgets need dense storage', 'storage');
  }
  const tokens = maxSequences * slots;
  const elementBytes = bytesPerElement(dtype);
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
      ...(spec.slots === undefined ? {} : { heads: evenLayout(maxSequences, kvHeads, capacity, slots) }),
    };
  } catch (e) {
    if (e instanceof RangeError) throw new ArgumentError(`${tokens} token slots of ${headDim} elements cannot be allocated`, 'capacity');
    throw e;
  }
}

/**
 * A per-head layout whose every head of every sequence owns `min(capacity, floor(slots / kvHeads))`
 * slots, in order (a new store's; the cuda backend keeps it as the host mirror of its device layout).
 * @example
 * ```ts
 * const layout = evenLayout(maxSequences, kvHeads, capacity, slots);
 * ```
 */
export function evenLayout(maxSequences: number, kvHeads: number, capacity: number, slots: number): HeadLayout {
  const layout = { slots, bases: new Int32Array(maxSequences * kvHeads), capacities: new Int32Array(maxSequences * kvHeads) };
  for (let s = 0; s < maxSequences; s++) spreadEvenly(layout, s, kvHeads, capacity);
  return layout;
}

/**
 * Lays the heads of `seq` out evenly (its tokens are not moved: the sequence must be empty).
 * @example
 * ```ts
 * spreadEvenly(store.heads!, seq, store.kvHeads, store.capacity);
 * ```
 */
export function spreadEvenly(layout: HeadLayout, seq: number, kvHeads: number, capacity: number): void {
  const share = Math.min(capacity, Math.floor(layout.slots / kvHeads));
  for (let h = 0; h < kvHeads; h++) {
    layout.bases[seq * kvHeads + h] = seq * layout.slots + h * share;
    layout.capacities[seq * kvHeads + h] = share;
  }
}

/**
 * Index of slot 0 of head `i = seq * kvHeads + kvHead` in the per-token arrays.
 * @example
 * ```ts
 * const first = headBase(store, seq * store.kvHeads + head);
 * ```
 */
export function headBase(store: LayerStore, i: number): number {
  return store.heads === undefined ? i * store.capacity : store.heads.bases[i]!;
}

/**
 * Token slots head `i = seq * kvHeads + kvHead` owns.
 * @example
 * ```ts
 * const room = headCapacity(store, i) - store.lengths[i]!;
 * ```
 */
export function headCapacity(store: LayerStore, i: number): number {
  return store.heads === undefined ? store.capacity : store.heads.capacities[i]!;
}

/**
 * The tracker's views of one (sequence, KV head): its scores and aux words, from slot 0 to its capacity.
 * @example
 * ```ts
 * const { scores, aux } = trackerState(store, seq, 0);
 * ```
 */
export function trackerState(store: LayerStore, seq: number, kvHead: number): { scores: Float32Array; aux: Uint32Array } {
  const i = seq * store.kvHeads + kvHead;
  const base = headBase(store, i);
  const end = base + headCapacity(store, i);
  return { scores: store.scores.subarray(base, end), aux: store.aux.subarray(base * store.auxWords, end * store.auxWords) };
}

/** Moves `length` tokens of every per-token array from slot `from` to slot `to` (ranges may overlap). */
function moveTokens(store: LayerStore, from: number, to: number, length: number): void {
  const row = store.headDim * bytesPerElement(store.dtype);
  const words = store.auxWords;
  store.keys.copyWithin(to * row, from * row, (from + length) * row);
  store.values.copyWithin(to * row, from * row, (from + length) * row);
  store.positions.copyWithin(to, from, from + length);
  store.scores.copyWithin(to, from, from + length);
  store.aux.copyWithin(to * words, from * words, (from + length) * words);
}

/**
 * Gives the heads of `seq` new capacities in a per-head layout store: heads stay in order, packed from
 * the sequence's first slot, with their kept tokens. Heads that move down are moved first in head order,
 * then those that move up in reverse order, so that no move overwrites tokens not yet moved.
 * @throws {@link ArgumentError} for a dense store or a bad `capacities`; {@link BudgetError} when a
 * capacity is below its head's length or they do not fit the sequence's slots.
 * @example
 * ```ts
 * relayoutHostStore(store, seq, Int32Array.of(40, 24, 64, 32));
 * ```
 */
export function relayoutHostStore(store: LayerStore, seq: number, capacities: Int32Array): void {
  const bases = planRelayout(store, seq, capacities);
  const layout = store.heads!;
  const first = seq * store.kvHeads;
  const { kvHeads } = store;
  const move = (h: number): void => {
    moveTokens(store, layout.bases[first + h]!, bases[h]!, store.lengths[first + h]!);
    layout.bases[first + h] = bases[h]!;
    layout.capacities[first + h] = capacities[h]!;
  };
  for (let h = 0; h < kvHeads; h++) if (bases[h]! <= layout.bases[first + h]!) move(h);
  for (let h = kvHeads - 1; h >= 0; h--) if (bases[h]! > layout.bases[first + h]!) move(h);
}

/**
 * Checks a relayout (see {@link relayoutHostStore}) of a store's host mirror and returns the heads' new
 * bases; every backend's `relayout` starts with it.
 * @throws {@link ArgumentError} for a dense store or a bad `capacities`; {@link BudgetError} when a
 * capacity is below its head's length or they do not fit the sequence's slots.
 * @example
 * ```ts
 * const bases = planRelayout(store, seq, Int32Array.of(40, 24, 64, 32));
 * ```
 */
export function planRelayout(store: LayerStore, seq: number, capacities: Int32Array): Int32Array {
  const layout = store.heads;
  if (layout === undefined) throw new ArgumentError('the store has the dense layout', 'store');
  const { kvHeads } = store;
  checkInt(seq, 'seq', 0, store.maxSequences - 1);
  if (!(capacities instanceof Int32Array) || capacities.length !== kvHeads) throw new ArgumentError(`expected ${kvHeads} capacities`, 'capacities');
  const first = seq * kvHeads;
  const bases = new Int32Array(kvHeads);
  let next = seq * layout.slots;
  for (let h = 0; h < kvHeads; h++) {
    const cap = capacities[h]!;
    if (cap < store.lengths[first + h]! || cap > store.capacity) {
      throw new BudgetError(`capacity ${cap} of KV head ${h} is outside [${store.lengths[first + h]!}, ${store.capacity}]`, 'capacities');
    }
    bases[h] = next;
    next += cap;
  }
  if (next > (seq + 1) * layout.slots) throw new BudgetError(`capacities need ${next - seq * layout.slots} slots, the sequence has ${layout.slots}`, 'capacities');
  return bases;
}

/**
 * Checks the arguments of a score pooling (see {@link poolHostScores}) against a store's host mirror;
 * every backend's `poolScores` starts with it.
 * @throws {@link ArgumentError} for a bad sequence, kernel, pooling or end.
 * @example
 * ```ts
 * checkPooling(store, seq, 5, 'avg', Int32Array.of(96, 96));
 * ```
 */
export function checkPooling(store: LayerStore, seq: number, kernel: number, pooling: 'avg' | 'max', ends: Int32Array): void {
  checkInt(seq, 'seq', 0, store.maxSequences - 1);
  checkInt(kernel, 'kernel', 1, 1 << 16);
  if (pooling !== 'avg' && pooling !== 'max') throw new ArgumentError("expected 'avg' or 'max'", 'pooling');
  if (!(ends instanceof Int32Array) || ends.length !== store.kvHeads) throw new ArgumentError(`expected ${store.kvHeads} ends`, 'ends');
  for (let h = 0; h < store.kvHeads; h++) checkInt(ends[h], `ends[${h}]`, 0, store.lengths[seq * store.kvHeads + h]!);
}

/**
 * Pools the scores of each head of `seq` over its slots `[0, ends[h])` (see `Backend.poolScores`): `avg`
 * sums the window in f64 in slot order and divides by `kernel`, rounding once to f32 (slots outside count
 * as 0, as in SnapKV's `avg_pool1d` with padding); `max` takes the largest present score.
 * @example
 * ```ts
 * poolHostScores(store, seq, 5, 'avg', Int32Array.of(96, 96));
 * ```
 */
export function poolHostScores(store: LayerStore, seq: number, kernel: number, pooling: 'avg' | 'max', ends: Int32Array): void {
  checkPooling(store, seq, kernel, pooling, ends);
  const half = Math.floor(kernel / 2);
  for (let h = 0; h < store.kvHeads; h++) {
    const i = seq * store.kvHeads + h;
    const end = ends[h]!;
    const base = headBase(store, i);
    const raw = store.scores.slice(base, base + end);
    for (let j = 0; j < end; j++) {
      const from = Math.max(0, j - half);
      const to = Math.min(end, j + half + 1);
      let acc = pooling === 'avg' ? 0 : -Infinity;
      for (let t = from; t < to; t++) acc = pooling === 'avg' ? acc + raw[t]! : Math.max(acc, raw[t]!);
      store.scores[base + j] = pooling === 'avg' ? acc / kernel : acc;
    }
  }
}

/**
 * Restarts the tracker state of the kept tokens of `seq` (dense store): scores and aux words zeroed,
 * then `onAppend` on each slot, head by head, slot by slot, with the key as stored.
 * @example
 * ```ts
 * restartHostState(store, seq, scissorhands());
 * ```
 */
export function restartHostState(store: LayerStore, seq: number, tracker: ImportanceTracker): void {
  checkInt(seq, 'seq', 0, store.maxSequences - 1);
  if (store.packed !== undefined) throw new ArgumentError('tracker state restarts need dense storage', 'store');
  if (tracker.auxWords !== store.auxWords) {
    throw new ArgumentError(`the tracker needs ${tracker.auxWords} aux words per token, the store has ${store.auxWords}`, 'tracker');
  }
  const { headDim, dtype, auxWords } = store;
  for (let h = 0; h < store.kvHeads; h++) {
    const { length, keys } = viewHostStore(store, seq, h);
    const { scores, aux } = trackerState(store, seq, h);
    scores.fill(0, 0, length);
    aux.fill(0, 0, length * auxWords);
    const positions = store.positions.subarray(headBase(store, seq * store.kvHeads + h));
    for (let slot = 0; slot < length; slot++) {
      const key = new Float32Array(headDim);
      for (let d = 0; d < headDim; d++) {
        const e = keys[slot * headDim + d]!;
        key[d] = keys instanceof Float32Array ? e : decodeElement(dtype, e);
      }
      tracker.onAppend({ seq, layer: store.layer, kvHead: h, index: slot, position: positions[slot]!, key, scores, aux });
    }
  }
}

/**
 * The prompt-compression calls a host backend runs on its host arrays, each after the backend's own
 * check that it is still usable (`live`).
 * @example
 * ```ts
 * const backend: Backend = { name: 'cpu', ...hostPromptCalls(live), ... };
 * ```
 */
export function hostPromptCalls(live: () => unknown): Required<Pick<Backend, 'poolScores' | 'relayout' | 'restartState'>> {
  return {
    poolScores(store, seq, kernel, pooling, ends): void {
      live();
      poolHostScores(store, seq, kernel, pooling, ends);
    },
    relayout(store, seq, capacities): void {
      live();
      relayoutHostStore(store, seq, capacities);
    },
    restartState(store, seq, tracker): void {
      live();
      restartHostState(store, seq, tracker);
    },
  };
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
    + (store.packed === undefined ? 0 : packedStoreBytes(store.packed))
    + (store.heads === undefined ? 0 : store.heads.bases.byteLength + store.heads.capacities.byteLength);
}

/**
 * Empties one sequence of a host store (its lengths and clock; with a per-head layout, its heads get
 * even shares again).
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
  if (store.heads !== undefined) spreadEvenly(store.heads, seq, store.kvHeads, store.capacity);
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
  const first = headBase(store, slot);
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
  const first = headBase(store, slot);
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
