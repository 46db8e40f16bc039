/**
 * The raw native addon (`build/Release/scissorhands_cpu.node`), typed by hand. Every function checks
 * all of its arguments and throws a {@link KvError} subclass (once the loader has handed the addon its
 * error factory) with a stable `code` and the `argument` at fault; nothing passed here can make the
 * addon read or write out of bounds. See `docs/semantics.md` for what each kernel computes.
 * @module
 */
import type { DType, HostArray } from '../core/dtype.js';
import type { KvError } from '../core/errors.js';

/** What the addon reports about itself. */
export interface NativeInfo {
  /** The package version the addon was built from (the loader refuses a mismatch). */
  readonly version: string;
  readonly napiVersion: number;
  /**
   * Instruction set of the attention kernels on this machine; `SCISSORHANDS_SIMD=avx2` or `=scalar` in the
   * environment when the addon loads caps it.
   */
  readonly simd: 'avx512' | 'avx2' | 'scalar';
  readonly maxHeadDim: number;
  /** Threads a big attention call is split over. */
  readonly threads: number;
}

/** A layer's storage as the addon reads it; a `LayerStore` has this shape. */
export interface NativeStore {
  /** The layer index, an input of the random tracker. */
  readonly layer: number;
  readonly dtype: DType;
  readonly maxSequences: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly capacity: number;
  readonly auxWords: number;
  readonly keys: Uint8Array;
  readonly values: Uint8Array;
  readonly positions: Int32Array;
  readonly scores: Float32Array;
  readonly aux: Uint32Array;
  readonly lengths: Int32Array;
  readonly steps: Float64Array;
}

/** A tracker as the native kernels run it. */
export interface NativeTracker {
  /** A `TrackerKind` code; 0 (custom) hands combined probabilities back through `probsOut`. */
  readonly kind: number;
  /** Scissorhands window (needs `ceil(window / 32) <= store.auxWords`); 0 otherwise. */
  readonly window: number;
  /** Seed of the random tracker (taken modulo 2^32). */
  readonly seed: number;
  readonly gqa: 'mean' | 'max';
  /** Whether observations update it (`input === 'attention'`); the clock advances either way. */
  readonly observes: boolean;
}

/** Makes the error the addon throws; the loader passes one that builds {@link KvError} subclasses. */
export type ErrorFactory = (code: string, message: string, argument: string) => Error;

/** The addon's functions. */
export interface RawBinding {
  info(): NativeInfo;
  /** Sets how errors are made in this thread (environment); before it, errors are plain `Error`s with `code` and `argument`. */
  setErrorFactory(factory: ErrorFactory): void;
  /**
   * Appends `count` tokens (`k`, `v`: `[count][kvHeads][headDim]`) to every KV head of `seq` and runs the
   * tracker's append rule. `keysOut` (same length, or null) receives the keys as stored, decoded to f32.
   */
  append(
    store: NativeStore, seq: number, k: HostArray, v: HostArray, count: number, firstPosition: number,
    tracker: NativeTracker, keysOut: Float32Array | null,
  ): void;
  /**
   * One attention row; `probsOut` (`[kvHeads][capacity]`, or null) receives the GQA-combined
   * probabilities when the tracker is custom and observes.
   */
  decode(
    store: NativeStore, seq: number, q: HostArray, out: HostArray, queryHeads: number, scale: number,
    tracker: NativeTracker, probsOut: Float32Array | null,
  ): void;
  /**
   * Rows `[rowBegin, rowEnd)` of a causal prefill of `rows` rows (`q`, `out`: `[rows][queryHeads][headDim]`);
   * `probsOut` is `[rowEnd - rowBegin][kvHeads][capacity]` or null. The clock advances by the rows computed.
   */
  prefill(
    store: NativeStore, seq: number, q: HostArray, rows: number, out: HostArray, queryHeads: number, scale: number,
    tracker: NativeTracker, rowBegin: number, rowEnd: number, probsOut: Float32Array | null,
  ): void;
  /** One observation of engine-computed `probs` (`[queryHeads][stride]`); `probsOut` as for decode. */
  observe(
    store: NativeStore, seq: number, probs: Float32Array, stride: number, queryHeads: number, tracker: NativeTracker,
    probsOut: Float32Array | null,
  ): void;
  evict(store: NativeStore, seq: number, count: number, sinks: number, recent: number, scope: 'head' | 'layer'): void;
}
