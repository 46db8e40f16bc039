/**
 * The reference backend: every kernel of `docs/semantics.md` written as plainly as possible in
 * TypeScript over the {@link LayerStore} arrays. It is the oracle the native backends are tested
 * against, and the fallback when no native addon loads. Attention is computed in f64 and rounded where
 * it is stored (probabilities to f32, outputs to the type of `q`).
 * @module
 */
import { bytesPerElement, decodeElement, encodeElement, parseDType, type DType, type HostArray } from '../core/dtype.js';
import { ArgumentError, BudgetError, DTypeError, DisposedError, ShapeError } from '../core/errors.js';
import { MAX_HEAD_DIM, checkInt } from '../core/geometry.js';
import type { ImportanceTracker } from '../trackers/tracker.js';
import type { AttentionSpec, Backend, LayerStore, LayerStoreSpec } from './backend.js';
import {
  allocateHostStore, clearHostStore, headBase, headCapacity, hostStoreBytes, inspectHostStore, hostPromptCalls,
  trackerState, viewHostStore,
} from './host-store.js';
import { appendPackedToken, checkPackable, compactPacked, decodePacked } from './packed-store.js';


/** Stored elements as numbers: an f32 view, or the 16-bit words of an f16/bf16 store. */
function elements(dtype: DType, bytes: Uint8Array): Float32Array | Uint16Array {
  return dtype === 'f32'
    ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
    : new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
}

/** Checks a host array argument: its class, that 16-bit bits match a 16-bit store, and its length. */
function checkHost(dtype: DType, array: unknown, argument: string, length: number): HostArray {
  if (!(array instanceof Float32Array || array instanceof Uint16Array)) {
    throw new DTypeError('expected a Float32Array, or a Uint16Array of f16/bf16 bits', argument);
  }
  if (array instanceof Uint16Array && dtype === 'f32') {
    throw new DTypeError('a Uint16Array holds f16 or bf16 bits, but this store is f32: pass a Float32Array', argument);
  }
  if (array.length !== length) throw new ShapeError(`expected ${length} elements, got ${array.length}`, argument);
  return array;
}

/** The value of input element `i` (bits of a 16-bit input are of the store's dtype). */
function inputValue(dtype: DType, array: HostArray, i: number): number {
  return array instanceof Float32Array ? array[i]! : decodeElement(dtype, array[i]!);
}

/** Lowest `(score, slot)` first, NaN below everything; -0 and +0 are equal. */
function compareScores(a: number, slotA: number, b: number, slotB: number): number {
  const nanA = Number.isNaN(a);
  const nanB = Number.isNaN(b);
  if (nanA !== nanB) return nanA ? -1 : 1;
  if (!nanA && a !== b) return a < b ? -1 : 1;
  return slotA - slotB;
}

/**
 * Creates the reference backend. It holds no memory of its own: stores are plain typed arrays that the
 * garbage collector frees, and `dispose()` only marks it unusable (later calls throw
 * {@link DisposedError}). Impossible requests throw typed errors before anything is written: a sequence
 * out of range or a bad shape ({@link ArgumentError}, {@link ShapeError}, {@link DTypeError}), an append
 * past the capacity or an eviction of more than the candidates ({@link BudgetError}, argument `count`).
 * `append` zeroes each new slot's score and aux words, then calls `onAppend` head by head, token by
 * token in order.
 * @example
 * ```ts
 * const backend = createReferenceBackend();
 * const store = backend.allocate({ dtype: 'f32', maxSequences: 1, kvHeads: 2, headDim: 64, capacity: 512, auxWords: 13 });
 * backend.append(store, 0, k, v, 1, 0, scissorhands());
 * ```
 */
