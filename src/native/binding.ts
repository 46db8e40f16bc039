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
  /** Per-head layout (`HeadLayout`); absent for the dense layout. */
  readonly heads?: { readonly slots: number; readonly bases: Int32Array; readonly capacities: Int32Array };
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
  /** `count`: one count for every head, or an Int32Array of one per KV head (scope 'layer': all equal). */
  evict(store: NativeStore, seq: number, count: number | Int32Array, sinks: number, recent: number, scope: 'head' | 'layer'): void;
  /**
   * The standalone packer (docs/packing.md): quantises `input` (`rows * cols` of `dtype`; f16/bf16 as bits)
   * into `codes`, `scales` and `zeros` (f16 bits), groups of `groupSize` along `axis`.
   */
  packMatrix(
    input: HostArray, dtype: DType, bits: number, rows: number, cols: number, axis: 0 | 1, groupSize: number,
    codes: Uint8Array, scales: Uint16Array, zeros: Uint16Array,
  ): void;
  /** Dequantises into `out` (`Float32Array` for f32, else `Uint16Array` bits of `dtype`). */
  unpackMatrix(
    codes: Uint8Array, scales: Uint16Array, zeros: Uint16Array, bits: number, rows: number, cols: number, axis: 0 | 1,
    groupSize: number, dtype: DType, out: HostArray,
  ): void;
  /** `append` on a packed store (a `LayerStore` with `packed`). */
  packedAppend(
    store: NativeStore, seq: number, k: HostArray, v: HostArray, count: number, firstPosition: number,
    tracker: NativeTracker, keysOut: Float32Array | null,
  ): void;
  /** `decode` on a packed store. */
  packedDecode(
    store: NativeStore, seq: number, q: HostArray, out: HostArray, queryHeads: number, scale: number,
    tracker: NativeTracker, probsOut: Float32Array | null,
  ): void;
  /** `prefill` on a packed store. */
  packedPrefill(
    store: NativeStore, seq: number, q: HostArray, rows: number, out: HostArray, queryHeads: number, scale: number,
    tracker: NativeTracker, rowBegin: number, rowEnd: number, probsOut: Float32Array | null,
  ): void;
  /** `observe` on a packed store. */
  packedObserve(
    store: NativeStore, seq: number, probs: Float32Array, stride: number, queryHeads: number, tracker: NativeTracker,
    probsOut: Float32Array | null,
  ): void;
  /** `evict` on a packed store. */
  packedEvict(store: NativeStore, seq: number, count: number, sinks: number, recent: number, scope: 'head' | 'layer'): void;
}

/** What the CUDA addon reports about the machine (`cudaInfo()`). */
export interface CudaInfo {
  /** Always true: only the CUDA addon has this function. */
  readonly built: true;
  /** A device is present and the driver works with this build's CUDA runtime. */
  readonly available: boolean;
  /** Why no device is usable (the CUDA error of `cudaGetDeviceCount`). */
  readonly reason?: string;
  readonly devices: number;
  readonly device?: {
    readonly index: number;
    readonly name: string;
    readonly computeCapability: string;
    readonly multiProcessors: number;
    readonly memoryBytes: number;
    readonly l2Bytes: number;
  };
  /** CUDA runtime (linked statically) and driver versions, as 1000 * major + 10 * minor (0: no driver). */
  readonly runtimeVersion: number;
  readonly driverVersion: number;
  /** Architectures with machine code in this build, e.g. `80_86_89_90`. */
  readonly archs: string;
  /** Head sizes the kernels are compiled for. */
  readonly headDims: readonly number[];
}

/** A device store made by `cudaStoreCreate` (an opaque handle; freed by `cudaStoreDestroy` or the GC). */
export type NativeDeviceStore = { readonly __deviceStore: unique symbol };

