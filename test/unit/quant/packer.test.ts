/**
 * The reference packer: the arithmetic of one group (docs/packing.md), the byte layout, round trips
 * within half a quantisation step, and typed errors for every bad input.
 */
import * as fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ArgumentError, DTypeError, KvErrorCode, PACK_FORMATS, ShapeError, createReferencePacker, f16BitsToF32, f16Ceil, f16Floor,
  f32ToBf16Bits, f32ToF16Bits, groupParameters, packedBytes, roundHalfEven, type DType, type PackFormat, type PackedTensor,
} from '../../../src/index.js';
import { groupElements } from '../../../src/quant/reference.js';
import { Rng } from '../../../src/testing/rng.js';

const packer = createReferencePacker();

/** The stored step of the group of element `i`. */
function stepOf(p: PackedTensor, i: number): number {
  const g = p.axis === 1 ? Math.floor(i / p.groupSize) : Math.floor(Math.floor(i / p.cols) / p.groupSize) * p.cols + (i % p.cols);
  return f16BitsToF32(p.scales[g]!);
}

/**
 * The documented bound: half a step of the stored scale, plus the f32 rounding of `(x - z) / s` (a few
 * ulps of the code, at most 2^-12 of a step here) and of the dequantised value (half an f32 ulp).
 */
export function withinHalfStep(x: number, y: number, step: number): boolean {
  return Math.abs(x - y) <= step * (0.5 + 2 ** -12) + 2 ** -24 * Math.max(Math.abs(x), Math.abs(y)) + 2 ** -149;
}

function values(input: Float32Array | Uint16Array, dtype: DType): number[] {
  if (input instanceof Float32Array) return Array.from(input);
  return Array.from(input, (b) => (dtype === 'f16' ? f16BitsToF32(b) : new Float32Array(new Uint32Array([b << 16]).buffer)[0]!));
}

describe('group arithmetic', () => {
  it('f16Floor and f16Ceil bracket every f32 value of the f16 range', () => {
    fc.assert(fc.property(fc.float({ min: -65504, max: 65504, noNaN: true }), (x) => {
      const lo = f16BitsToF32(f16Floor(x));
      const hi = f16BitsToF32(f16Ceil(x));
      expect(lo).toBeLessThanOrEqual(x);
      expect(hi).toBeGreaterThanOrEqual(x);
      if (lo !== x) expect(f16BitsToF32(f16Floor(hi))).toBe(hi);
    }), { numRuns: 2000 });
  });

  it('rounds ties to even', () => {
    expect([0.5, 1.5, 2.5, 3.5, 2.4999, 2.5001].map(roundHalfEven)).toEqual([0, 2, 2, 4, 2, 3]);
  });

  it('the zero point is min rounded down; zero + qmax * scale covers max', () => {
    fc.assert(fc.property(fc.float({ min: -65504, max: 65504, noNaN: true }), fc.float({ min: -65504, max: 65504, noNaN: true }), fc.constantFrom(3, 15, 255), (a, b, qmax) => {
      const min = Math.min(a, b);
      const max = Math.max(a, b);
      const { scale, zero } = groupParameters(min, max, qmax);
      const s = f16BitsToF32(scale);
      const z = f16BitsToF32(zero);
      expect(z).toBeLessThanOrEqual(min);
      expect(z + qmax * s).toBeGreaterThanOrEqual(max);
      expect(Number.isFinite(s) && s >= 0).toBe(true);
    }), { numRuns: 2000 });
  });
});

