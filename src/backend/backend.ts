/**
 * The backend interface: the kernels the cache runs, over one layer's storage. CPU backends work on
 * host arrays in place; a device backend implements the same calls over device-resident storage.
 * @module
 */
import type { DType, HostArray } from '../core/dtype.js';
import type { PackedStorage, StorageFormat } from '../quant/storage.js';
import type { ImportanceTracker } from '../trackers/tracker.js';

/**
 * The storage of one layer for every sequence slot. Element `[s][h][t]` of the per-token arrays is at
 * `base + t`, where `base` is `(s * kvHeads + h) * capacity` (dense layout) or `heads.bases[s * kvHeads + h]`
 * (per-head layout, {@link HeadLayout}); keys and values hold `headDim` elements per token in that
 * order. Slots `[0, lengths[s * kvHeads + h])` of a head are kept, in increasing position order.
 */
export interface LayerStore {
  /** Index of the layer this store serves (trackers see it, e.g. the `random` tracker's hash). */
  readonly layer: number;
  readonly dtype: DType;
  readonly maxSequences: number;
  readonly kvHeads: number;
  readonly headDim: number;
  /** Token slots per (sequence, KV head); with a per-head layout, the most one head may own. */
  readonly capacity: number;
  /** Tracker words per token slot. */
  readonly auxWords: number;
  /** `[seq][kvHead][capacity][headDim]` elements of `dtype`, as raw bytes. */
  readonly keys: Uint8Array;
  readonly values: Uint8Array;
  /** Original position of each kept token. */
  readonly positions: Int32Array;
  /** Tracker score of each kept token (lower is evicted first). */
  readonly scores: Float32Array;
  /** `[seq][kvHead][capacity][auxWords]` tracker words. */
  readonly aux: Uint32Array;
  /** `[seq][kvHead]` tokens kept. */
  readonly lengths: Int32Array;
  /** `[seq]` observations made so far (the tracker's clock). */
  readonly steps: Float64Array;
  /**
   * Packed storage (absent for dense stores, whose `keys` and `values` hold every token). With it,
   * `keys` and `values` are empty: slots `[0, packed)` of a head are codes, slots `[packed, length)` the
   * full-precision residual window. Layout: `docs/packing.md`.
   */
  readonly packed?: PackedStore;
  /**
   * Per-head layout, for caches whose heads keep different numbers of tokens (per-head budgets); absent
   * for the dense layout. Never present with `packed`.
   */
  readonly heads?: HeadLayout;
}

/**
 * Where each (sequence, KV head) of a {@link LayerStore} lives when heads own different numbers of slots.
 * The per-token arrays hold `maxSequences * slots` tokens; with `i = seq * kvHeads + head`, head `i` owns
 * slots `[bases[i], bases[i] + capacities[i])`. The heads of a sequence lie in head order inside
 * `[seq * slots, (seq + 1) * slots)` without overlapping, and `capacities[i] <= capacity`. Kernels index
 * by `bases[i]` and bound appends by `capacities[i]`; nothing else changes. A dense store is the special
 * case `slots = kvHeads * capacity`, `bases[i] = i * capacity`, `capacities[i] = capacity`.
 * @example
 * ```ts
 * const i = seq * store.kvHeads + head;
 * const first = store.heads === undefined ? i * store.capacity : store.heads.bases[i]!;
 * ```
 */
export interface HeadLayout {
  /** Token slots of one sequence. */
  readonly slots: number;
  /** `[seq][kvHead]` index of the head's slot 0 in the per-token arrays. */
  readonly bases: Int32Array;
  /** `[seq][kvHead]` slots the head owns. */
  readonly capacities: Int32Array;
}

/**
 * The packed storage of one layer (KIVI-style, `docs/packing.md`). Per (sequence, KV head) `i =
 * seq * kvHeads + head`: slots `[0, packed[i])` are packed, in `runs[i]` key runs of `runLengths`
 * tokens each (a run shares one f16 scale and zero point per channel); slots `[packed[i], length)` are
 * the residual window, in the store's element type. Per-slot arrays of the {@link LayerStore}
 * (positions, scores, aux) index logical slots as for dense stores.
 * @example
 * ```ts
 * const p = store.packed;
 * if (p !== undefined) console.log(p.packed[seq * store.kvHeads + head], 'tokens packed');
 * ```
 */
