/**
 * Tensor data for generated operations, and what the cache stores of it.
 * @module
 */
import { type DType, type HostArray, decodeElement, encodeElement } from '../core/dtype.js';
import { Rng } from './rng.js';

/**
 * How the values of generated queries, keys and values are drawn.
 * - `normal`: uniform in `[-2, 2)` (continuous: near-ties between scores are improbable).
 * - `large`: uniform in `[-8, 8)`, logits in the hundreds (a softmax without max-subtraction overflows).
 * - `repeat`: every row repeats one fixed row (the same in every operation: exact ties between tokens).
 * - `zero`: all zeros (a zero query attends uniformly).
 * - `tiny`: uniform in `[-1e-3, 1e-3)` (f16 subnormals).
 * @example
 * ```ts
 * const kind: DataKind = 'repeat';
 * ```
 */
export type DataKind = 'normal' | 'large' | 'repeat' | 'zero' | 'tiny';

/**
 * Every {@link DataKind}.
 * @example
 * ```ts
 * fc.constantFrom(...DATA_KINDS);
 * ```
 */
export const DATA_KINDS: readonly DataKind[] = ['normal', 'large', 'repeat', 'zero', 'tiny'];

/**
 * `rows * rowLength` values of one kind.
 * @example
 * ```ts
 * const k = makeValues(new Rng(1), 3, 16, 'normal');
 * ```
 */
export function makeValues(rng: Rng, rows: number, rowLength: number, kind: DataKind): Float64Array {
  const values = new Float64Array(rows * rowLength);
  const draw = (): number => {
    switch (kind) {
      case 'normal': return rng.range(-2, 2);
      case 'large': return rng.range(-8, 8);
      case 'tiny': return rng.range(-1e-3, 1e-3);
      default: return 0;
    }
  };
  if (kind === 'repeat') {
    const fixed = new Rng(0x5eed + rowLength);
    const row = Array.from({ length: rowLength }, () => fixed.range(-2, 2));
    for (let i = 0; i < values.length; i++) values[i] = row[i % rowLength]!;
  } else {
    for (let i = 0; i < values.length; i++) values[i] = draw();
  }
  return values;
}

/**
 * The host array an engine would pass: a `Float32Array`, or (`bits`) a `Uint16Array` of the 16-bit
 * dtype's bits. With `offset`, the array is a view into a larger buffer at a non-zero byte offset.
 * @example
 * ```ts
 * const q = toHostArray(values, 'f16', true, false); // Uint16Array of f16 bits
 * ```
 */
export function toHostArray(values: ArrayLike<number>, dtype: DType, bits: boolean, offset: boolean): HostArray {
  const pad = offset ? 3 : 0;
  if (bits && dtype !== 'f32') {
    const out = new Uint16Array(values.length + 2 * pad).subarray(pad, pad + values.length);
    for (let i = 0; i < values.length; i++) out[i] = encodeElement(dtype, values[i]!);
    return out;
  }
  const out = new Float32Array(values.length + 2 * pad).subarray(pad, pad + values.length);
  for (let i = 0; i < values.length; i++) out[i] = values[i]!;
  return out;
}

/**
 * The stored bits of each element of an input array, as the cache must keep them: f32 bit patterns
 * for an f32 store, else the f16/bf16 bits (rounded to nearest even from f32 inputs).
 * @example
 * ```ts
 * const bits = storedBits('bf16', new Float32Array([1])); // [0x3f80]
 * ```
 */
export function storedBits(dtype: DType, input: HostArray): Uint32Array {
  const out = new Uint32Array(input.length);
  if (input instanceof Uint16Array) {
    out.set(input);
    return out;
  }
  if (dtype === 'f32') {
    out.set(new Uint32Array(input.buffer, input.byteOffset, input.length));
    return out;
  }
  for (let i = 0; i < input.length; i++) out[i] = encodeElement(dtype, input[i]!);
  return out;
}

/**
 * The bits of a stored array (a `Float32Array` of an f32 store or a `Uint16Array` of a 16-bit one).
 * @example
 * ```ts
 * const bits = arrayBits(cache.view(seq, 0, 0).keys);
 * ```
 */
export function arrayBits(array: HostArray): Uint32Array {
  if (array instanceof Uint16Array) return Uint32Array.from(array);
  return Uint32Array.from(new Uint32Array(array.buffer, array.byteOffset, array.length));
}

/**
 * Decodes stored bits of a dtype to numbers.
 * @example
 * ```ts
 * decodeBits('f16', [0x3c00]); // Float64Array [1]
 * ```
 */
export function decodeBits(dtype: DType, bits: ArrayLike<number>): Float64Array {
  const out = new Float64Array(bits.length);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < bits.length; i++) {
    if (dtype === 'f32') {
      u[0] = bits[i]!;
      out[i] = f[0]!;
    } else {
      out[i] = decodeElement(dtype, bits[i]!);
    }
  }
  return out;
}

/**
 * Decodes a host array (f32 values, or bits of `dtype`) to numbers.
 * @example
 * ```ts
 * const out = decodeHost(cache.attend(seq, 0, q, k, v), 'f16');
 * ```
 */
export function decodeHost(array: HostArray, dtype: DType): Float64Array {
  if (array instanceof Float32Array) return Float64Array.from(array);
  return decodeBits(dtype, array);
}
