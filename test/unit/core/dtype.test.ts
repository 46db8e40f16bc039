import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  bf16BitsToF32, bytesPerElement, decodeElement, encodeElement, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, parseDType,
} from '../../../src/core/dtype.js';
import { KvErrorCode } from '../../../src/core/errors.js';
import { expectKvError } from '../helpers.js';

const u32 = new Uint32Array(1);
const f32 = new Float32Array(u32.buffer);
function fromBits(bits: number): number {
  u32[0] = bits;
  return f32[0]!;
}

/** f16 bits decoded by building the f32 bit pattern (independent of the formula under test). */
function f16ViaF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return (sign ? -1 : 1) * mant * 2 ** -24;
  if (exp === 0x1f) return fromBits(sign | 0x7f800000 | (mant << 13));
  return fromBits(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

/** Nearest value of a binary format to `x` (an f32 value), ties to even, by exact f64 arithmetic. */
function nearest(x: number, mantBits: number, minExp: number, maxFinite: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  let e = Math.floor(Math.log2(a));
  while (2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  const ulp = 2 ** (Math.max(e, minExp) - mantBits);
  const q = a / ulp;
  let k = Math.floor(q);
  const rest = q - k;
  if (rest > 0.5 || (rest === 0.5 && k % 2 === 1)) k++;
  const v = k * ulp > maxFinite ? Infinity : k * ulp;
  return x < 0 ? -v : v;
}
const nearestF16 = (x: number): number => nearest(x, 10, -14, 65504);
const nearestBf16 = (x: number): number => nearest(x, 7, -126, (2 - 2 ** -7) * 2 ** 127);

const f32Bits = fc.integer({ min: 0, max: 0xffffffff });

describe('f16', () => {
  it.each([
    [1, 0x3c00], [-2, 0xc000], [0.1, 0x2e66], [65504, 0x7bff], [65519, 0x7bff], [65520, 0x7c00], [1e9, 0x7c00],
    [-Infinity, 0xfc00], [Infinity, 0x7c00], [0, 0x0000], [-0, 0x8000], [2 ** -14, 0x0400], [2 ** -24, 0x0001],
    [2 ** -25, 0x0000], [1.5 * 2 ** -25, 0x0001], [3 * 2 ** -25, 0x0002], [2 ** -26, 0x0000], [fromBits(1), 0x0000],
    [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [2049, 0x6800], [2051, 0x6802], [-(1 + 2 ** -11), 0xbc00],
  ])('encodes %d to bits %i', (value, bits) => {
    expect(f32ToF16Bits(value)).toBe(bits);
  });

  it('keeps NaN a NaN', () => {
    const bits = f32ToF16Bits(NaN);
    expect(bits & 0x7c00).toBe(0x7c00);
    expect(bits & 0x3ff).not.toBe(0);
    expect(f32ToF16Bits(fromBits(0x7f800001)) & 0x3ff).not.toBe(0); // a payload only in the low bits
    expect(f16BitsToF32(0x7e00)).toBeNaN();
  });

  it('decodes every bit pattern like the f32 bit layout does, and re-encodes it exactly', () => {
    for (let h = 0; h < 0x10000; h++) {
      const value = f16BitsToF32(h);
      const expected = f16ViaF32Bits(h);
      if (Number.isNaN(expected)) {
        expect(value).toBeNaN();
        expect(f32ToF16Bits(value) & 0x7fff).toBeGreaterThan(0x7c00);
        continue;
      }
      if (!Object.is(value, expected)) expect.fail(`0x${h.toString(16)} decodes to ${value}, not ${expected}`);
      if (f32ToF16Bits(value) !== h) expect.fail(`0x${h.toString(16)} does not round-trip`);
    }
  });

  it('rounds any f32 to the nearest f16, ties to even', () => {
    fc.assert(fc.property(f32Bits, (bits) => {
      const x = fromBits(bits);
      const got = f16BitsToF32(f32ToF16Bits(x));
      if (Number.isNaN(x)) return Number.isNaN(got);
      return Object.is(got, nearestF16(x));
    }), { numRuns: 3000 });
  });

  it('sends the midpoint of two neighbours to the even one', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 0x7bff }), fc.boolean(), (b, negative) => {
      const sign = negative ? 0x8000 : 0;
      const mid = (f16BitsToF32(b) + f16BitsToF32(b + 1)) / 2;
      expect(Math.fround(mid)).toBe(mid); // exact in f32, so the tie is real
      expect(f32ToF16Bits(negative ? -mid : mid)).toBe(sign | (b % 2 === 0 ? b : b + 1));
    }), { numRuns: 2000 });
  });
});

