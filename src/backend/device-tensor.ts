/**
 * Tensors in GPU memory, for the `cuda` backend: SDK-owned allocations (`alloc`, `fromHost`) freed by
 * `dispose()`/`using`, and non-owning views of an engine's own device memory (`wrap`), which can describe
 * strided rows (a slice of a fused QKV projection, say).
 * @module
 */
import { type DType, type HostArray, bytesPerElement, parseDType } from '../core/dtype.js';
import { ArgumentError, DTypeError, DisposedError, ShapeError } from '../core/errors.js';
import { checkInt } from '../core/geometry.js';
import { loadCuda } from '../native/loader.js';

/** One cudaMalloc, shared by a tensor and its views; freed once. */
class Allocation {
  freed = false;
  constructor(readonly ptr: bigint) {}

  free(): void {
    if (this.freed) return;
    this.freed = true;
    loadCuda().cudaFree(this.ptr);
  }
}

/** The safety net for tensors that were never disposed (disposing is the way memory is meant to be freed). */
const finalizer = new FinalizationRegistry<Allocation>((allocation) => {
  try {
    allocation.free();
  } catch {
    // The process may be shutting down; nothing useful to do.
  }
});

/** Options of {@link DeviceTensor.wrap}. */
export interface WrapOptions {
  /**
   * Elements per row (e.g. `kvHeads * headDim`) when rows are not contiguous; with `rowStride`, the
   * tensor is `length / rowLength` rows of `rowLength` contiguous elements, `rowStride` elements apart.
   */
  readonly rowLength?: number;
  /** Elements from the start of one row to the start of the next (at least `rowLength`). */
  readonly rowStride?: number;
  /** An object the view keeps reachable while it is alive (the engine's owner of the memory). */
  readonly keepAlive?: unknown;
}

/**
 * A 1-D array of `f32`, `f16` or `bf16` elements in device memory (optionally strided rows). The cache
 * reads and writes device tensors in place on its CUDA stream: no host copies.
 * @example
 * ```ts
 * using q = DeviceTensor.fromHost(new Float32Array(32 * 128));
 * using out = DeviceTensor.alloc('f32', 32 * 128);
 * cache.attend(seq, layer, q, k, v, out);
 * const host = out.toHost();
 * ```
 */
export class DeviceTensor implements Disposable {
  /** Element type. */
  readonly dtype: DType;
  /** Elements (logical, not counting the gaps between strided rows). */
  readonly length: number;
  /** Elements per row, when rows are strided. */
  readonly rowLength: number | undefined;
  /** Elements from one row's start to the next, when rows are strided. */
  readonly rowStride: number | undefined;
  /** Whether `dispose()` frees the memory (false for views and wrapped memory). */
  readonly owned: boolean;
  readonly #ptr: bigint;
  readonly #allocation: Allocation | undefined;
  readonly #keepAlive: unknown;
  #disposed = false;

  private constructor(
    ptr: bigint, dtype: DType, length: number, owned: boolean, allocation: Allocation | undefined, keepAlive: unknown,
    rowLength?: number, rowStride?: number,
  ) {
    this.#ptr = ptr;
    this.dtype = dtype;
    this.length = length;
    this.owned = owned;
    this.#allocation = allocation;
    this.#keepAlive = keepAlive;
    this.rowLength = rowLength;
    this.rowStride = rowStride;
  }

  /**
   * Allocates `length` elements of `dtype` (contents undefined).
   * @throws `KV_BACKEND` when the cuda backend is unavailable or the device is out of memory.
   * @example
   * ```ts
   * using out = DeviceTensor.alloc('f16', 32 * 128);
   * ```
   */
  static alloc(dtype: DType, length: number): DeviceTensor {
    const type = parseDType(dtype, 'dtype');
    checkInt(length, 'length', 1, 2 ** 48);
    const allocation = new Allocation(loadCuda().cudaMalloc(length * bytesPerElement(type)));
    const tensor = new DeviceTensor(allocation.ptr, type, length, true, allocation, undefined);
    finalizer.register(tensor, allocation, allocation);
    return tensor;
  }

  /**
   * Copies a host array to a new device tensor. A `Uint16Array` holds f16 bits unless `dtype` says bf16.
   * @example
   * ```ts
   * using k = DeviceTensor.fromHost(kBits, 'bf16');
   * ```
   */
  static fromHost(array: HostArray, dtype?: DType, stream = 0n): DeviceTensor {
    const type = hostDType(array, dtype);
    const tensor = DeviceTensor.alloc(type, array.length);
    try {
      tensor.upload(array, stream);
    } catch (e) {
      tensor.dispose();
      throw e;
    }
    return tensor;
  }

  /**
   * A non-owning view of device memory the caller owns (`dispose()` does not free it): `ptr` is the
   * address of element 0. The caller keeps the memory alive and valid for as long as the view is used.
   * @example
   * ```ts
   * // K of a fused [tokens][(qHeads + 2 * kvHeads) * headDim] QKV projection, f16:
   * const k = DeviceTensor.wrap(qkv + BigInt(qHeads * headDim * 2), 'f16', tokens * kvHeads * headDim,
   *   { rowLength: kvHeads * headDim, rowStride: (qHeads + 2 * kvHeads) * headDim });
   * ```
   */
  static wrap(ptr: bigint, dtype: DType, length: number, options: WrapOptions = {}): DeviceTensor {
    if (typeof ptr !== 'bigint' || ptr <= 0n) throw new ArgumentError('expected a non-zero bigint device address', 'ptr');
    const type = parseDType(dtype, 'dtype');
    if (ptr % BigInt(bytesPerElement(type)) !== 0n) throw new ArgumentError('the address is not aligned to the element size', 'ptr');
    checkInt(length, 'length', 1, 2 ** 48);
    let rowLength: number | undefined;
    let rowStride: number | undefined;
    if (options.rowLength !== undefined || options.rowStride !== undefined) {
      rowLength = checkInt(options.rowLength, 'rowLength', 1, 2 ** 40);
      rowStride = checkInt(options.rowStride ?? rowLength, 'rowStride', rowLength, 2 ** 48);
      if (length % rowLength !== 0) throw new ShapeError(`length ${length} is not a whole number of ${rowLength}-element rows`, 'length');
      if (rowStride === rowLength) rowStride = rowLength = undefined;
    }
    return new DeviceTensor(ptr, type, length, false, undefined, options.keepAlive, rowLength, rowStride);
  }