describe('byte layout', () => {
  it('4-bit codes: two per byte, low nibble first; f16 scale and zero per group', () => {
    // One group of 4: values 0, 1, 2, 3 with max 15 -> scale 0.2 (f16), zero 0.
    const x = Float32Array.from([0, 1, 2, 3]);
    const p = packer.pack(x, { format: 'int4', shape: [1, 4], groupSize: 4 });
    const s = f16BitsToF32(p.scales[0]!);
    expect(p.zeros[0]).toBe(0);
    expect(s).toBe(f16BitsToF32(f16Ceil(3 / 15)));
    const codes = [0, 1, 2, 3].map((v) => Math.round(v / s));
    expect(Array.from(p.codes)).toEqual([codes[0]! | (codes[1]! << 4), codes[2]! | (codes[3]! << 4)]);
    expect(packedBytes('int4', 1, 4, 4)).toBe(2 + 4);
  });

  it('2-bit codes: four per byte, low bits first; 8-bit codes: one per byte', () => {
    const x = Float32Array.from([0, 1, 2, 3, 3, 2, 1, 0]);
    const p2 = packer.pack(x, { format: 'int2', shape: [1, 8], groupSize: 8 });
    expect(Array.from(p2.codes)).toEqual([0 | (1 << 2) | (2 << 4) | (3 << 6), 3 | (2 << 2) | (1 << 4) | (0 << 6)]);
    const p8 = packer.pack(x, { format: 'int8', shape: [1, 8], groupSize: 8 });
    expect(p8.codes.length).toBe(8);
    expect(p8.codes[3]).toBe(255);
  });

  it('groups down columns (axis 0): group i * cols + c covers rows i*g.. of column c', () => {
    const x = Float32Array.from([0, 10, 1, 20, 2, 30, 3, 40]); // [4][2]
    const p = packer.pack(x, { format: 'int4', shape: [4, 2], axis: 0, groupSize: 2 });
    expect(p.scales.length).toBe(4);
    expect(f16BitsToF32(p.zeros[0]!)).toBe(0); // rows 0-1, column 0
    expect(f16BitsToF32(p.zeros[1]!)).toBe(10); // rows 0-1, column 1
    expect(f16BitsToF32(p.zeros[2]!)).toBe(2); // rows 2-3, column 0
    expect(Array.from(groupElements(0, 4, 2, 2, 3))).toEqual([5, 7]);
  });
});

describe('round trip', () => {
  const shapes = fc.record({
    format: fc.constantFrom<PackFormat>(...PACK_FORMATS),
    dtype: fc.constantFrom<DType>('f32', 'f16', 'bf16'),
    axis: fc.constantFrom<0 | 1>(0, 1),
    groupSize: fc.constantFrom(1, 2, 3, 8, 16, 32, 64),
    blocks: fc.integer({ min: 1, max: 3 }),
    other: fc.integer({ min: 1, max: 40 }),
    scale: fc.constantFrom(1e-6, 1e-3, 1, 100, 60000),
    seed: fc.integer(),
  });

  it('every element comes back within half a step of its group (every format, axis, dtype, scale)', () => {
    fc.assert(fc.property(shapes, ({ format, dtype, axis, groupSize, blocks, other, scale, seed }) => {
      const rows = axis === 0 ? groupSize * blocks : other;
      const cols = axis === 1 ? groupSize * blocks : other;
      const rng = new Rng(seed);
      const raw = Float32Array.from({ length: rows * cols }, () => Math.max(-65504, Math.min(65504, rng.range(-scale, scale) + (rng.range(0, 1) < 0.1 ? scale / 2 : 0))));
      const input = dtype === 'f32' ? raw : Uint16Array.from(raw, (x) => (dtype === 'f16' ? f32ToF16Bits(x) : f32ToBf16Bits(Math.max(-65280, Math.min(65280, x)))));
      const p = packer.pack(input, { format, shape: [rows, cols], axis, groupSize, ...(dtype === 'f32' ? {} : { dtype }) });
      const back = packer.unpack(p) as Float32Array;
      const x = values(input, dtype);
      for (let i = 0; i < x.length; i++) {
        if (!withinHalfStep(x[i]!, back[i]!, stepOf(p, i))) {
          throw new Error(`element ${i}: ${x[i]} came back as ${back[i]}, step ${stepOf(p, i)}`);
        }
      }
    }), { numRuns: 300 });
  });

  it('constant groups come back exactly when the value is an f16; unpack to f16/bf16 rounds the f32 result', () => {
    const x = new Float32Array(64).fill(0.5);
    const p = packer.pack(x, { format: 'int2', shape: [2, 32] });
    expect(Array.from(packer.unpack(p) as Float32Array).every((y) => y === 0.5)).toBe(true);
    const y = Float32Array.from({ length: 64 }, (_, i) => i / 7);
    const q = packer.pack(y, { format: 'int8', shape: [2, 32] });
    const f32 = packer.unpack(q) as Float32Array;
    expect(Array.from(packer.unpack(q, 'f16'))).toEqual(Array.from(f32, (v) => f32ToF16Bits(v)));
    expect(Array.from(packer.unpack(q, 'bf16'))).toEqual(Array.from(f32, (v) => f32ToBf16Bits(v)));
  });
});

