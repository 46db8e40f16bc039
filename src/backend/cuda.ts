/**
 * The CUDA backend: the kernels of `docs/semantics.md` on an NVIDIA GPU (`csrc/cuda`), over stores in
 * device memory. Inputs and outputs are {@link DeviceTensor}s (SDK-owned, or views of the engine's own
 * memory) used in place on the backend's stream, or host arrays, which are copied (and wait for the
 * device) so that code written for the CPU backends runs unchanged. Built-in trackers run inside the
 * kernels; TypeScript (custom) trackers are not supported on this backend yet. Packed storage
 * (`docs/packing.md`) is: the store's packed arrays live on the device in the `PackedStore` layout, and a
 * {@link DeviceByteLedger} counts the bytes they hold for a `KVCache`.
 *
 * Each store keeps a host mirror of its lengths and clocks, and of its per-head layout (`heads`) when it has
 * one (the cache plans evictions and relayouts from it without reading the device); the kernels keep the
 * device copies, so launches can be captured in a CUDA graph.
 * @module
 */
import { type DType, type HostArray, bytesPerElement, dtypeCode, parseDType } from '../core/dtype.js';
import { ArgumentError, BackendError, BudgetError, DTypeError, DisposedError, ShapeError } from '../core/errors.js';
import { checkInt } from '../core/geometry.js';
import type { DeviceStoreInfo, NativeDeviceStore, RawCudaBinding } from '../native/binding.js';
import { loadCuda } from '../native/loader.js';
import { formatBits, parsePackFormat } from '../quant/format.js';
import type { PackOptions, PackedTensor } from '../quant/packer.js';
import { type PackedStorage, isPacked, kvBytesPerHead } from '../quant/storage.js';
import { TrackerKind, type ImportanceTracker } from '../trackers/tracker.js';
import type { AttentionSpec, Backend, HeadInspection, HeadView, LayerStore, LayerStoreSpec, PackedStore } from './backend.js';
import { DeviceTensor } from './device-tensor.js';
import { checkPooling, evenLayout, headBase, headCapacity, planRelayout, spreadEvenly } from './host-store.js';
import { allocatePacked, checkPackable, viewPacked } from './packed-store.js';

/** An input or output the cuda backend accepts: a device tensor, or a host array (copied). */
export type CudaArray = HostArray | DeviceTensor;

/** The device side of a {@link CudaLayerStore}. */
export interface DeviceStore {
  readonly native: NativeDeviceStore;
  /** Device addresses of the store's arrays. */
  readonly info: DeviceStoreInfo;
  /** Query heads the store's scratch is sized for. */
  readonly queryHeads: number;
  /** Packed storage of the store (its arrays are `info.packed`); absent for dense rows. */
  readonly storage?: PackedStorage;
}

/**
 * A layer store whose data lives on the GPU. `keys`, `values`, `positions`, `scores` and `aux` are empty
 * host arrays; `lengths` and `steps` are the host mirror. Read the data with `inspect`/`view` (copies),
 * or {@link copyStoreToHost}. A packed store has no host `packed` arrays: its format is
 * `device.storage` and {@link copyStoreToHost} returns them.
 */
export interface CudaLayerStore extends LayerStore {
  readonly device: DeviceStore;
}

/** Options of {@link createCudaBackend}. */
export interface CudaBackendOptions {
  /** The CUDA stream (a `cudaStream_t` as bigint) kernels are launched on; default `0n`, the legacy default stream. */
  readonly stream?: bigint;
}

/**
 * Device addresses of a packed tensor's arrays (the {@link PackedTensor} layout), for
 * {@link CudaBackend.packDevice} and {@link CudaBackend.unpackDevice}.
 * @example
 * ```ts
 * const rows = 4096, cols = 128, groups = (rows * cols) / 32;
 * const out = { codes: raw.cudaMalloc((rows * cols) / 2), scales: raw.cudaMalloc(2 * groups), zeros: raw.cudaMalloc(2 * groups) };
 * backend.packDevice(values, { format: 'int4', shape: [rows, cols] }, out);
 * ```
 */
export interface DevicePacked {
  readonly codes: bigint;
  readonly scales: bigint;
  readonly zeros: bigint;
}

/**
 * Exact bytes of keys and values that packed device stores hold, counted on the device, where the kernels
 * change the counts they depend on (tokens packed, key runs in use): what a packed `KVCache` on this
 * backend reports in `stats()` (docs/cuda.md, "Packed storage through KVCache"). Per entry (the cache's
 * `layer * maxSequences + seq`) it keeps the bytes and tokens last counted, with their totals and the
 * largest `bytes + tokens * metaPerToken` so far. Made by {@link CudaBackend.createLedger}; freed with the
 * backend.
 */
export interface DeviceByteLedger {
  /** Device bytes the ledger holds. */
  readonly bytes: number;
  /**
   * Queues on the backend's stream, after the work already queued, the recount of entry `entry` from what
   * `seq` holds in the packed `store` now (the formula of `packedKvBytesUsed`), and the update of the totals
   * and the peak. Neither allocates nor synchronises, so it can be captured in a CUDA graph.
   */
  account(store: LayerStore, seq: number, entry: number): void;
  /** The totals now (waits for the stream): bytes of keys and values, tokens, and the peak of their bytesUsed. */
  read(): { kvBytes: number; tokens: number; peakBytesUsed: number };
}