/** Device addresses of a device store's arrays (layout of `LayerStore`). */
export interface DeviceStoreInfo {
  readonly keys: bigint;
  readonly values: bigint;
  readonly positions: bigint;
  readonly scores: bigint;
  /**
   * Aux words, word-major (host stores are token-major): per (sequence, head), `[seq][kvHead][word][capacity]`
   * for the dense layout; over the whole store, `[word][maxSequences * slots]`, for a per-head layout.
   */
  readonly aux: bigint;
  readonly lengths: bigint;
  readonly steps: bigint;
  /** An int32 of error flags kernels set when the device state breaks a precondition (1 no room, 2 bad length, 4 too few candidates). */
  readonly error: bigint;
  readonly bytes: number;
  readonly maxSplits: number;
  /** Per-head layouts: the int32 `[seq][kvHead]` arrays of `HeadLayout.bases` and `HeadLayout.capacities`. */
  readonly bases?: bigint;
  readonly capacities?: bigint;
  /** Packed stores: the device addresses of the `PackedStore` arrays (same layout), and the sizes. */
  readonly packed?: DevicePackedInfo;
}

/** Device addresses of a packed device store's arrays (the layout of `PackedStore`). */
export interface DevicePackedInfo {
  readonly packedSlots: number;
  readonly residualSlots: number;
  readonly maxRuns: number;
  readonly keyCodes: bigint;
  readonly valueCodes: bigint;
  readonly valueScales: bigint;
  readonly valueZeros: bigint;
  readonly keyScales: bigint;
  readonly keyZeros: bigint;
  readonly runLengths: bigint;
  readonly runGenerations: bigint;
  readonly runs: bigint;
  readonly packed: bigint;
  readonly residualKeys: bigint;
  readonly residualValues: bigint;
}

/**
 * The CUDA addon (`build/Release/scissorhands_cuda.node`): the CPU functions plus these. Addresses and
 * streams are `bigint`s (`0n` is the legacy default stream). Element types are codes (0 f32, 1 f16,
 * 2 bf16); a tensor is (address, type, row stride in elements). Trackers are `kind | gqaMax << 8 |
 * observes << 9`, window, seed. Kernel calls are asynchronous on the stream and allocate nothing;
 * `cudaUpload`/`cudaDownload` return when the copy is done.
 */
