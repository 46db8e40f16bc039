/**
 * Element types stored by the cache, and exact conversions between f32 and the 16-bit formats.
 * The conversions round to nearest, ties to even, exactly as the native kernels do, so stored bits
 * agree between backends.
 * @module
 */
import { DTypeError } from './errors.js';

/** Element type of stored keys and values. */
export type DType = 'f32' | 'f16' | 'bf16';

/** All supported dtypes, in the order of their native codes. */
export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];

/** A host array of elements: `Float32Array` for f32, `Uint16Array` holding f16 or bf16 bits. */
export type HostArray = Float32Array | Uint16Array;

/**
 * Bytes per element of a dtype.
 * @example
 * ```ts
 * bytesPerElement('bf16'); // 2
 * ```
 */
export function bytesPerElement(dtype: DType): number {
  return dtype === 'f32' ? 4 : 2;
}

/**
 * Checks that a value names a supported dtype.
 * @example
 * ```ts
 * const dt = parseDType(options.dtype ?? 'f32', 'dtype');
 * ```
 */
export function parseDType(value: unknown, argument: string): DType {
  if (value === 'f32' || value === 'f16' || value === 'bf16') return value;
  throw new DTypeError(`expected 'f32', 'f16' or 'bf16', got ${String(value)}`, argument);
}

/** Native code of a dtype (0 f32, 1 f16, 2 bf16). */
export function dtypeCode(dtype: DType): number {
  return dtype === 'f32' ? 0 : dtype === 'f16' ? 1 : 2;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * Rounds an f32 value to IEEE half precision bits (nearest, ties to even; NaN stays NaN).
 * @example
 * ```ts
 * f32ToF16Bits(1); // 0x3c00
 * ```
 */
export function f32ToF16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let h = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    if (rest > half || (rest === half && (h & 1) !== 0)) h += 1;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) !== 0)) h += 1;
  return sign | h;
}

/**
 * Decodes IEEE half precision bits to a number.
 * @example
 * ```ts
 * f16BitsToF32(0x3c00); // 1
 * ```
 */
export function f16BitsToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant !== 0 ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/**
 * Rounds an f32 value to bfloat16 bits (nearest, ties to even; NaN stays a quiet NaN).
 * @example
 * ```ts
 * f32ToBf16Bits(1); // 0x3f80
 * ```
 */
export function f32ToBf16Bits(value: number): number {
  f32[0] = value;
  const x = u32[0]!;
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) return ((x >>> 16) | 0x40) & 0xffff;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Decodes bfloat16 bits to a number.
 * @example
 * ```ts
 * bf16BitsToF32(0x3f80); // 1
 * ```
 */
export function bf16BitsToF32(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0]!;
}

/**
 * Converts a value to the stored bits of a 16-bit dtype, or rounds it to f32.
 * @example
 * ```ts
 * encodeElement('f16', 0.1); // 0x2e66
 * ```
 */
export function encodeElement(dtype: DType, value: number): number {
  return dtype === 'f32' ? Math.fround(value) : dtype === 'f16' ? f32ToF16Bits(value) : f32ToBf16Bits(value);
}

/**
 * Decodes one stored element (bits for 16-bit dtypes) to a number.
 * @example
 * ```ts
 * decodeElement('bf16', 0x3f80); // 1
 * ```
 */
export function decodeElement(dtype: DType, stored: number): number {
  return dtype === 'f32' ? stored : dtype === 'f16' ? f16BitsToF32(stored) : bf16BitsToF32(stored);
}