/** The CUDA backend: the {@link Backend} table plus stream control and batched decode. */
export interface CudaBackend extends Backend {
  readonly name: 'cuda';
  /** The stream every launch and copy goes on (settable, e.g. to the engine's stream). */
  stream: bigint;
  /** Waits for the work queued on the stream. */
  synchronize(): void;
  /**
   * {@link Backend.append} of one token then {@link Backend.decode}, as one addon call: on a dense store with
   * device tensors, one launch (the split-K kernel block whose key range holds the new slot writes the
   * token first) and no allocation; packed stores and host arrays run the two calls.
   */
  attend(
    store: LayerStore, seq: number, k: CudaArray, v: CudaArray, position: number, q: CudaArray, out: CudaArray,
    attention: AttentionSpec, tracker: ImportanceTracker,
  ): void;
  /**
   * One decode row for each of `seqs` (up to any number; 64 per launch) in one go: `q` and `out` are
   * `[seqs.length][queryHeads][headDim]`, row `b` belonging to `seqs[b]`.
   */
  decodeBatch(store: LayerStore, seqs: Int32Array, q: CudaArray, out: CudaArray, attention: AttentionSpec, tracker: ImportanceTracker): void;
  /**
   * {@link Backend.evict} for several sequences in one launch (64 at a time): the same count and
   * protections for each, every head of each having the candidates.
   */
  evictBatch(store: LayerStore, seqs: Int32Array, count: number, sinks: number, recent: number, scope: 'head' | 'layer'): void;
  /**
   * Device memory the store holds: its arrays plus the kernels' scratch (raw decode scores
   * `[maxSequences][queryHeads][capacity]` floats, split-K partials, eviction bookkeeping). `bytes()` and
   * `stats()` count the arrays only, as on the host backends.
   */
  deviceBytes(store: LayerStore): number;
  /**
   * A zeroed {@link DeviceByteLedger} of `entries` entries whose peak counts `metaPerToken` bytes per kept
   * token beside the keys and values (allocates and waits: create it with the cache, not on the decode path).
   */
  createLedger(entries: number, metaPerToken: number): DeviceByteLedger;
  /**
   * Reads and clears the store's device error flags (waits for the stream): 0 when every kernel found its
   * preconditions (1 no room, 2 bad length, 4 too few candidates, 8 an unpackable key or value).
   */
  errors(store: LayerStore): number;
  /**
   * The standalone packer on the GPU, asynchronous on the stream: quantises the device matrix `input`
   * (`options.shape`, its dtype) into `out` (device arrays of the {@link PackedTensor} sizes), bit for bit
   * as the CPU packer. Needs whole code bytes per group: axis 1 with `groupSize * bits` a multiple of 8,
   * axis 0 with `cols * bits` a multiple of 8 (else `KV_ARGUMENT`, argument `groupSize`). `bad`, an int32
   * device flag, is set to 1 when an element is NaN, infinite or beyond +-65504 (its group's bits are then
   * unspecified).
   */
  packDevice(input: DeviceTensor, options: PackOptions, out: DevicePacked, bad?: bigint): void;
  /** Dequantises device arrays of a packed tensor into `out` (f32, or f16/bf16 rounded to nearest even). */
  unpackDevice(packed: DevicePacked, options: PackOptions, out: DeviceTensor): void;
  /**
   * Packs on the GPU and returns the host {@link PackedTensor} (waits); host inputs are uploaded. Throws
   * `ArgumentError` (argument `input`) for an unpackable element.
   */
  pack(input: CudaArray, options: PackOptions): PackedTensor;
}

/** Validated packer options as the addon takes them. */
function packShape(options: PackOptions, length: number): { rows: number; cols: number; bits: 2 | 4 | 8; axis: 0 | 1; groupSize: number } {
  const format = parsePackFormat(options.format, 'format');
  if (!Array.isArray(options.shape) || options.shape.length !== 2) throw new ArgumentError('expected [rows, cols]', 'shape');
  const rows = checkInt(options.shape[0], 'shape', 1);
  const cols = checkInt(options.shape[1], 'shape', 1);
  const axis = options.axis ?? 1;
  if (axis !== 0 && axis !== 1) throw new ArgumentError('expected 0 or 1', 'axis');
  const groupSize = checkInt(options.groupSize ?? 32, 'groupSize', 1, axis === 1 ? cols : rows);
  if (rows * cols !== length) throw new ShapeError(`expected ${rows * cols} elements, got ${length}`, 'input');
  return { rows, cols, bits: formatBits(format), axis, groupSize };
}

/** Slots of the numbers array of `cudaAttend` (csrc/napi/cuda_calls.cc AttendNumber: the same order). */
const enum AttendNumber {
  Seq, MaxLength, Position, KType, KStride, VType, VStride, QType, QStride, OutType, OutStride, QueryHeads, Scale, TrackerFlags,
  TrackerWindow, TrackerSeed, Count,
}

/** Slots of the pointers array of `cudaAttend`. */
const enum AttendPointer { K, V, Q, Out, Stream, Count }

/** int64 words of totals before a byte ledger's entries (csrc/cuda/api.h kLedgerHeader). */
const LEDGER_HEADER = 3;

const EMPTY_U8 = new Uint8Array(0);
const EMPTY_I32 = new Int32Array(0);
const EMPTY_F32 = new Float32Array(0);
const EMPTY_U32 = new Uint32Array(0);

function deviceOf(store: LayerStore): DeviceStore {
  const device = (store as Partial<CudaLayerStore>).device;
  if (device === undefined) throw new ArgumentError('the store was not allocated by the cuda backend', 'store');
  return device;
}

/** Tracker flags as the CUDA addon takes them: `kind | gqaMax << 8 | observes << 9`. */
function trackerFlags(store: LayerStore, tracker: ImportanceTracker): number {
  if (tracker.auxWords !== store.auxWords) {
    throw new ArgumentError(`the tracker needs ${tracker.auxWords} aux words per token, the store has ${store.auxWords}`, 'tracker');
  }
  const kernel = tracker.kernel;
  if (kernel === undefined || kernel.kind === TrackerKind.Custom) {
    throw new BackendError(
      `tracker ${tracker.name} has no native kernel: the cuda backend runs built-in trackers only (custom TypeScript trackers need the cpu backend for now)`,
      'tracker',
    );
  }
  return kernel.kind | (tracker.gqa === 'max' ? 0x100 : 0) | (tracker.input === 'attention' ? 0x200 : 0);
}

/**
 * Creates the CUDA backend on the current device.
 * @throws `KV_BACKEND` when there is no CUDA build or no usable device (`backendInfo().cuda.reason` says which).
 * @example
 * ```ts
 * const backend = createCudaBackend({ stream: engineStream });
 * const store = backend.allocate({ layer: 0, dtype: 'f16', maxSequences: 8, kvHeads: 8, headDim: 128, capacity: 4096, auxWords: 13, queryHeads: 32 });
 * backend.append(store, 0, k, v, 1, 0, tracker);
 * backend.decode(store, 0, q, out, { queryHeads: 32, scale: 1 / Math.sqrt(128) }, tracker);
 * ```
 */