export function createReferenceBackend(): Backend {
  let disposed = false;

  function live(): void {
    if (disposed) throw new DisposedError('the reference backend');
  }

  function checkSeq(store: LayerStore, seq: number): void {
    checkInt(seq, 'seq', 0, store.maxSequences - 1);
  }

  function checkTracker(store: LayerStore, tracker: ImportanceTracker): void {
    if (tracker.auxWords !== store.auxWords) {
      throw new ArgumentError(`the tracker needs ${tracker.auxWords} aux words per token, the store has ${store.auxWords}`, 'tracker');
    }
  }

  function checkGroups(store: LayerStore, queryHeads: number, argument: string): number {
    checkInt(queryHeads, argument, 1, 4096);
    if (queryHeads % store.kvHeads !== 0) {
      throw new ArgumentError(`must be a multiple of kvHeads (${store.kvHeads}), got ${queryHeads}`, argument);
    }
    return queryHeads / store.kvHeads;
  }

  /**
   * One observation: combines `probs` (`[queryHeads][stride]`) per KV head, feeds it to an attention
   * tracker, and advances the clock. `hidden` slots at the end of each head were not attended (the
   * later rows of a causal prefill).
   */
  function observeRow(
    store: LayerStore, seq: number, probs: Float32Array, stride: number, group: number, hidden: number,
    tracker: ImportanceTracker,
  ): void {
    const step = store.steps[seq]!;
    if (tracker.input === 'attention') {
      for (let kvHead = 0; kvHead < store.kvHeads; kvHead++) {
        const n = store.lengths[seq * store.kvHeads + kvHead]! - hidden;
        const combined = new Float32Array(n);
        for (let j = 0; j < n; j++) {
          let acc = tracker.gqa === 'mean' ? 0 : -Infinity;
          for (let g = 0; g < group; g++) {
            const p = probs[(kvHead * group + g) * stride + j]!;
            acc = tracker.gqa === 'mean' ? Math.fround(acc + p) : Math.max(acc, p);
          }
          combined[j] = tracker.gqa === 'mean' ? Math.fround(acc / group) : acc;
        }
        const { scores, aux } = trackerState(store, seq, kvHead);
        tracker.onObserve({ seq, layer: store.layer, kvHead, length: n, step, probs: combined, scores, aux });
      }
    }
    store.steps[seq] = step + 1;
  }

  /** Causal attention of `rows` query rows over the last `rows` kept tokens; decode is `rows = 1`. */
  function attend(
    store: LayerStore, seq: number, q: HostArray, rows: number, out: HostArray, attention: AttentionSpec,
    tracker: ImportanceTracker,
  ): void {
    live();
    checkSeq(store, seq);
    checkTracker(store, tracker);
    const group = checkGroups(store, attention.queryHeads, 'attention.queryHeads');
    if (typeof attention.scale !== 'number' || !Number.isFinite(attention.scale)) {
      throw new ArgumentError(`expected a finite number, got ${String(attention.scale)}`, 'attention.scale');
    }
    const { dtype, kvHeads, headDim } = store;
    const queryHeads = attention.queryHeads;
    checkHost(dtype, q, 'q', rows * queryHeads * headDim);
    checkHost(dtype, out, 'out', rows * queryHeads * headDim);
    if (out.constructor !== q.constructor) throw new DTypeError(`expected a ${q.constructor.name} like q`, 'out');
    let stride = 0;
    for (let h = 0; h < kvHeads; h++) {
      const length = store.lengths[seq * kvHeads + h]!;
      if (length < rows) throw new ArgumentError(`KV head ${h} keeps ${length} tokens, fewer than the ${rows} query rows`, 'rows');
      stride = Math.max(stride, length);
    }
    const keys = elements(dtype, store.keys);
    const values = elements(dtype, store.values);
    const stored = (array: Float32Array | Uint16Array, i: number): number => decodeElement(dtype, array[i]!);
    // Packed storage: each head's rows decoded as the packing rules define them (slot j at j * headDim).
    const decoded = store.packed === undefined ? undefined : Array.from({ length: kvHeads }, (_, h) => ({
      keys: decodePacked(store, seq, h, 'keys').rows, values: decodePacked(store, seq, h, 'values').rows,
    }));
    const key = (kvHead: number, base: number, j: number, d: number): number =>
      decoded === undefined ? stored(keys, (base + j) * headDim + d) : decoded[kvHead]!.keys[j * headDim + d]!;
    const value = (kvHead: number, base: number, j: number, d: number): number =>
      decoded === undefined ? stored(values, (base + j) * headDim + d) : decoded[kvHead]!.values[j * headDim + d]!;

    for (let row = 0; row < rows; row++) {
      const hidden = rows - 1 - row;
      const probs = new Float32Array(queryHeads * stride);
      for (let h = 0; h < queryHeads; h++) {
        const kvHead = Math.floor(h / group);
        const base = headBase(store, seq * kvHeads + kvHead);
        const n = store.lengths[seq * kvHeads + kvHead]! - hidden;
        const qAt = (row * queryHeads + h) * headDim;
        const query = Float64Array.from({ length: headDim }, (_, d) => inputValue(dtype, q, qAt + d));
        const logits = new Float64Array(n);
        let max = -Infinity;
        for (let j = 0; j < n; j++) {
          let dot = 0;
          for (let d = 0; d < headDim; d++) dot += query[d]! * key(kvHead, base, j, d);
          logits[j] = attention.scale * dot;
          max = Math.max(max, logits[j]!);
        }
        let sum = 0;
        for (let j = 0; j < n; j++) {
          logits[j] = Math.exp(logits[j]! - max);
          sum += logits[j]!;
        }
        const acc = new Float64Array(headDim);
        for (let j = 0; j < n; j++) {
          const p = logits[j]! / sum;
          probs[h * stride + j] = p;
          for (let d = 0; d < headDim; d++) acc[d] = acc[d]! + p * value(kvHead, base, j, d);
        }
        for (let d = 0; d < headDim; d++) {
          out[qAt + d] = out instanceof Float32Array ? acc[d]! : encodeElement(dtype, acc[d]!);
        }
      }
      observeRow(store, seq, probs, stride, group, hidden, tracker);
    }
  }

  /**
   * Append to a packed store: token by token into the residual window (which packs its oldest group when
   * full), then the tracker's append rule on each new slot with its key as stored in the window.
   */
  function appendPacked(
    store: LayerStore, seq: number, k: HostArray, v: HostArray, count: number, firstPosition: number, tracker: ImportanceTracker,
  ): void {
    const { dtype, kvHeads, headDim, auxWords } = store;
    for (let h = 0; h < kvHeads; h++) {
      const index = seq * kvHeads + h;
      const base = headBase(store, index);
      const length = store.lengths[index]!;
      const { scores, aux } = trackerState(store, seq, h);
      for (let i = 0; i < count; i++) {
        const slot = length + i;
        store.positions[base + slot] = firstPosition + i;
        scores[slot] = 0;
        aux.fill(0, slot * auxWords, (slot + 1) * auxWords);
        appendPackedToken(store, seq, h, k, v, (i * kvHeads + h) * headDim);
      }
      for (let i = 0; i < count; i++) {
        const at = (i * kvHeads + h) * headDim;
        const key = new Float32Array(headDim);
        for (let d = 0; d < headDim; d++) {
          key[d] = k instanceof Uint16Array ? decodeElement(dtype, k[at + d]!) : decodeElement(dtype, encodeElement(dtype, k[at + d]!));
        }
        tracker.onAppend({ seq, layer: store.layer, kvHead: h, index: length + i, position: firstPosition + i, key, scores, aux });
      }
    }
  }

  /** Drops the flagged slots of one head and moves the kept ones to the front, in order. */
  function compact(store: LayerStore, seq: number, kvHead: number, dropped: Uint8Array): void {
    if (store.packed !== undefined) {
      compactPacked(store, seq, kvHead, dropped);
      return;
    }
    const { headDim, auxWords } = store;
    const bytes = headDim * bytesPerElement(store.dtype);
    const index = seq * store.kvHeads + kvHead;
    const base = headBase(store, index);
    const length = store.lengths[index]!;
    let kept = 0;
    for (let t = 0; t < length; t++) {
      if (dropped[t] === 1) continue;
      if (kept !== t) {
        const from = base + t;
        const to = base + kept;
        store.keys.copyWithin(to * bytes, from * bytes, (from + 1) * bytes);
        store.values.copyWithin(to * bytes, from * bytes, (from + 1) * bytes);
        store.positions[to] = store.positions[from]!;
        store.scores[to] = store.scores[from]!;
        store.aux.copyWithin(to * auxWords, from * auxWords, (from + 1) * auxWords);
      }
      kept++;
    }
    store.lengths[index] = kept;
  }

  /** Flags the `count` slots of `[from, to)` with the lowest `(score, slot)`. */
  function lowest(score: (slot: number) => number, from: number, to: number, count: number, length: number): Uint8Array {
    const slots: number[] = [];
    for (let t = from; t < to; t++) slots.push(t);
    slots.sort((a, b) => compareScores(score(a), a, score(b), b));
    const dropped = new Uint8Array(length);
    for (const t of slots.slice(0, count)) dropped[t] = 1;
    return dropped;
  }

  /** `evict` with one count per head (scope `layer`: equal lengths and counts). */
  function evictEach(store: LayerStore, seq: number, counts: Int32Array, sinks: number, recent: number, scope: 'head' | 'layer'): void {
    checkSeq(store, seq);
    checkInt(sinks, 'sinks', 0);
    checkInt(recent, 'recent', 0);
    if (scope !== 'head' && scope !== 'layer') throw new ArgumentError(`expected 'head' or 'layer', got ${String(scope)}`, 'scope');
    const { kvHeads } = store;
    const lengthOf = (h: number): number => store.lengths[seq * kvHeads + h]!;
    for (let h = 0; h < kvHeads; h++) {
      const count = counts[h]!;
      if (count < 0) throw new ArgumentError(`expected counts >= 0, got ${count}`, 'count');
      const candidates = Math.max(0, lengthOf(h) - recent - sinks);
      if (count > candidates) {
        throw new BudgetError(`KV head ${h} has ${candidates} candidates outside sinks ${sinks} and recent ${recent}, cannot drop ${count}`, 'count');
      }
      if (scope === 'layer' && (lengthOf(h) !== lengthOf(0) || count !== counts[0])) {
        throw new ArgumentError(`layer scope needs equal head lengths and counts; KV head ${h} keeps ${lengthOf(h)}, head 0 keeps ${lengthOf(0)}`, 'scope');
      }
    }
    if (scope === 'layer') {
      if (counts[0] === 0) return;
      const length = lengthOf(0);
      const mean = (slot: number): number => {
        let acc = 0;
        for (let h = 0; h < kvHeads; h++) acc = Math.fround(acc + store.scores[headBase(store, seq * kvHeads + h) + slot]!);
        return Math.fround(acc / kvHeads);
      };
      const dropped = lowest(mean, sinks, length - recent, counts[0]!, length);
      for (let h = 0; h < kvHeads; h++) compact(store, seq, h, dropped);
      return;
    }
    for (let h = 0; h < kvHeads; h++) {
      if (counts[h] === 0) continue;
      const base = headBase(store, seq * kvHeads + h);
      const dropped = lowest((slot) => store.scores[base + slot]!, sinks, lengthOf(h) - recent, counts[h]!, lengthOf(h));
      compact(store, seq, h, dropped);
    }
  }

  return {
    name: 'reference',

    allocate(spec: LayerStoreSpec): LayerStore {
      live();
      return allocateHostStore(spec);
    },

    bytes: hostStoreBytes,
    clear: clearHostStore,
    inspect: inspectHostStore,
    view: viewHostStore,

    append(store, seq, k, v, count, firstPosition, tracker): void {
      live();
      checkSeq(store, seq);
      checkTracker(store, tracker);
      checkInt(count, 'count', 0);
      checkInt(firstPosition, 'firstPosition', -(2 ** 31), 2 ** 31 - 1 - count);
      const { dtype, kvHeads, headDim, auxWords } = store;
      checkHost(dtype, k, 'k', count * kvHeads * headDim);
      checkHost(dtype, v, 'v', count * kvHeads * headDim);
      for (let h = 0; h < kvHeads; h++) {
        const length = store.lengths[seq * kvHeads + h]!;
        const capacity = headCapacity(store, seq * kvHeads + h);
        if (length + count > capacity) {
          throw new BudgetError(`KV head ${h} keeps ${length} of ${capacity} tokens: no room for ${count} more`, 'count');
        }
      }
      if (store.packed !== undefined) {
        checkPackable(dtype, k, 'k');
        checkPackable(dtype, v, 'v');
        appendPacked(store, seq, k, v, count, firstPosition, tracker);
        return;
      }
      const keys = elements(dtype, store.keys);
      const values = elements(dtype, store.values);
      // Bits of the store's own dtype are copied as they are; f32 inputs are rounded to the store.
      const write = (to: Float32Array | Uint16Array, at: number, from: HostArray, i: number): void => {
        to[at] = from instanceof Uint16Array ? from[i]! : encodeElement(dtype, from[i]!);
      };
      for (let h = 0; h < kvHeads; h++) {
        const index = seq * kvHeads + h;
        const base = headBase(store, index);
        const length = store.lengths[index]!;
        const { scores, aux } = trackerState(store, seq, h);
        for (let i = 0; i < count; i++) {
          const slot = length + i;
          for (let d = 0; d < headDim; d++) {
            write(keys, (base + slot) * headDim + d, k, (i * kvHeads + h) * headDim + d);
            write(values, (base + slot) * headDim + d, v, (i * kvHeads + h) * headDim + d);
          }
          store.positions[base + slot] = firstPosition + i;
          // A fresh slot starts from zero state whatever an evicted token left in it.
          scores[slot] = 0;
          aux.fill(0, slot * auxWords, (slot + 1) * auxWords);
        }
        store.lengths[index] = length + count;
        for (let i = 0; i < count; i++) {
          const slot = length + i;
          const key = new Float32Array(headDim);
          for (let d = 0; d < headDim; d++) key[d] = decodeElement(dtype, keys[(base + slot) * headDim + d]!);
          tracker.onAppend({ seq, layer: store.layer, kvHead: h, index: slot, position: firstPosition + i, key, scores, aux });
        }
      }
    },

    decode(store, seq, q, out, attention, tracker): void {
      attend(store, seq, q, 1, out, attention, tracker);
    },

    prefill(store, seq, q, rows, out, attention, tracker): void {
      live();
      checkInt(rows, 'rows', 1);
      attend(store, seq, q, rows, out, attention, tracker);
    },

    observe(store, seq, probs, stride, queryHeads, tracker): void {
      live();
      checkSeq(store, seq);
      checkTracker(store, tracker);
      const group = checkGroups(store, queryHeads, 'queryHeads');
      if (!(probs instanceof Float32Array)) throw new DTypeError('expected a Float32Array', 'probs');
      checkInt(stride, 'stride', 0);
      for (let h = 0; h < store.kvHeads; h++) {
        const length = store.lengths[seq * store.kvHeads + h]!;
        if (length > stride) throw new ShapeError(`KV head ${h} keeps ${length} tokens, more than the stride ${stride}`, 'stride');
      }
      if (probs.length !== queryHeads * stride) {
        throw new ShapeError(`expected ${queryHeads} x ${stride} = ${queryHeads * stride} elements, got ${probs.length}`, 'probs');
      }
      observeRow(store, seq, probs, stride, group, 0, tracker);
    },

    evict(store, seq, count, sinks, recent, scope): void {
      live();
      checkInt(count, 'count', 0);
      evictEach(store, seq, new Int32Array(store.kvHeads).fill(count), sinks, recent, scope);
    },

    evictHeads(store, seq, counts, sinks, recent): void {
      live();
      if (!(counts instanceof Int32Array) || counts.length !== store.kvHeads) {
        throw new ArgumentError(`expected an Int32Array of ${store.kvHeads} counts`, 'count');
      }
      evictEach(store, seq, counts, sinks, recent, 'head');
    },

    ...hostPromptCalls(live),

    dispose(): void {
      disposed = true;
    },
  };
}