describe('bf16', () => {
  it.each([
    [1, 0x3f80], [-2, 0xc000], [0.1, 0x3dcd], [1 + 2 ** -8, 0x3f80], [1 + 3 * 2 ** -8, 0x3f82], [0, 0], [-0, 0x8000],
    [Infinity, 0x7f80], [-Infinity, 0xff80], [fromBits(0x7f7fffff), 0x7f80], [fromBits(0x7f7f7fff), 0x7f7f],
    [fromBits(0x7f7f8000), 0x7f80], [2 ** -133, 0x0001], [fromBits(1), 0x0000], [fromBits(0x00008000), 0x0000],
    [fromBits(0x00018000), 0x0002],
  ])('encodes %d to bits %i', (value, bits) => {
    expect(f32ToBf16Bits(value)).toBe(bits);
  });

  it('keeps NaN a quiet NaN, even one whose payload is only in the dropped bits', () => {
    for (const bits of [0x7fc00000, 0x7f800001, 0xff800001, 0x7fffffff]) {
      const b = f32ToBf16Bits(fromBits(bits));
      expect(b & 0x7f80).toBe(0x7f80);
      expect(b & 0x40).toBe(0x40);
    }
  });

  it('decodes every bit pattern to the f32 with those high bits, and re-encodes it exactly', () => {
    for (let b = 0; b < 0x10000; b++) {
      const value = bf16BitsToF32(b);
      const exp = (b >>> 7) & 0xff;
      const mant = b & 0x7f;
      const expected = exp === 0xff
        ? (mant === 0 ? (b & 0x8000 ? -Infinity : Infinity) : NaN)
        : (b & 0x8000 ? -1 : 1) * (exp === 0 ? mant * 2 ** -133 : (1 + mant / 128) * 2 ** (exp - 127));
      if (Number.isNaN(expected)) {
        expect(value).toBeNaN();
        continue;
      }
      if (!Object.is(value, expected)) expect.fail(`0x${b.toString(16)} decodes to ${value}, not ${expected}`);
      if (f32ToBf16Bits(value) !== b) expect.fail(`0x${b.toString(16)} does not round-trip`);
    }
  });

  it('rounds any f32 to the nearest bf16, ties to even', () => {
    fc.assert(fc.property(f32Bits, (bits) => {
      const x = fromBits(bits);
      const got = bf16BitsToF32(f32ToBf16Bits(x));
      if (Number.isNaN(x)) return Number.isNaN(got);
      return Object.is(got, nearestBf16(x));
    }), { numRuns: 3000 });
  });

  it('sends the midpoint of two neighbours to the even one', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 0x7f7f }), (b) => {
      const mid = (bf16BitsToF32(b) + bf16BitsToF32(b + 1)) / 2;
      expect(Math.fround(mid)).toBe(mid);
      expect(f32ToBf16Bits(mid)).toBe(b % 2 === 0 ? b : b + 1);
    }), { numRuns: 2000 });
  });
});

describe('element helpers', () => {
  it('encode and decode per dtype', () => {
    expect(encodeElement('f32', 0.1)).toBe(Math.fround(0.1));
    expect(encodeElement('f16', 0.1)).toBe(0x2e66);
    expect(encodeElement('bf16', 1)).toBe(0x3f80);
    expect(decodeElement('f32', 0.5)).toBe(0.5);
    expect(decodeElement('f16', 0x3c00)).toBe(1);
    expect(decodeElement('bf16', 0xc000)).toBe(-2);
    expect([bytesPerElement('f32'), bytesPerElement('f16'), bytesPerElement('bf16')]).toEqual([4, 2, 2]);
  });

  it('parseDType accepts the three names and rejects the rest with a DTypeError naming the argument', () => {
    expect(parseDType('bf16', 'dtype')).toBe('bf16');
    expectKvError(() => parseDType('fp8', 'dtype'), KvErrorCode.DType, 'dtype');
  });
});