export interface PackedStore extends PackedStorage {
  /** Packed token slots per (sequence, KV head). */
  readonly packedSlots: number;
  /** Residual-window slots per (sequence, KV head). */
  readonly residualSlots: number;
  /** Key runs per (sequence, KV head). */
  readonly maxRuns: number;
  /** `[seq][kvHead][packedSlots][headDim * bits / 8]` key codes, token-major. */
  readonly keyCodes: Uint8Array;
  /** `[seq][kvHead][packedSlots][headDim * bits / 8]` value codes, token-major. */
  readonly valueCodes: Uint8Array;
  /** `[seq][kvHead][packedSlots][headDim / groupSize]` f16 bits of the value groups' scales. */
  readonly valueScales: Uint16Array;
  /** Same layout: f16 bits of the value groups' zero points. */
  readonly valueZeros: Uint16Array;
  /** `[seq][kvHead][maxRuns][headDim]` f16 bits of each key run's per-channel scales. */
  readonly keyScales: Uint16Array;
  /** Same layout: f16 bits of each key run's per-channel zero points. */
  readonly keyZeros: Uint16Array;
  /** `[seq][kvHead][maxRuns]` tokens of each run in use, in slot order. */
  readonly runLengths: Int32Array;
  /** `[seq][kvHead][maxRuns]` times a run's keys were re-quantised by merges (0: packed once), capped at 255. */
  readonly runGenerations: Uint8Array;
  /** `[seq][kvHead]` runs in use. */
  readonly runs: Int32Array;
  /** `[seq][kvHead]` packed tokens. */
  readonly packed: Int32Array;
  /** `[seq][kvHead][residualSlots][headDim]` residual keys in the store's element type, as raw bytes. */
  readonly residualKeys: Uint8Array;
  readonly residualValues: Uint8Array;
}

/**
 * Live read-only views of what one KV head of one layer keeps for a sequence (valid until the next
 * call that changes the cache).
 * @example
 * ```ts
 * const { length, keys, positions } = cache.view(seq, 0, 0);
 * ```
 */
export interface HeadView {
  readonly length: number;
  /**
   * `[length][headDim]` stored keys (Float32Array for f32, Uint16Array bits for f16/bf16). For packed
   * storage: a Float32Array copy of the keys as attention reads them (dequantised codes, then the
   * residual window's values), not a live view.
   */
  readonly keys: HostArray;
  readonly values: HostArray;
  readonly positions: Int32Array;
  /** Packed storage only: the leading slots held as codes (the rest is the full-precision residual window). */
  readonly packed?: number;
  /** Packed storage only: `[packed][headDim]` the quantisation step (stored scale) of each packed key element. */
  readonly keySteps?: Float32Array;
  /** Packed storage only: `[packed][headDim]` the quantisation step of each packed value element. */
  readonly valueSteps?: Float32Array;
  /** Packed storage only: `[packed]` times each packed key was re-quantised by a run merge (0: packed once). */
  readonly requantised?: Uint8Array;
}

/**
 * Copies of what one KV head keeps: original positions and their importance scores.
 * @example
 * ```ts
 * const { positions, scores } = cache.inspect(seq, 3, 1);
 * ```
 */
export interface HeadInspection {
  readonly positions: Int32Array;
  readonly scores: Float32Array;
}

/** Sizes needed to allocate a {@link LayerStore}. */
export interface LayerStoreSpec {
  readonly layer: number;
  readonly dtype: DType;
  readonly maxSequences: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly capacity: number;
  readonly auxWords: number;
  /** Packed storage; absent or dense for one row per token in `dtype`. */
  readonly storage?: StorageFormat;
  /** Query heads attention will use (device backends size their scratch by it); default `8 * kvHeads`. */
  readonly queryHeads?: number;
  /**
   * Token slots per sequence, for a per-head layout ({@link HeadLayout}) that starts with every head
   * owning `min(capacity, floor(slots / kvHeads))` slots; absent for the dense layout.
   */
  readonly slots?: number;
}

/** Attention settings shared by decode and prefill. */
export interface AttentionSpec {
  /** Query heads; a multiple of the store's `kvHeads`. */
  readonly queryHeads: number;
  /** Softmax scale applied to q.k (usually `1 / sqrt(headDim)`). */
  readonly scale: number;
}

/**
 * The kernel table every backend implements. Arguments are validated by the caller (the cache);
 * native implementations validate again at their boundary so that nothing can corrupt memory.
 */
