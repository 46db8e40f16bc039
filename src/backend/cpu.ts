/**
 * The native CPU backend: the kernels of `docs/semantics.md` in C++ (`csrc/cpu`), over stores whose
 * arrays live in JavaScript. Built-in trackers run inside the kernels; a tracker written in TypeScript
 * gets its hooks called here, with the probabilities the kernels computed.
 * @module
 */
import { bytesPerElement, parseDType } from '../core/dtype.js';
import { ArgumentError, DisposedError } from '../core/errors.js';
import { MAX_HEAD_DIM, checkInt } from '../core/geometry.js';
import type { NativeTracker, RawBinding } from '../native/binding.js';
import { loadNative } from '../native/loader.js';
import { TrackerKind, type ImportanceTracker } from '../trackers/tracker.js';
import type { Backend, LayerStore, LayerStoreSpec } from './backend.js';
import {
  allocateHostStore, clearHostStore, hostStoreBytes, inspectHostStore, hostPromptCalls,
  trackerState, viewHostStore,
} from './host-store.js';

/** Probability floats a custom tracker's prefill hands back per native call (4 MiB); rows go in blocks. */
const PREFILL_SCRATCH_FLOATS = 1 << 20;

/** Whether the kernels run the tracker's rule themselves (else its TypeScript hooks are called). */
function isNative(tracker: ImportanceTracker): boolean {
  return tracker.kernel !== undefined && tracker.kernel.kind !== TrackerKind.Custom;
}

/** The tracker as the kernels see it. */
function describe(store: LayerStore, tracker: ImportanceTracker): NativeTracker {
  if (tracker.auxWords !== store.auxWords) {
    throw new ArgumentError(`the tracker needs ${tracker.auxWords} aux words per token, the store has ${store.auxWords}`, 'tracker');
  }
  const kernel = tracker.kernel;
  return isNative(tracker) && kernel !== undefined
    ? { kind: kernel.kind, window: kernel.window, seed: kernel.seed, gqa: tracker.gqa, observes: tracker.input === 'attention' }
    : { kind: TrackerKind.Custom, window: 0, seed: 0, gqa: tracker.gqa, observes: tracker.input === 'attention' };
}

/**
 * Creates the native CPU backend. Stores are plain typed arrays (the garbage collector frees them); the
 * backend itself holds only scratch for custom trackers, and `dispose()` makes later calls throw
 * {@link DisposedError}. Errors are the same typed errors as the reference backend's: the addon checks
 * every argument again at its boundary.
 * @throws `LoadError` when the native addon is not built or cannot load (see `backendInfo()`).
 * @example
 * ```ts
 * const backend = createCpuBackend();
 * const store = backend.allocate({ layer: 0, dtype: 'f16', maxSequences: 1, kvHeads: 8, headDim: 128, capacity: 4096, auxWords: 0 });
 * backend.append(store, 0, k, v, 1, 0, h2o());
 * backend.decode(store, 0, q, out, { queryHeads: 32, scale: 1 / Math.sqrt(128) }, h2o());
 * ```
 */