export function createCudaBackend(options: CudaBackendOptions = {}): CudaBackend {
  let native: RawCudaBinding | undefined = loadCuda();
  let stream = options.stream ?? 0n;
  const stores = new Set<NativeDeviceStore>();
  /** Device staging for host-array inputs and outputs, by role; grown on demand. */
  const staging = new Map<string, { ptr: bigint; bytes: number }>();
  const one = new Int32Array(1);
  /** The arguments of `cudaAttend`, reused by every call (the decode path allocates nothing). */
  const attendNumbers = new Float64Array(AttendNumber.Count);
  const attendPointers = new BigUint64Array(AttendPointer.Count);
  /** Device allocations of the ledgers made, freed with the backend. */
  const ledgers = new Set<bigint>();

  function live(): RawCudaBinding {
    if (native === undefined) throw new DisposedError('the cuda backend');
    return native;
  }

  function stage(role: string, bytes: number): bigint {
    const binding = live();
    let buffer = staging.get(role);
    if (buffer === undefined || buffer.bytes < bytes) {
      if (buffer !== undefined) {
        binding.cudaSynchronize(stream);
        binding.cudaFree(buffer.ptr);
      }
      const size = Math.max(256, bytes, buffer === undefined ? 0 : buffer.bytes * 2);
      buffer = { ptr: binding.cudaMalloc(size), bytes: size };
      staging.set(role, buffer);
    }
    return buffer.ptr;
  }

  /** The element-type code of an input for a store. */
  function typeOf(store: LayerStore, array: CudaArray, argument: string): number {
    if (array instanceof DeviceTensor) {
      if (array.dtype !== 'f32' && array.dtype !== store.dtype) {
        throw new DTypeError(`expected f32 or ${store.dtype} elements, got ${array.dtype}`, argument);
      }
      return dtypeCode(array.dtype);
    }
    if (array instanceof Float32Array) return 0;
    if (array instanceof Uint16Array) {
      if (store.dtype === 'f32') throw new DTypeError('a Uint16Array holds f16/bf16 bits, but the store is f32: pass a Float32Array', argument);
      return dtypeCode(store.dtype);
    }
    throw new DTypeError('expected a DeviceTensor, Float32Array or Uint16Array', argument);
  }

  /** (address, type, row stride) of an input of `rows` rows of `rowLength` elements; host arrays are uploaded. */
  function input(store: LayerStore, array: CudaArray, argument: string, rows: number, rowLength: number): [bigint, number, number] {
    const type = typeOf(store, array, argument);
    if (array.length !== rows * rowLength) throw new ShapeError(`expected ${rows * rowLength} elements, got ${array.length}`, argument);
    if (array instanceof DeviceTensor) return [array.ptr, type, array.strideFor(rowLength)];
    const ptr = stage(argument, array.byteLength);
    live().cudaUpload(ptr, array, stream);
    return [ptr, type, rowLength];
  }

  /** (address, type, row stride) of an output like `like`; host outputs go to staging first. */
  function output(store: LayerStore, array: CudaArray, like: CudaArray, rows: number, rowLength: number): [bigint, number, number] {
    const type = typeOf(store, array, 'out');
    const likeType = typeOf(store, like, 'q');
    if (type !== likeType) throw new DTypeError('expected the same element type as q', 'out');
    if (array.length !== rows * rowLength) throw new ShapeError(`expected ${rows * rowLength} elements, got ${array.length}`, 'out');
    if (array instanceof DeviceTensor) return [array.ptr, type, array.strideFor(rowLength)];
    return [stage('out', array.byteLength), type, rowLength];
  }

  function finish(out: CudaArray, ptr: bigint): void {
    if (!(out instanceof DeviceTensor)) live().cudaDownload(out, ptr, stream);
  }

  /** Throws unless every KV head of `seq` has room for `count` more tokens. */
  function checkRoom(store: LayerStore, seq: number, count: number): void {
    const { kvHeads } = store;
    for (let h = 0; h < kvHeads; h++) {
      const n = store.lengths[seq * kvHeads + h]!;
      const capacity = headCapacity(store, seq * kvHeads + h);
      if (count > capacity - n) {
        throw new BudgetError(`head ${h} of sequence ${seq} keeps ${n} of ${capacity} tokens: no room for ${count} more`, 'count');
      }
    }
  }

  /**
   * Puts device tensor `array` (`length` elements, rows of `rowLength`) in the `cudaAttend` arrays: its
   * address in pointer slot `at`, its element type and row stride from number slot `type`.
   */
  function attendTensor(store: LayerStore, array: DeviceTensor, argument: string, length: number, rowLength: number, at: AttendPointer, type: number): void {
    if (array.length !== length) throw new ShapeError(`expected ${length} elements, got ${array.length}`, argument);
    attendPointers[at] = array.ptr;
    attendNumbers[type] = typeOf(store, array, argument);
    attendNumbers[type + 1] = array.strideFor(rowLength);
  }

  function checkSeq(store: LayerStore, seq: number): number {
    return checkInt(seq, 'seq', 0, store.maxSequences - 1);
  }

  function longest(store: LayerStore, seq: number): number {
    let n = 0;
    for (let h = 0; h < store.kvHeads; h++) n = Math.max(n, store.lengths[seq * store.kvHeads + h]!);
    return n;
  }

  function checkAttention(store: LayerStore, attention: AttentionSpec): number {
    const device = deviceOf(store);
    const queryHeads = checkInt(attention.queryHeads, 'attention.queryHeads', 1, device.queryHeads);
    if (queryHeads % store.kvHeads !== 0) throw new ArgumentError("must be a multiple of the store's kvHeads", 'attention.queryHeads');
    if (typeof attention.scale !== 'number' || !Number.isFinite(attention.scale)) throw new ArgumentError('expected a finite number', 'attention.scale');
    return queryHeads;
  }

  const backend: CudaBackend = {
    name: 'cuda',

    get stream(): bigint {
      return stream;
    },
    set stream(value: bigint) {
      if (typeof value !== 'bigint' || value < 0n) throw new ArgumentError('expected a bigint cudaStream_t (0n for the default stream)', 'stream');
      stream = value;
    },

    synchronize(): void {
      live().cudaSynchronize(stream);
    },

    allocate(spec: LayerStoreSpec): LayerStore {
      const binding = live();
      const storage = isPacked(spec.storage) ? spec.storage : undefined;
      const dtype: DType = parseDType(spec.dtype, 'dtype');
      const maxSequences = checkInt(spec.maxSequences, 'maxSequences', 1, 1 << 16);
      const kvHeads = checkInt(spec.kvHeads, 'kvHeads', 1, 4096);
      const headDim = checkInt(spec.headDim, 'headDim', 1, 512);
      const capacity = checkInt(spec.capacity, 'capacity', 1, 1 << 24);
      const auxWords = checkInt(spec.auxWords, 'auxWords', 0, 1 << 16);
      const layer = checkInt(spec.layer, 'layer', 0);
      const queryHeads = checkInt(spec.queryHeads ?? Math.min(4096, kvHeads * 8), 'queryHeads', kvHeads, 4096);
      if (storage !== undefined && (storage.groupSize % 8 !== 0 || headDim % storage.groupSize !== 0)) {
        throw new ArgumentError('must be a multiple of 8 that divides headDim', 'storage.groupSize');
      }
      const slots = spec.slots === undefined ? undefined : checkInt(spec.slots, 'slots', kvHeads, Math.floor((2 ** 31 - 1) / maxSequences));
      if (slots !== undefined && storage !== undefined) {
        throw new ArgumentError('packed storage has no per-head layout: heads with their own budgets need dense storage', 'storage');
      }
      const handle = storage === undefined
        ? binding.cudaStoreCreate(layer, dtypeCode(dtype), maxSequences, kvHeads, headDim, capacity, auxWords, queryHeads, undefined, undefined, undefined, slots)
        : binding.cudaStoreCreate(
          layer, dtypeCode(dtype), maxSequences, kvHeads, headDim, capacity, auxWords, queryHeads, storage.bits, storage.groupSize,
          storage.residual,
        );
      stores.add(handle);
      const store: CudaLayerStore = {
        layer, dtype, maxSequences, kvHeads, headDim, capacity, auxWords,
        keys: EMPTY_U8, values: EMPTY_U8, positions: EMPTY_I32, scores: EMPTY_F32, aux: EMPTY_U32,
        lengths: new Int32Array(maxSequences * kvHeads),
        steps: new Float64Array(maxSequences),
        device: { native: handle, info: binding.cudaStoreInfo(handle), queryHeads, ...(storage === undefined ? {} : { storage }) },
        // The host mirror of the device layout (the kernels keep the device copy in step).
        ...(slots === undefined ? {} : { heads: evenLayout(maxSequences, kvHeads, capacity, slots) }),
      };
      return store;
    },

    bytes(store: LayerStore): number {
      // The store's arrays in the LayerStore layout (what stats() counts on every backend); the device
      // scratch beside them is deviceBytes().
      const device = deviceOf(store);
      const heads = store.maxSequences * store.kvHeads;
      const tokens = tokenSlots(store);
      const kv = device.storage === undefined
        ? tokens * 2 * store.headDim * bytesPerElement(store.dtype)
        : heads * kvBytesPerHead(device.storage, store.dtype, store.headDim, store.capacity);
      const layout = store.heads === undefined ? 0 : store.heads.bases.byteLength + store.heads.capacities.byteLength;
      return kv + tokens * (8 + 4 * store.auxWords) + store.lengths.byteLength + store.steps.byteLength + layout;
    },

    deviceBytes(store: LayerStore): number {
      return deviceOf(store).info.bytes;
    },

    clear(store: LayerStore, seq: number): void {
      const device = deviceOf(store);
      checkSeq(store, seq);
      live().cudaClear(device.native, seq, stream);
      store.lengths.fill(0, seq * store.kvHeads, (seq + 1) * store.kvHeads);
      store.steps[seq] = 0;
      if (store.heads !== undefined) spreadEvenly(store.heads, seq, store.kvHeads, store.capacity);
    },

    inspect(store: LayerStore, seq: number, kvHead: number): HeadInspection {
      const device = deviceOf(store);
      checkSeq(store, seq);
      checkInt(kvHead, 'kvHead', 0, store.kvHeads - 1);
      const n = store.lengths[seq * store.kvHeads + kvHead]!;
      const first = BigInt(headBase(store, seq * store.kvHeads + kvHead) * 4);
      const positions = new Int32Array(n);
      const scores = new Float32Array(n);
      if (n > 0) {
        live().cudaDownload(positions, device.info.positions + first, stream);
        live().cudaDownload(scores, device.info.scores + first, stream);
      }
      return { positions, scores };
    },

    view(store: LayerStore, seq: number, kvHead: number): HeadView {
      const device = deviceOf(store);
      checkSeq(store, seq);
      checkInt(kvHead, 'kvHead', 0, store.kvHeads - 1);
      if (device.storage !== undefined) {
        // Copies the store and decodes the head as the packed reference does (a test and debugging aid).
        return viewPacked(copyStoreToHost(backend, store), seq, kvHead);
      }
      const n = store.lengths[seq * store.kvHeads + kvHead]!;
      const slot = headBase(store, seq * store.kvHeads + kvHead);
      const d = store.headDim;
      const row = BigInt(d * bytesPerElement(store.dtype));
      const make = (): HostArray => (store.dtype === 'f32' ? new Float32Array(n * d) : new Uint16Array(n * d));
      const keys = make();
      const values = make();
      const positions = new Int32Array(n);
      if (n > 0) {
        live().cudaDownload(keys, device.info.keys + BigInt(slot) * row, stream);
        live().cudaDownload(values, device.info.values + BigInt(slot) * row, stream);
        live().cudaDownload(positions, device.info.positions + BigInt(slot * 4), stream);
      }
      return { length: n, keys, values, positions };
    },

    append(store, seq, k, v, count, firstPosition, tracker): void {
      const binding = live();
      const device = deviceOf(store);
      checkSeq(store, seq);
      checkInt(count, 'count', 0, store.capacity);
      checkInt(firstPosition, 'firstPosition', -(2 ** 31), 2 ** 31 - 1 - count);
      const flags = trackerFlags(store, tracker);
      const { kvHeads, headDim } = store;
      checkRoom(store, seq, count);
      if (count === 0) return;
      if (device.storage !== undefined) {
        // Host inputs are refused here as on the CPU backends; device inputs by the kernel (errors()).
        if (!((k as CudaArray) instanceof DeviceTensor)) checkPackable(store.dtype, k, 'k');
        if (!((v as CudaArray) instanceof DeviceTensor)) checkPackable(store.dtype, v, 'v');
      }
      const kernel = tracker.kernel!;
      const [kp, kt, ks] = input(store, k as CudaArray, 'k', count, kvHeads * headDim);
      const [vp, vt, vs] = input(store, v as CudaArray, 'v', count, kvHeads * headDim);
      binding.cudaAppend(device.native, seq, kp, kt, ks, vp, vt, vs, count, firstPosition, flags, kernel.window, kernel.seed, stream);
      for (let h = 0; h < kvHeads; h++) store.lengths[seq * kvHeads + h]! += count;
    },

    decode(store, seq, q, out, attention, tracker): void {
      checkSeq(store, seq);
      one[0] = seq;
      backend.decodeBatch(store, one, q as CudaArray, out as CudaArray, attention, tracker);
    },

    attend(store, seq, k, v, position, q, out, attention, tracker): void {
      if (!(k instanceof DeviceTensor && v instanceof DeviceTensor && q instanceof DeviceTensor && out instanceof DeviceTensor)) {
        // Host arrays are staged and waited for anyway: the two calls cost no more.
        backend.append(store, seq, k as HostArray, v as HostArray, 1, position, tracker);
        backend.decode(store, seq, q as HostArray, out as HostArray, attention, tracker);
        return;
      }
      const binding = live();
      const device = deviceOf(store);
      checkSeq(store, seq);
      checkInt(position, 'firstPosition', -(2 ** 31), 2 ** 31 - 2);
      const queryHeads = checkAttention(store, attention);
      const flags = trackerFlags(store, tracker);
      checkRoom(store, seq, 1);
      const { kvHeads, headDim } = store;
      const row = queryHeads * headDim;
      attendTensor(store, k, 'k', kvHeads * headDim, kvHeads * headDim, AttendPointer.K, AttendNumber.KType);
      attendTensor(store, v, 'v', kvHeads * headDim, kvHeads * headDim, AttendPointer.V, AttendNumber.VType);
      attendTensor(store, q, 'q', row, row, AttendPointer.Q, AttendNumber.QType);
      attendTensor(store, out, 'out', row, row, AttendPointer.Out, AttendNumber.OutType);
      if (attendNumbers[AttendNumber.OutType] !== attendNumbers[AttendNumber.QType]) throw new DTypeError('expected the same element type as q', 'out');
      attendPointers[AttendPointer.Stream] = stream;
      attendNumbers[AttendNumber.Seq] = seq;
      attendNumbers[AttendNumber.MaxLength] = longest(store, seq) + 1;
      attendNumbers[AttendNumber.Position] = position;
      attendNumbers[AttendNumber.QueryHeads] = queryHeads;
      attendNumbers[AttendNumber.Scale] = attention.scale;
      attendNumbers[AttendNumber.TrackerFlags] = flags;
      attendNumbers[AttendNumber.TrackerWindow] = tracker.kernel!.window;
      attendNumbers[AttendNumber.TrackerSeed] = tracker.kernel!.seed;
      binding.cudaAttend(device.native, attendNumbers, attendPointers);
      for (let h = 0; h < kvHeads; h++) store.lengths[seq * kvHeads + h]! += 1;
      store.steps[seq]! += 1;
    },

    decodeBatch(store, seqs, q, out, attention, tracker): void {
      const binding = live();
      const device = deviceOf(store);
      if (!(seqs instanceof Int32Array) || seqs.length === 0) throw new ArgumentError('expected a non-empty Int32Array of sequence ids', 'seqs');
      const queryHeads = checkAttention(store, attention);
      const flags = trackerFlags(store, tracker);
      const kernel = tracker.kernel!;
      const batch = seqs.length;
      let maxLength = 1;
      for (let b = 0; b < batch; b++) {
        const seq = checkSeq(store, seqs[b]!);
        if (seqs.indexOf(seq) !== b) throw new ArgumentError(`sequence ${seq} appears twice`, 'seqs');
        for (let h = 0; h < store.kvHeads; h++) {
          const n = store.lengths[seq * store.kvHeads + h]!;
          if (n < 1) throw new ArgumentError(`decode needs the query token appended first, but KV head ${h} of sequence ${seq} keeps no tokens`, 'rows');
          maxLength = Math.max(maxLength, n);
        }
      }
      const row = queryHeads * store.headDim;
      const [qp, qt, qs] = input(store, q, 'q', batch, row);
      const [op, ot, os] = output(store, out, q, batch, row);
      for (let b0 = 0; b0 < batch; b0 += 64) {
        const part = batch <= 64 ? seqs : seqs.subarray(b0, Math.min(batch, b0 + 64));
        const qOffset = BigInt(b0 * qs * (qt === 0 ? 4 : 2));
        const oOffset = BigInt(b0 * os * (ot === 0 ? 4 : 2));
        binding.cudaDecode(
          device.native, part, maxLength, qp + qOffset, qt, qs, op + oOffset, ot, os, queryHeads, attention.scale, flags,
          kernel.window, kernel.seed, stream,
        );
      }
      for (let b = 0; b < batch; b++) store.steps[seqs[b]!]! += 1;
      finish(out, op);
    },

    prefill(store, seq, q, rows, out, attention, tracker): void {
      const binding = live();
      const device = deviceOf(store);
      checkSeq(store, seq);
      const queryHeads = checkAttention(store, attention);
      checkInt(rows, 'rows', 1, store.capacity);
      const flags = trackerFlags(store, tracker);
      const kernel = tracker.kernel!;
      for (let h = 0; h < store.kvHeads; h++) {
        const n = store.lengths[seq * store.kvHeads + h]!;
        if (n < rows) throw new ArgumentError(`${rows} query row(s) need as many kept tokens, but KV head ${h} keeps ${n}`, 'rows');
      }
      const row = queryHeads * store.headDim;
      const [qp, qt, qs] = input(store, q as CudaArray, 'q', rows, row);
      const [op, ot, os] = output(store, out as CudaArray, q as CudaArray, rows, row);
      binding.cudaPrefill(
        device.native, seq, longest(store, seq), qp, qt, qs, rows, op, ot, os, queryHeads, attention.scale, flags, kernel.window,
        kernel.seed, stream,
      );
      store.steps[seq]! += rows;
      finish(out as CudaArray, op);
    },

    observe(store, seq, probs, stride, queryHeads, tracker): void {
      const binding = live();
      const device = deviceOf(store);
      checkSeq(store, seq);
      checkAttention(store, { queryHeads, scale: 1 });
      checkInt(stride, 'stride', 0, 2 ** 31 - 1);
      const flags = trackerFlags(store, tracker);
      const kernel = tracker.kernel!;
      const n = longest(store, seq);
      if (n > stride) throw new ShapeError(`stride ${stride} is shorter than the ${n} tokens kept`, 'stride');
      const array = probs as CudaArray;
      if (array instanceof DeviceTensor ? array.dtype !== 'f32' : !(array instanceof Float32Array)) {
        throw new DTypeError('expected f32 probabilities', 'probs');
      }
      const [pp] = input(store, array, 'probs', queryHeads, stride);
      binding.cudaObserve(device.native, seq, n, pp, stride, queryHeads, flags, kernel.window, kernel.seed, stream);
      store.steps[seq]! += 1;
    },

    evict(store, seq, count, sinks, recent, scope): void {
      checkSeq(store, seq);
      one[0] = seq;
      backend.evictBatch(store, one, count, sinks, recent, scope);
    },

    evictBatch(store, seqs, count, sinks, recent, scope): void {
      const binding = live();
      const device = deviceOf(store);
      if (!(seqs instanceof Int32Array) || seqs.length === 0) throw new ArgumentError('expected a non-empty Int32Array of sequence ids', 'seqs');
      checkInt(count, 'count', 0);
      checkInt(sinks, 'sinks', 0);
      checkInt(recent, 'recent', 0);
      if (scope !== 'head' && scope !== 'layer') throw new ArgumentError("expected 'head' or 'layer'", 'scope');
      const { kvHeads } = store;
      let longest = 0;
      for (let b = 0; b < seqs.length; b++) {
        const seq = checkSeq(store, seqs[b]!);
        if (seqs.indexOf(seq) !== b) throw new ArgumentError(`sequence ${seq} appears twice`, 'seqs');
        const length = store.lengths[seq * kvHeads]!;
        for (let h = 0; h < kvHeads; h++) {
          const n = store.lengths[seq * kvHeads + h]!;
          const candidates = Math.max(0, n - sinks - recent);
          if (count > candidates) {
            throw new BudgetError(
              `head ${h} has ${candidates} tokens outside the ${sinks} sinks and ${recent} recent ones, asked to drop ${count}`, 'count');
          }
          // One choice for the layer is made on the mean score of each slot over heads of one length.
          if (scope === 'layer' && n !== length) throw new ArgumentError("scope 'layer' needs every KV head of a sequence to keep the same number of tokens", 'scope');
          longest = Math.max(longest, n);
        }
      }
      if (count === 0) return;
      for (let b0 = 0; b0 < seqs.length; b0 += 64) {
        const part = seqs.length <= 64 ? seqs : seqs.subarray(b0, Math.min(seqs.length, b0 + 64));
        binding.cudaEvict(device.native, part, longest, count, sinks, recent, scope === 'layer', stream);
      }
      for (const seq of seqs) for (let h = 0; h < kvHeads; h++) store.lengths[seq * kvHeads + h]! -= count;
    },

    evictHeads(store, seq, counts, sinks, recent): void {
      const binding = live();
      const device = deviceOf(store);
      checkSeq(store, seq);
      checkInt(sinks, 'sinks', 0);
      checkInt(recent, 'recent', 0);
      const { kvHeads } = store;
      if (device.storage !== undefined) throw new ArgumentError('packed stores evict the same count from every head', 'count');
      if (!(counts instanceof Int32Array) || counts.length !== kvHeads) throw new ArgumentError(`expected ${kvHeads} counts`, 'counts');
      for (let h = 0; h < kvHeads; h++) {
        const count = checkInt(counts[h], `counts[${h}]`, 0);
        const candidates = Math.max(0, store.lengths[seq * kvHeads + h]! - sinks - recent);
        if (count > candidates) {
          throw new BudgetError(`head ${h} has ${candidates} tokens outside the ${sinks} sinks and ${recent} recent ones, asked to drop ${count}`, 'counts');
        }
      }
      binding.cudaEvictHeads(device.native, seq, counts, sinks, recent, stream);
      for (let h = 0; h < kvHeads; h++) store.lengths[seq * kvHeads + h]! -= counts[h]!;
    },

    poolScores(store, seq, kernel, pooling, ends): void {
      const binding = live();
      const device = deviceOf(store);
      checkPooling(store, seq, kernel, pooling, ends);
      binding.cudaPoolScores(device.native, seq, kernel, pooling === 'max', ends, stream);
    },

    relayout(store, seq, capacities): void {
      const binding = live();
      const device = deviceOf(store);
      const bases = planRelayout(store, seq, capacities);
      binding.cudaRelayout(device.native, seq, capacities, stream);
      const first = seq * store.kvHeads;
      store.heads!.bases.set(bases, first);
      store.heads!.capacities.set(capacities, first);
    },

    restartState(store, seq, tracker): void {
      const binding = live();
      const device = deviceOf(store);
      checkSeq(store, seq);
      if (device.storage !== undefined) throw new ArgumentError('tracker state restarts need dense storage', 'store');
      const flags = trackerFlags(store, tracker);
      binding.cudaRestartState(device.native, seq, flags, tracker.kernel!.window, tracker.kernel!.seed, stream);
    },

    createLedger(entries: number, metaPerToken: number): DeviceByteLedger {
      const binding = live();
      checkInt(entries, 'entries', 1, 2 ** 31 - 1);
      checkInt(metaPerToken, 'metaPerToken', 0, 2 ** 31 - 1);
      // int64 words: the totals, then bytes and tokens per entry (csrc/cuda/api.h account_packed).
      const bytes = 8 * (LEDGER_HEADER + 2 * entries);
      const ptr = binding.cudaMalloc(bytes);
      ledgers.add(ptr);
      binding.cudaMemset(ptr, 0, bytes, stream);
      binding.cudaSynchronize(stream);
      const totals = new BigInt64Array(LEDGER_HEADER);
      return {
        bytes,
        account(store: LayerStore, seq: number, entry: number): void {
          const device = deviceOf(store);
          if (device.storage === undefined) throw new ArgumentError('the byte ledger counts packed stores only', 'store');
          live().cudaAccountPacked(device.native, checkSeq(store, seq), ptr, entry, entries, metaPerToken, stream);
        },
        read(): { kvBytes: number; tokens: number; peakBytesUsed: number } {
          live().cudaDownload(totals, ptr, stream);
          return { kvBytes: Number(totals[0]), tokens: Number(totals[1]), peakBytesUsed: Number(totals[2]) };
        },
      };
    },

    errors(store: LayerStore): number {
      const device = deviceOf(store);
      const flags = new Int32Array(1);
      live().cudaDownload(flags, device.info.error, stream);
      if (flags[0] !== 0) live().cudaMemset(device.info.error, 0, 4, stream);
      return flags[0]!;
    },

    packDevice(input, options, out, bad = 0n): void {
      if (!(input instanceof DeviceTensor)) throw new DTypeError('expected a DeviceTensor', 'input');
      const { rows, cols, bits, axis, groupSize } = packShape(options, input.length);
      live().cudaPack(input.ptr, dtypeCode(input.dtype), rows, cols, bits, axis, groupSize, out.codes, out.scales, out.zeros, bad, stream);
    },

    unpackDevice(packed, options, out): void {
      if (!(out instanceof DeviceTensor)) throw new DTypeError('expected a DeviceTensor', 'out');
      const { rows, cols, bits, axis, groupSize } = packShape(options, out.length);
      live().cudaUnpack(packed.codes, packed.scales, packed.zeros, rows, cols, bits, axis, groupSize, dtypeCode(out.dtype), out.ptr, stream);
    },

    pack(input, options): PackedTensor {
      const binding = live();
      const dtype: DType = input instanceof DeviceTensor ? input.dtype : input instanceof Float32Array ? 'f32' : parseDType(options.dtype ?? 'f16', 'dtype');
      const { rows, cols, bits, axis, groupSize } = packShape(options, input.length);
      const codes = new Uint8Array(Math.ceil((rows * cols * bits) / 8));
      const scales = new Uint16Array((rows * cols) / groupSize);
      const zeros = new Uint16Array(scales.length);
      const source = input instanceof DeviceTensor ? input.ptr : stage('packInput', input.byteLength);
      if (!(input instanceof DeviceTensor)) binding.cudaUpload(source, input, stream);
      const codesAt = stage('packCodes', codes.byteLength);
      const scalesAt = stage('packScales', scales.byteLength * 2 + 16);
      const zerosAt = scalesAt + BigInt(scales.byteLength);
      const bad = stage('packBad', 4);
      binding.cudaMemset(bad, 0, 4, stream);
      binding.cudaPack(source, dtypeCode(dtype), rows, cols, bits, axis, groupSize, codesAt, scalesAt, zerosAt, bad, stream);
      const flag = new Int32Array(1);
      binding.cudaDownload(flag, bad, stream);
      if (flag[0] !== 0) throw new ArgumentError('an element is NaN, infinite or outside [-65504, 65504]: packed groups hold finite f16-range values', 'input');
      binding.cudaDownload(codes, codesAt, stream);
      binding.cudaDownload(scales, scalesAt, stream);
      binding.cudaDownload(zeros, zerosAt, stream);
      return { format: parsePackFormat(options.format, 'format'), bits, rows, cols, axis, groupSize, codes, scales, zeros };
    },

    dispose(): void {
      if (native === undefined) return;
      const binding = native;
      try {
        binding.cudaSynchronize(stream);
      } finally {
        for (const handle of stores) binding.cudaStoreDestroy(handle);
        for (const buffer of staging.values()) binding.cudaFree(buffer.ptr);
        for (const ptr of ledgers) binding.cudaFree(ptr);
        stores.clear();
        staging.clear();
        ledgers.clear();
        native = undefined;
      }
    },
  };
  return backend;
}