  /** Whether `dispose()` has been called. */
  get disposed(): boolean {
    return this.#disposed || (this.#allocation?.freed ?? false);
  }

  /**
   * Device address of element 0.
   * @throws {@link DisposedError} after `dispose()` (of this tensor or of the one it views).
   * @example
   * ```ts
   * engineKernel(q.ptr);
   * ```
   */
  get ptr(): bigint {
    if (this.disposed) throw new DisposedError('DeviceTensor');
    return this.#ptr;
  }

  /** Elements from one row's start to the next for rows of `rowLength` elements (the row length when contiguous). */
  strideFor(rowLength: number): number {
    if (this.rowLength === undefined) return rowLength;
    if (this.rowLength !== rowLength) {
      throw new ShapeError(`rows of ${this.rowLength} elements are strided, the call needs rows of ${rowLength}`, 'rowLength');
    }
    return this.rowStride!;
  }

  /**
   * A view of elements `[begin, end)` sharing this tensor's memory (whole rows when strided).
   * @example
   * ```ts
   * const firstRow = q.subarray(0, queryHeads * headDim);
   * ```
   */
  subarray(begin: number, end: number = this.length): DeviceTensor {
    checkInt(begin, 'begin', 0, this.length);
    checkInt(end, 'end', begin, this.length);
    let offset = begin;
    if (this.rowLength !== undefined) {
      if (begin % this.rowLength !== 0 || end % this.rowLength !== 0) throw new ShapeError('a strided tensor is sliced by whole rows', 'begin');
      offset = (begin / this.rowLength) * this.rowStride!;
    }
    const ptr = this.ptr + BigInt(offset * bytesPerElement(this.dtype));
    return new DeviceTensor(
      ptr, this.dtype, Math.max(0, end - begin), false, this.#allocation, this, this.rowLength, this.rowStride,
    );
  }

  /**
   * Copies a host array into this (contiguous) tensor; returns when the copy is done.
   * @example
   * ```ts
   * q.upload(hostQ);
   * ```
   */
  upload(from: HostArray, stream = 0n): void {
    this.#checkHost(from, 'from');
    loadCuda().cudaUpload(this.ptr, from, stream);
  }

  /**
   * Copies this (contiguous) tensor to a host array (a new one unless `into` is given); waits for the
   * work queued on `stream` first.
   * @example
   * ```ts
   * const out = outDevice.toHost() as Float32Array;
   * ```
   */
  toHost(into?: HostArray, stream = 0n): HostArray {
    const target = into ?? (this.dtype === 'f32' ? new Float32Array(this.length) : new Uint16Array(this.length));
    this.#checkHost(target, 'into');
    loadCuda().cudaDownload(target, this.ptr, stream);
    return target;
  }

  /**
   * Frees the memory of an owned tensor (views and wrapped memory are only marked disposed); idempotent.
   * @example
   * ```ts
   * tensor.dispose();
   * ```
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.owned && this.#allocation !== undefined) {
      finalizer.unregister(this.#allocation);
      this.#allocation.free();
    }
  }

  /** Same as {@link DeviceTensor.dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Keeps the owner of wrapped memory reachable (read by nothing else). */
  get keepAlive(): unknown {
    return this.#keepAlive;
  }

  #checkHost(array: HostArray, argument: string): void {
    if (this.rowLength !== undefined) throw new ArgumentError('host copies need a contiguous tensor', argument);
    if (this.dtype === 'f32' ? !(array instanceof Float32Array) : !(array instanceof Uint16Array)) {
      throw new DTypeError(this.dtype === 'f32' ? 'expected a Float32Array' : `expected a Uint16Array of ${this.dtype} bits`, argument);
    }
    if (array.length !== this.length) throw new ShapeError(`expected ${this.length} elements, got ${array.length}`, argument);
  }
}

/** The dtype of a host array's elements: f32 for Float32Array, else `dtype` (f16 by default). */
function hostDType(array: HostArray, dtype: DType | undefined): DType {
  if (array instanceof Float32Array) {
    if (dtype !== undefined && dtype !== 'f32') throw new DTypeError('a Float32Array holds f32 elements', 'dtype');
    return 'f32';
  }
  if (!(array instanceof Uint16Array)) throw new DTypeError('expected a Float32Array or Uint16Array', 'array');
  const type = parseDType(dtype ?? 'f16', 'dtype');
  if (type === 'f32') throw new DTypeError('a Uint16Array holds f16 or bf16 bits', 'dtype');
  return type;
}

/**
 * Whether a value is a {@link DeviceTensor}.
 * @example
 * ```ts
 * if (isDeviceTensor(q)) console.log(q.ptr);
 * ```
 */
export function isDeviceTensor(value: unknown): value is DeviceTensor {
  return value instanceof DeviceTensor;
}