export function createCpuBackend(): Backend {
  let native: RawBinding | undefined = loadNative();
  /** Per store: the `[kvHeads][capacity]` probabilities a custom tracker reads after decode/observe. */
  let probsScratch = new WeakMap<LayerStore, Float32Array>();

  function live(): RawBinding {
    if (native === undefined) throw new DisposedError('the cpu backend');
    return native;
  }

  function scratchOf(store: LayerStore): Float32Array {
    let scratch = probsScratch.get(store);
    if (scratch === undefined || scratch.length !== store.kvHeads * store.capacity) {
      scratch = new Float32Array(store.kvHeads * store.capacity);
      probsScratch.set(store, scratch);
    }
    return scratch;
  }

  /** Calls `onObserve` head by head for one row whose combined probabilities are at `probs[at + h * capacity]`. */
  function observeRow(
    store: LayerStore, seq: number, tracker: ImportanceTracker, probs: Float32Array, at: number, step: number, hidden: number,
  ): void {
    for (let kvHead = 0; kvHead < store.kvHeads; kvHead++) {
      const n = store.lengths[seq * store.kvHeads + kvHead]! - hidden;
      const from = at + kvHead * store.capacity;
      const { scores, aux } = trackerState(store, seq, kvHead);
      tracker.onObserve({ seq, layer: store.layer, kvHead, length: n, step, probs: probs.subarray(from, from + n), scores, aux });
    }
  }

  return {
    name: 'cpu',

    allocate(spec: LayerStoreSpec): LayerStore {
      live();
      return allocateHostStore(spec);
    },

    bytes: hostStoreBytes,
    clear: clearHostStore,
    inspect: inspectHostStore,
    view: viewHostStore,

    append(store, seq, k, v, count, firstPosition, tracker): void {
      const binding = live();
      const described = describe(store, tracker);
      // Packed stores (docs/packing.md) have their own entry points, with the same arguments.
      const append = store.packed === undefined ? binding.append : binding.packedAppend;
      if (isNative(tracker)) {
        append(store, seq, k, v, count, firstPosition, described, null);
        return;
      }
      const { kvHeads, headDim } = store;
      // Sized only for a count that can succeed; the addon rejects any other before reading this.
      const fits = Number.isInteger(count) && count >= 0 && count <= store.capacity;
      const keys = new Float32Array(fits ? count * kvHeads * headDim : 0);
      const before = Int32Array.from(store.lengths.subarray(seq * kvHeads, (seq + 1) * kvHeads));
      append(store, seq, k, v, count, firstPosition, described, keys);
      for (let h = 0; h < kvHeads; h++) {
        const { scores, aux } = trackerState(store, seq, h);
        for (let i = 0; i < count; i++) {
          const at = (i * kvHeads + h) * headDim;
          tracker.onAppend({
            seq, layer: store.layer, kvHead: h, index: before[h]! + i, position: firstPosition + i,
            key: keys.subarray(at, at + headDim), scores, aux,
          });
        }
      }
    },

    decode(store, seq, q, out, attention, tracker): void {
      const binding = live();
      const described = describe(store, tracker);
      const decode = store.packed === undefined ? binding.decode : binding.packedDecode;
      if (described.kind !== TrackerKind.Custom || !described.observes) {
        decode(store, seq, q, out, attention.queryHeads, attention.scale, described, null);
        return;
      }
      const probs = scratchOf(store);
      decode(store, seq, q, out, attention.queryHeads, attention.scale, described, probs);
      observeRow(store, seq, tracker, probs, 0, store.steps[seq]! - 1, 0);
    },

    prefill(store, seq, q, rows, out, attention, tracker): void {
      const binding = live();
      const described = describe(store, tracker);
      const prefill = store.packed === undefined ? binding.prefill : binding.packedPrefill;
      if (described.kind !== TrackerKind.Custom || !described.observes) {
        prefill(store, seq, q, rows, out, attention.queryHeads, attention.scale, described, 0, rows, null);
        return;
      }
      // Rows go in blocks so the probabilities handed back stay bounded whatever the prompt length.
      checkInt(rows, 'rows', 1);
      const perRow = store.kvHeads * store.capacity;
      const block = Math.max(1, Math.min(rows, Math.floor(PREFILL_SCRATCH_FLOATS / perRow)));
      const probs = new Float32Array(block * perRow);
      for (let begin = 0; begin < rows; begin += block) {
        const end = Math.min(rows, begin + block);
        const first = store.steps[seq]!;
        prefill(
          store, seq, q, rows, out, attention.queryHeads, attention.scale, described, begin, end,
          probs.subarray(0, (end - begin) * perRow),
        );
        for (let row = begin; row < end; row++) {
          observeRow(store, seq, tracker, probs, (row - begin) * perRow, first + (row - begin), rows - 1 - row);
        }
      }
    },

    observe(store, seq, probs, stride, queryHeads, tracker): void {
      const binding = live();
      const described = describe(store, tracker);
      const observe = store.packed === undefined ? binding.observe : binding.packedObserve;
      if (described.kind !== TrackerKind.Custom || !described.observes) {
        observe(store, seq, probs, stride, queryHeads, described, null);
        return;
      }
      const combined = scratchOf(store);
      observe(store, seq, probs, stride, queryHeads, described, combined);
      observeRow(store, seq, tracker, combined, 0, store.steps[seq]! - 1, 0);
    },

    evict(store, seq, count, sinks, recent, scope): void {
      const binding = live();
      if (store.packed === undefined) binding.evict(store, seq, count, sinks, recent, scope);
      else binding.packedEvict(store, seq, count, sinks, recent, scope);
    },

    evictHeads(store, seq, counts, sinks, recent): void {
      const binding = live();
      if (store.packed !== undefined) throw new ArgumentError('packed stores evict the same count from every head', 'count');
      binding.evict(store, seq, counts, sinks, recent, 'head');
    },

    ...hostPromptCalls(live),

    dispose(): void {
      native = undefined;
      probsScratch = new WeakMap();
    },
  };
}