/** Token slots of the store's per-token arrays: `maxSequences * slots` with a per-head layout. */
function tokenSlots(store: LayerStore): number {
  return store.maxSequences * (store.heads === undefined ? store.kvHeads * store.capacity : store.heads.slots);
}

/**
 * Device stores keep aux words word-major (so that a tracker rule touching one word per token moves
 * contiguous memory): per (sequence, head), `[word][capacity]`, for the dense layout, and over the whole
 * store, `[word][maxSequences * slots]`, for a per-head layout (a relayout then moves each word plane as
 * it moves the other per-token arrays); host stores are token-major. Converts one to the other
 * (`toHost`: word-major `from` into token-major `to`).
 */
function transposeAux(from: Uint32Array, to: Uint32Array, store: LayerStore, toHost: boolean): void {
  const { auxWords: words } = store;
  // A per-head layout is one block of all tokens; the dense layout one block of `capacity` per head.
  const block = store.heads === undefined ? store.capacity : tokenSlots(store);
  const blocks = tokenSlots(store) / block;
  for (let h = 0; h < blocks; h++) {
    const base = h * block * words;
    for (let w = 0; w < words; w++) {
      for (let t = 0; t < block; t++) {
        const wordMajor = base + w * block + t;
        const tokenMajor = base + t * words + w;
        if (toHost) to[tokenMajor] = from[wordMajor]!;
        else to[wordMajor] = from[tokenMajor]!;
      }
    }
  }
}