export interface RawCudaBinding extends RawBinding {
  cudaInfo(): CudaInfo;
  cudaMalloc(bytes: number): bigint;
  cudaFree(ptr: bigint): void;
  cudaUpload(dst: bigint, src: ArrayBufferView, stream: bigint): void;
  cudaDownload(dst: ArrayBufferView, src: bigint, stream: bigint): void;
  cudaMemset(dst: bigint, value: number, bytes: number, stream: bigint): void;
  cudaCopy(dst: bigint, src: bigint, bytes: number, stream: bigint): void;
  cudaSynchronize(stream: bigint): void;
  cudaStreamCreate(): bigint;
  cudaStreamDestroy(stream: bigint): void;
  cudaEventCreate(): bigint;
  cudaEventRecord(event: bigint, stream: bigint): void;
  /** Milliseconds between two recorded events (waits for `end`). */
  cudaEventElapsed(start: bigint, end: bigint): number;
  cudaEventDestroy(event: bigint): void;
  cudaStoreCreate(
    layer: number, dtype: number, maxSequences: number, kvHeads: number, headDim: number, capacity: number, auxWords: number,
    queryHeads: number, bits?: number, groupSize?: number, residual?: number, slots?: number,
  ): NativeDeviceStore;
  /** Recomputes a packed store's device-only run index after its arrays were uploaded. */
  cudaRebuildPackedIndex(store: NativeDeviceStore, stream: bigint): void;
  /**
   * The standalone packer on the device: input `[rows][cols]` (type code), codes/scales/zeros in the
   * `PackedTensor` layout; `bad` (nullable) is an int32 set to 1 when an element is not packable.
   */
  cudaPack(
    input: bigint, dtype: number, rows: number, cols: number, bits: number, axis: number, groupSize: number, codes: bigint,
    scales: bigint, zeros: bigint, bad: bigint, stream: bigint,
  ): void;
  /** Starts capturing the stream's work into a CUDA graph (global mode: a synchronising or allocating call fails it). */
  cudaGraphCaptureBegin(stream: bigint): void;
  /** Ends the capture and returns the instantiated graph (a `cudaGraphExec_t`). */
  cudaGraphCaptureEnd(stream: bigint): bigint;
  cudaGraphLaunch(exec: bigint, stream: bigint): void;
  cudaGraphDestroy(exec: bigint): void;
  cudaUnpack(
    codes: bigint, scales: bigint, zeros: bigint, rows: number, cols: number, bits: number, axis: number, groupSize: number,
    outType: number, out: bigint, stream: bigint,
  ): void;
  cudaStoreDestroy(store: NativeDeviceStore): void;
  cudaStoreInfo(store: NativeDeviceStore): DeviceStoreInfo;
  cudaAppend(
    store: NativeDeviceStore, seq: number, k: bigint, kType: number, kStride: number, v: bigint, vType: number, vStride: number,
    count: number, firstPosition: number, tracker: number, window: number, seed: number, stream: bigint,
  ): void;
  cudaDecode(
    store: NativeDeviceStore, seqs: Int32Array, maxLength: number, q: bigint, qType: number, qStride: number, out: bigint,
    outType: number, outStride: number, queryHeads: number, scale: number, tracker: number, window: number, seed: number,
    stream: bigint,
  ): void;
  /**
   * `cudaAppend` of one token then `cudaDecode` of `seq` in one call (one launch on a dense store), the
   * arguments in two reused arrays: `numbers` in the order of `AttendNumber` (src/backend/cuda.ts),
   * `pointers` k, v, q, out, stream.
   */
  cudaAttend(store: NativeDeviceStore, numbers: Float64Array, pointers: BigUint64Array): void;
  cudaPrefill(
    store: NativeDeviceStore, seq: number, length: number, q: bigint, qType: number, qStride: number, rows: number, out: bigint,
    outType: number, outStride: number, queryHeads: number, scale: number, tracker: number, window: number, seed: number,
    stream: bigint,
  ): void;
  cudaObserve(
    store: NativeDeviceStore, seq: number, length: number, probs: bigint, stride: number, queryHeads: number, tracker: number,
    window: number, seed: number, stream: bigint,
  ): void;
  /** Evicts `count` tokens from every KV head of each of `seqs` (1 to 64 distinct ids); `length` is their longest length. */
  cudaEvict(
    store: NativeDeviceStore, seqs: Int32Array, length: number, count: number, sinks: number, recent: number, layerScope: boolean,
    stream: bigint,
  ): void;
  cudaClear(store: NativeDeviceStore, seq: number, stream: bigint): void;
  /**
   * Recounts entry `entry` of a byte ledger (`kLedgerHeader + 2 * entries` int64 words at `ledger`) from what
   * `seq` holds in a packed store, and updates its totals and peak (csrc/cuda/api.h `account_packed`).
   */
  cudaAccountPacked(store: NativeDeviceStore, seq: number, ledger: bigint, entry: number, entries: number, metaPerToken: number, stream: bigint): void;
  /** Drops `counts[h]` tokens of KV head `h` of `seq` (scope head; the caller checked the candidates). */
  cudaEvictHeads(store: NativeDeviceStore, seq: number, counts: Int32Array, sinks: number, recent: number, stream: bigint): void;
  /** Gives the heads of `seq` the slots `capacities` says (per-head layouts; the caller checked them). */
  cudaRelayout(store: NativeDeviceStore, seq: number, capacities: Int32Array, stream: bigint): void;
  /** Pools the scores of slots `[0, ends[h])` of each head of `seq` over `kernel` slots (avg, or max). */
  cudaPoolScores(store: NativeDeviceStore, seq: number, kernel: number, max: boolean, ends: Int32Array, stream: bigint): void;
  /** Zeroes the tracker state of the kept tokens of `seq`, then runs the tracker's append rule on each. */
  cudaRestartState(store: NativeDeviceStore, seq: number, tracker: number, window: number, seed: number, stream: bigint): void;
  /** Reads `bytes` at `ptr` once (read-bandwidth reference); `sink` is 16 KiB of device scratch. */
  cudaReadBench(ptr: bigint, bytes: number, sink: bigint, stream: bigint): void;
}
