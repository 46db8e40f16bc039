/**
 * The packed formats and the arithmetic of one quantisation group, exactly as every packer (the
 * TypeScript reference and the native kernels) performs it: see `docs/packing.md`.
 * @module
 */
import { f16BitsToF32, f32ToF16Bits } from '../core/dtype.js';
import { ArgumentError } from '../core/errors.js';

/**
 * A packed format: `b`-bit unsigned codes, uniform asymmetric quantisation per group.
 * @example
 * ```ts
 * const format: PackFormat = 'int4';
 * ```
 */
export type PackFormat = 'int2' | 'int4' | 'int8';

/**
 * Every {@link PackFormat}.
 * @example
 * ```ts
 * for (const format of PACK_FORMATS) console.log(format, formatBits(format));
 * ```
 */
export const PACK_FORMATS: readonly PackFormat[] = ['int2', 'int4', 'int8'];

/**
 * Largest magnitude a packed format holds: scales and zero points are f16, so inputs must lie in
 * `[-65504, 65504]` (the finite f16 range).
 * @example
 * ```ts
 * if (Math.abs(x) > PACK_LIMIT) throw new Error('out of range');
 * ```
 */
export const PACK_LIMIT = 65504;

/**
 * Bits per code of a format.
 * @example
 * ```ts
 * formatBits('int4'); // 4
 * ```
 */
export function formatBits(format: PackFormat): 2 | 4 | 8 {
  return format === 'int2' ? 2 : format === 'int4' ? 4 : 8;
}

/**
 * Checks that a value names a packed format; throws {@link ArgumentError} naming `argument` otherwise.
 * @example
 * ```ts
 * const format = parsePackFormat(options.format, 'format');
 * ```
 */
export function parsePackFormat(value: unknown, argument: string): PackFormat {
  if (value === 'int2' || value === 'int4' || value === 'int8') return value;
  throw new ArgumentError(`expected 'int2', 'int4' or 'int8', got ${String(value)}`, argument);
}

/** The next f16 value above the one with these bits (toward +infinity). */
function f16Up(bits: number): number {
  if (bits === 0x8000) return 0x0001;
  return (bits & 0x8000) !== 0 ? bits - 1 : bits + 1;
}

/** The next f16 value below the one with these bits (toward -infinity). */
function f16Down(bits: number): number {
  if (bits === 0x0000) return 0x8001;
  return (bits & 0x8000) !== 0 ? bits + 1 : bits - 1;
}

/**
 * Bits of the largest f16 value `<= x` (`x` a finite f32 value in the f16 range).
 * @example
 * ```ts
 * f16Floor(0.1); // 0x2e66 (0.0999755859375)
 * ```
 */
export function f16Floor(x: number): number {
  const bits = f32ToF16Bits(x);
  return f16BitsToF32(bits) > x ? f16Down(bits) : bits;
}

/**
 * Bits of the smallest f16 value `>= x` (`x` a finite f32 value in the f16 range).
 * @example
 * ```ts
 * f16Ceil(0.1); // 0x2e67
 * ```
 */
export function f16Ceil(x: number): number {
  const bits = f32ToF16Bits(x);
  return f16BitsToF32(bits) < x ? f16Up(bits) : bits;
}

/**
 * Rounds a non-negative number to the nearest integer, ties to even (no `Math.round`, which rounds
 * ties up).
 * @example
 * ```ts
 * roundHalfEven(2.5); // 2
 * ```
 */
export function roundHalfEven(t: number): number {
  const f = Math.floor(t);
  const r = t - f;
  if (r > 0.5) return f + 1;
  if (r < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * The stored parameters of one group: `x = zero + code * scale`, both f16.
 * @example
 * ```ts
 * const { scale, zero } = groupParameters(0, 1, 15); // bits
 * ```
 */
export interface GroupParameters {
  /** f16 bits of the step between codes. */
  readonly scale: number;
  /** f16 bits of the value of code 0. */
  readonly zero: number;
}

/**
 * The f16 scale and zero point of a group whose values span `[min, max]` (finite f32 values in the
 * f16 range; -0 counts as +0) with codes `0 .. qmax`: `zero` is `min` rounded down to f16, `scale` is
 * `f32(f32(max - zero) / qmax)` rounded up to f16, then raised one f16 step at a time until
 * `zero + qmax * scale >= max` exactly, so every value of the group lies on the covered range.
 * @example
 * ```ts
 * const p = groupParameters(-1, 1, 15);
 * ```
 */
export function groupParameters(min: number, max: number, qmax: number): GroupParameters {
  // A zero of either sign counts as +0, so every implementation stores the same bits.
  if (min === 0) min = 0;
  if (max === 0) max = 0;
  const zero = f16Floor(min);
  const z = f16BitsToF32(zero);
  let scale = f16Ceil(Math.fround(Math.fround(max - z) / qmax));
  // z + qmax * s is exact in f64 (an f16 plus an 19-bit product), so this comparison is exact.
  while (z + qmax * f16BitsToF32(scale) < max) scale = f16Up(scale);
  return { scale, zero };
}

/**
 * The code of `x` in a group with stored scale `s` and zero `z` (decoded f16 values):
 * `clamp(roundHalfEven(f32(f32(x - z) / s)), 0, qmax)`, or 0 when `s` is 0.
 * @example
 * ```ts
 * quantiseValue(0.5, 1 / 15, -0.5, 15); // 15
 * ```
 */
export function quantiseValue(x: number, s: number, z: number, qmax: number): number {
  if (s === 0) return 0;
  const t = Math.fround(Math.fround(x - z) / s);
  const code = roundHalfEven(t);
  return code < 0 ? 0 : code > qmax ? qmax : code;
}

/**
 * The value a code stands for: `f32(z + code * s)` (the product is exact in f32, so one rounding).
 * @example
 * ```ts
 * dequantiseValue(3, 0.5, -1); // 0.5
 * ```
 */
export function dequantiseValue(code: number, s: number, z: number): number {
  return Math.fround(z + code * s);
}

/**
 * Why a value cannot be packed (`undefined` when it can): NaN, infinite, or outside
 * `[-65504, 65504]`.
 * @example
 * ```ts
 * unpackable(NaN); // 'NaN'
 * ```
 */
export function unpackable(x: number): string | undefined {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return 'infinite';
  if (x > PACK_LIMIT || x < -PACK_LIMIT) return `${x}, outside [-65504, 65504]`;
  return undefined;
}

/**
 * Reads code `i` of a packed code array (`bits` per code, low bits of each byte first).
 * @example
 * ```ts
 * readCode(codes, 4, 3); // high nibble of byte 1
 * ```
 */
export function readCode(codes: Uint8Array, bits: number, i: number): number {
  const perByte = 8 / bits;
  const byte = codes[Math.floor(i / perByte)]!;
  return (byte >>> ((i % perByte) * bits)) & ((1 << bits) - 1);
}

/**
 * Writes code `i` of a packed code array (the other codes of its byte are kept).
 * @example
 * ```ts
 * writeCode(codes, 4, 3, 15);
 * ```
 */
export function writeCode(codes: Uint8Array, bits: number, i: number, code: number): void {
  const perByte = 8 / bits;
  const at = Math.floor(i / perByte);
  const shift = (i % perByte) * bits;
  const mask = ((1 << bits) - 1) << shift;
  codes[at] = (codes[at]! & ~mask) | ((code << shift) & mask);
}