/**
 * A host copy of everything a device store holds (the layout of a host `LayerStore`), e.g. to compare
 * it with the CPU backend's store. Waits for the backend's stream.
 * @example
 * ```ts
 * const host = copyStoreToHost(backend, store);
 * console.log(host.scores);
 * ```
 */
export function copyStoreToHost(backend: CudaBackend, store: LayerStore): LayerStore {
  const device = deviceOf(store);
  const binding = loadCuda();
  const tokens = tokenSlots(store);
  const bytes = device.storage === undefined ? tokens * store.headDim * bytesPerElement(store.dtype) : 0;
  const packed = device.storage === undefined
    ? undefined
    : allocatePacked(device.storage, store.maxSequences, store.kvHeads, store.headDim, store.capacity, store.dtype);
  const host = {
    layer: store.layer, dtype: store.dtype, maxSequences: store.maxSequences, kvHeads: store.kvHeads, headDim: store.headDim,
    capacity: store.capacity, auxWords: store.auxWords,
    keys: new Uint8Array(bytes), values: new Uint8Array(bytes), positions: new Int32Array(tokens),
    scores: new Float32Array(tokens), aux: new Uint32Array(tokens * store.auxWords),
    lengths: new Int32Array(store.maxSequences * store.kvHeads), steps: new Float64Array(store.maxSequences),
    ...(packed === undefined ? {} : { packed }),
    ...(store.heads === undefined
      ? {}
      : { heads: { slots: store.heads.slots, bases: new Int32Array(store.heads.bases.length), capacities: new Int32Array(store.heads.bases.length) } }),
  };
  const s = backend.stream;
  binding.cudaDownload(host.keys, device.info.keys, s);
  binding.cudaDownload(host.values, device.info.values, s);
  binding.cudaDownload(host.positions, device.info.positions, s);
  binding.cudaDownload(host.scores, device.info.scores, s);
  if (host.aux.length > 0) {
    const wordMajor = new Uint32Array(host.aux.length);
    binding.cudaDownload(wordMajor, device.info.aux, s);
    transposeAux(wordMajor, host.aux, store, true);
  }
  binding.cudaDownload(host.lengths, device.info.lengths, s);
  binding.cudaDownload(host.steps, device.info.steps, s);
  if (host.heads !== undefined) {
    binding.cudaDownload(host.heads.bases, device.info.bases!, s);
    binding.cudaDownload(host.heads.capacities, device.info.capacities!, s);
  }
  if (packed !== undefined) forEachPackedArray(packed, device, (array, ptr) => binding.cudaDownload(array, ptr, s));
  return host;
}