export interface Backend {
  readonly name: 'reference' | 'cpu' | 'cuda';
  /** Allocates zeroed storage for one layer. */
  allocate(spec: LayerStoreSpec): LayerStore;
  /**
   * Appends `count` tokens to every KV head of sequence `seq`: `k` and `v` are `[count][kvHeads][headDim]`
   * (f32, or the store's 16-bit dtype as bits), positions `firstPosition + i`. Initialises tracker state.
   */
  append(
    store: LayerStore, seq: number, k: HostArray, v: HostArray, count: number, firstPosition: number,
    tracker: ImportanceTracker,
  ): void;
  /**
   * Attention of one query row `q` (`[queryHeads][headDim]`) over every kept token of `seq`; writes `out`
   * (same layout and type as `q`), then feeds the probabilities to the tracker and advances the clock.
   */
  decode(store: LayerStore, seq: number, q: HostArray, out: HostArray, attention: AttentionSpec, tracker: ImportanceTracker): void;
  /**
   * {@link Backend.append} of one token (`k`, `v` at `position`) followed by {@link Backend.decode} of `q`,
   * with the same results: for backends that do both in one pass (the cuda backend: one launch instead
   * of two). Absent where the two calls are as fast.
   */
  attend?(
    store: LayerStore, seq: number, k: HostArray, v: HostArray, position: number, q: HostArray, out: HostArray,
    attention: AttentionSpec, tracker: ImportanceTracker,
  ): void;
  /**
   * Causal attention of `rows` query rows (`[rows][queryHeads][headDim]`) whose tokens are the last `rows`
   * kept tokens of each head: row `i` sees the slots up to `length - rows + i`. Each row is one observation.
   */
  prefill(
    store: LayerStore, seq: number, q: HostArray, rows: number, out: HostArray, attention: AttentionSpec,
    tracker: ImportanceTracker,
  ): void;
  /**
   * Feeds probabilities computed by the engine: `probs` is `[queryHeads][stride]`, row `h` covering the
   * kept slots of KV head `h / group`. One observation.
   */
  observe(store: LayerStore, seq: number, probs: Float32Array, stride: number, queryHeads: number, tracker: ImportanceTracker): void;
  /**
   * Drops `count` tokens from every KV head of `seq`: the lowest scores among slots `[sinks, length - recent)`
   * (ties to the lower slot), then compacts keeping order. With `scope === 'layer'` one choice, made on the
   * mean score over heads, applies to all heads (their lengths must be equal).
   */
  evict(store: LayerStore, seq: number, count: number, sinks: number, recent: number, scope: 'head' | 'layer'): void;
  /**
   * Per-head eviction: drops `counts[h]` tokens from KV head `h` of `seq`, each head as `evict` does with
   * scope `head` (a cache whose heads keep their own budgets needs it).
   */
  evictHeads?(store: LayerStore, seq: number, counts: Int32Array, sinks: number, recent: number): void;
  /**
   * Smooths scores before a selection: the score of slot `j < ends[h]` of head `h` becomes the `pooling`
   * (`avg`: sum over the window divided by `kernel`, missing slots counting 0; `max`: the largest present)
   * of the scores at slots `j - floor(kernel / 2) .. j + floor(kernel / 2)` that are below `ends[h]`.
   * Slots from `ends[h]` on keep their scores.
   */
  poolScores?(store: LayerStore, seq: number, kernel: number, pooling: 'avg' | 'max', ends: Int32Array): void;
  /**
   * Moves the heads of `seq` to new capacities (a per-head layout store; `capacities` sums to at most
   * `heads.slots`, each at least the head's length): heads stay in order, packed from the sequence's
   * first slot, and keep their tokens.
   */
  relayout?(store: LayerStore, seq: number, capacities: Int32Array): void;
  /**
   * Restarts the tracker state of every kept token of `seq`: score and aux words zeroed, then the
   * tracker's append rule run on it as if it had just been appended.
   */
  restartState?(store: LayerStore, seq: number, tracker: ImportanceTracker): void;
  /** Bytes the store holds (constant for its lifetime). */
  bytes(store: LayerStore): number;
  /** Empties one sequence: its lengths and its tracker clock. */
  clear(store: LayerStore, seq: number): void;
  /** Copies of the positions and scores one KV head keeps. */
  inspect(store: LayerStore, seq: number, kvHead: number): HeadInspection;
  /** Live views of what one KV head keeps (host backends). */
  view(store: LayerStore, seq: number, kvHead: number): HeadView;
  /** Frees what the backend holds; idempotent. */
  dispose(): void;
}