describe('bad inputs get typed errors', () => {
  const x = new Float32Array(64);
  const expectError = (call: () => unknown, type: new (...a: never[]) => Error, code: string, argument: string): void => {
    try {
      call();
    } catch (e) {
      expect(e).toBeInstanceOf(type);
      expect((e as { code: string }).code).toBe(code);
      expect((e as { argument: string }).argument).toBe(argument);
      return;
    }
    throw new Error('expected an error');
  };

  it('a group size that does not divide the grouped axis', () => {
    expectError(() => packer.pack(x, { format: 'int4', shape: [2, 32], groupSize: 24 }), ArgumentError, KvErrorCode.Argument, 'groupSize');
    expectError(() => packer.pack(x, { format: 'int4', shape: [2, 32], axis: 0, groupSize: 4 }), ArgumentError, KvErrorCode.Argument, 'groupSize');
  });

  it('wrong dtype, array type, length, format, axis', () => {
    expectError(() => packer.pack(new Uint16Array(64), { format: 'int4', shape: [2, 32] }), DTypeError, KvErrorCode.DType, 'dtype');
    expectError(() => packer.pack(x, { format: 'int4', shape: [2, 32], dtype: 'f16' }), DTypeError, KvErrorCode.DType, 'dtype');
    expectError(() => packer.pack(new Float64Array(64) as unknown as Float32Array, { format: 'int4', shape: [2, 32] }), DTypeError, KvErrorCode.DType, 'input');
    expectError(() => packer.pack(x, { format: 'int4', shape: [4, 32] }), ShapeError, KvErrorCode.Shape, 'input');
    expectError(() => packer.pack(x, { format: 'int3' as PackFormat, shape: [2, 32] }), ArgumentError, KvErrorCode.Argument, 'format');
    expectError(() => packer.pack(x, { format: 'int4', shape: [2, 32], axis: 2 as 0 }), ArgumentError, KvErrorCode.Argument, 'axis');
    expectError(() => packer.pack(x, { format: 'int4', shape: [2, 32], extra: 1 } as never), ArgumentError, KvErrorCode.Argument, 'extra');
  });

  it('NaN, infinite and out-of-range elements name the first one', () => {
    for (const bad of [NaN, Infinity, -Infinity, 65520, -1e9]) {
      const y = new Float32Array(64);
      y[17] = bad;
      y[40] = NaN;
      try {
        packer.pack(y, { format: 'int4', shape: [2, 32] });
        throw new Error('expected an error');
      } catch (e) {
        expect(e).toBeInstanceOf(ArgumentError);
        expect((e as ArgumentError).argument).toBe('input');
        expect((e as Error).message).toContain('element 17');
      }
    }
    // f16 bits of infinity, bf16 bits beyond the f16 range.
    expectError(() => packer.pack(new Uint16Array(64).fill(0x7c00), { format: 'int4', shape: [2, 32], dtype: 'f16' }), ArgumentError, KvErrorCode.Argument, 'input');
    expectError(() => packer.pack(new Uint16Array(64).fill(f32ToBf16Bits(1e6)), { format: 'int4', shape: [2, 32], dtype: 'bf16' }), ArgumentError, KvErrorCode.Argument, 'input');
  });

  it('a malformed packed tensor', () => {
    const p = packer.pack(x, { format: 'int4', shape: [2, 32] });
    expectError(() => packer.unpack({ ...p, codes: new Uint8Array(3) }), ShapeError, KvErrorCode.Shape, 'packed.codes');
    expectError(() => packer.unpack({ ...p, bits: 8 }), ArgumentError, KvErrorCode.Argument, 'packed.bits');
    expectError(() => packer.unpack({ ...p, scales: new Float32Array(2) as unknown as Uint16Array }), DTypeError, KvErrorCode.DType, 'packed.scales');
    expectError(() => packer.unpack(p, 'f64' as DType), DTypeError, KvErrorCode.DType, 'dtype');
  });
});