/** Each array of a packed store with its device address (`DeviceStoreInfo.packed`). */
function forEachPackedArray(packed: PackedStore, device: DeviceStore, visit: (array: ArrayBufferView, ptr: bigint) => void): void {
  const at = device.info.packed!;
  const pairs: [ArrayBufferView, bigint][] = [
    [packed.keyCodes, at.keyCodes], [packed.valueCodes, at.valueCodes], [packed.valueScales, at.valueScales],
    [packed.valueZeros, at.valueZeros], [packed.keyScales, at.keyScales], [packed.keyZeros, at.keyZeros],
    [packed.runLengths, at.runLengths], [packed.runGenerations, at.runGenerations], [packed.runs, at.runs],
    [packed.packed, at.packed], [packed.residualKeys, at.residualKeys], [packed.residualValues, at.residualValues],
  ];
  for (const [array, ptr] of pairs) if (array.byteLength > 0) visit(array, ptr);
}

/**
 * Overwrites a device store (and its host mirror) with the contents of a host store of the same spec.
 * @example
 * ```ts
 * copyStoreToDevice(backend, cpuStore, cudaStore);
 * ```
 */
export function copyStoreToDevice(backend: CudaBackend, from: LayerStore, to: LayerStore): void {
  const device = deviceOf(to);
  const binding = loadCuda();
  const s = backend.stream;
  const dense = device.storage === undefined;
  if (from.keys.byteLength !== (dense ? tokenSlots(to) * to.headDim * bytesPerElement(to.dtype) : 0)
    || (from.packed === undefined) !== dense || (!dense && from.packed!.bits !== device.storage!.bits)
    || (from.heads === undefined) !== (to.heads === undefined) || (from.heads !== undefined && from.heads.slots !== to.heads!.slots)) {
    throw new ShapeError('the stores have different specs', 'from');
  }
  binding.cudaUpload(device.info.keys, from.keys, s);
  binding.cudaUpload(device.info.values, from.values, s);
  binding.cudaUpload(device.info.positions, from.positions, s);
  binding.cudaUpload(device.info.scores, from.scores, s);
  if (from.aux.length > 0) {
    const wordMajor = new Uint32Array(from.aux.length);
    transposeAux(from.aux, wordMajor, to, false);
    binding.cudaUpload(device.info.aux, wordMajor, s);
  }
  binding.cudaUpload(device.info.lengths, from.lengths, s);
  binding.cudaUpload(device.info.steps, from.steps, s);
  if (from.heads !== undefined) {
    binding.cudaUpload(device.info.bases!, from.heads.bases, s);
    binding.cudaUpload(device.info.capacities!, from.heads.capacities, s);
    to.heads!.bases.set(from.heads.bases);
    to.heads!.capacities.set(from.heads.capacities);
  }
  if (from.packed !== undefined) {
    forEachPackedArray(from.packed, device, (array, ptr) => binding.cudaUpload(ptr, array, s));
    binding.cudaRebuildPackedIndex(device.native, s);
  }
  to.lengths.set(from.lengths);
  to.steps.set(from.steps);
}
