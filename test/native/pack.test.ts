/**
 * The native packer against the reference packer: the same codes, scales and zero points, bit for bit,
 * and the same dequantised values, on random data of every shape and format, on the vector path (AVX-512
 * where the CPU has it) and the portable one (in a worker with SCISSORHANDS_SIMD=scalar); and the same
 * typed errors.
 */
import * as fc from 'fast-check';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import {
  ArgumentError, DTypeError, PACK_FORMATS, ShapeError, createNativePacker, createReferencePacker, f32ToBf16Bits, f32ToF16Bits,
  type DType, type HostArray, type PackFormat, type PackOptions, type PackedTensor,
} from '../../src/index.js';
import { nativeStatus } from '../../src/native/loader.js';
import { Rng } from '../../src/testing/rng.js';

const native = createNativePacker();
const reference = createReferencePacker();

interface Case {
  readonly input: HostArray;
  readonly options: PackOptions;
}

function makeCase(format: PackFormat, dtype: DType, axis: 0 | 1, groupSize: number, rows: number, cols: number, seed: number, scale: number): Case {
  const rng = new Rng(seed);
  const raw = Float32Array.from({ length: rows * cols }, () => {
    const r = rng.range(0, 1);
    // Some exact ties (repeated values, zeros of both signs) among continuous values.
    if (r < 0.05) return 0;
    if (r < 0.08) return -0;
    if (r < 0.12) return 0.25;
    return rng.range(-scale, scale);
  });
  const input = dtype === 'f32' ? raw : Uint16Array.from(raw, (x) => (dtype === 'f16' ? f32ToF16Bits(x) : f32ToBf16Bits(x)));
  return { input, options: { format, shape: [rows, cols], axis, groupSize, ...(dtype === 'f32' ? {} : { dtype }) } };
}

function expectSame(a: PackedTensor, b: PackedTensor, what: string): void {
  expect(Buffer.compare(Buffer.from(a.codes), Buffer.from(b.codes)), `${what} codes`).toBe(0);
  expect(Array.from(a.scales), `${what} scales`).toEqual(Array.from(b.scales));
  expect(Array.from(a.zeros), `${what} zeros`).toEqual(Array.from(b.zeros));
}

function bits(x: HostArray): Uint32Array {
  return x instanceof Float32Array ? new Uint32Array(x.buffer, x.byteOffset, x.length) : Uint32Array.from(x);
}

const cases = fc.record({
  format: fc.constantFrom<PackFormat>(...PACK_FORMATS),
  dtype: fc.constantFrom<DType>('f32', 'f16', 'bf16'),
  axis: fc.constantFrom<0 | 1>(0, 1),
  // Multiples of 16 take the vector path; the others the portable one.
  groupSize: fc.constantFrom(1, 3, 8, 16, 24, 32, 48, 64, 128),
  blocks: fc.integer({ min: 1, max: 3 }),
  other: fc.constantFrom(1, 5, 8, 16, 32, 48, 64, 128),
  scale: fc.constantFrom(1e-4, 1, 8, 30000),
  seed: fc.integer(),
});

describe('native packer = reference packer, bit for bit', () => {
  it('pack and unpack (f32, f16, bf16 outputs) on random data of every shape', () => {
    fc.assert(fc.property(cases, ({ format, dtype, axis, groupSize, blocks, other, scale, seed }) => {
      const rows = axis === 0 ? groupSize * blocks : other;
      const cols = axis === 1 ? groupSize * blocks : other;
      const { input, options } = makeCase(format, dtype, axis, groupSize, rows, cols, seed, scale);
      const a = native.pack(input, options);
      const b = reference.pack(input, options);
      expectSame(a, b, JSON.stringify({ format, dtype, axis, groupSize, rows, cols }));
      for (const out of ['f32', 'f16', 'bf16'] as const) {
        expect(Array.from(bits(native.unpack(b, out)))).toEqual(Array.from(bits(reference.unpack(b, out))));
      }
    }), { numRuns: 250 });
  });

  it('the cache shapes: [tokens][headDim] keys per channel and values per token, head sizes 8..512', () => {
    for (const headDim of [8, 16, 32, 64, 96, 128, 256, 512]) {
      for (const groupSize of [8, 16, 32, 64].filter((g) => headDim % g === 0)) {
        for (const format of PACK_FORMATS) {
          const keys = makeCase(format, 'f16', 0, groupSize, groupSize, headDim, headDim * groupSize, 2);
          expectSame(native.pack(keys.input, keys.options), reference.pack(keys.input, keys.options), `keys ${headDim}/${groupSize}/${format}`);
          const values = makeCase(format, 'bf16', 1, groupSize, groupSize, headDim, headDim + groupSize, 2);
          expectSame(native.pack(values.input, values.options), reference.pack(values.input, values.options), `values ${headDim}/${groupSize}/${format}`);
        }
      }
    }
  });

  it('edge groups (signed zeros, constants, subnormal ranges, the f16 extremes) on the vector and portable paths', () => {
    const patterns: ((i: number) => number)[] = [
      () => 0, (i) => (i % 2 === 0 ? 0 : -0), () => -0, () => 0.1, () => -0.1, (i) => 1e-30 * i, (i) => -1e-30 * i,
      (i) => (i === 0 ? 65504 : -65504), () => 65504, () => -65504, (i) => 1 + i * 2 ** -20, (i) => 2 ** -24 * i,
      (i) => (i % 3) * 6e-8, (i) => 1000 + i / 1024, (i) => (i === 5 ? 3 : 0), (i) => -i / 31,
    ];
    for (const format of PACK_FORMATS) {
      for (const groupSize of [16, 32, 8, 5]) {
        const rows = patterns.length;
        const x = new Float32Array(rows * groupSize);
        patterns.forEach((f, r) => { for (let i = 0; i < groupSize; i++) x[r * groupSize + i] = f(i); });
        const along = { format, shape: [rows, groupSize] as [number, number], groupSize };
        expectSame(native.pack(x, along), reference.pack(x, along), `${format} rows ${groupSize}`);
        // The same groups down columns: transpose.
        const t = new Float32Array(x.length);
        for (let r = 0; r < rows; r++) for (let i = 0; i < groupSize; i++) t[i * rows + r] = x[r * groupSize + i]!;
        const down = { format, shape: [groupSize, rows] as [number, number], axis: 0 as const, groupSize };
        expectSame(native.pack(t, down), reference.pack(t, down), `${format} columns ${groupSize}`);
      }
    }
  });

  it('the same typed errors', () => {
    const x = new Float32Array(64);
    const bad = new Float32Array(64);
    bad[33] = NaN;
    const calls: [() => unknown, new (...a: never[]) => Error, string][] = [
      [() => native.pack(x, { format: 'int4', shape: [2, 32], groupSize: 24 }), ArgumentError, 'groupSize'],
      [() => native.pack(new Uint16Array(64), { format: 'int4', shape: [2, 32] }), DTypeError, 'dtype'],
      [() => native.pack(x, { format: 'int4', shape: [4, 32] }), ShapeError, 'input'],
      [() => native.pack(bad, { format: 'int4', shape: [2, 32] }), ArgumentError, 'input'],
      [() => native.pack(new Uint16Array(64).fill(0xfc00), { format: 'int8', shape: [2, 32], dtype: 'f16' }), ArgumentError, 'input'],
    ];
    for (const [call, type, argument] of calls) {
      expect(call).toThrow(type);
      try {
        call();
      } catch (e) {
        expect((e as ArgumentError).argument).toBe(argument);
      }
    }
    expect(() => native.pack(bad, { format: 'int4', shape: [2, 32] })).toThrow(/element 33/);
  });
});

/** The worker: loads the addon by path with SCISSORHANDS_SIMD set, packs every case with the raw binding. */
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const binding = require(workerData.path);
const results = workerData.cases.map(({ input, dtype, bits, rows, cols, axis, groupSize }) => {
  const n = rows * cols;
  const codes = new Uint8Array(Math.ceil(n * bits / 8));
  const scales = new Uint16Array(n / groupSize);
  const zeros = new Uint16Array(n / groupSize);
  binding.packMatrix(input, dtype, bits, rows, cols, axis, groupSize, codes, scales, zeros);
  const out = new Float32Array(n);
  binding.unpackMatrix(codes, scales, zeros, bits, rows, cols, axis, groupSize, 'f32', out);
  return { codes, scales, zeros, out };
});
parentPort.postMessage({ info: binding.info(), results });
`;

describe('the portable path (SCISSORHANDS_SIMD=scalar) matches too', () => {
  afterEach(() => {
    delete process.env['SCISSORHANDS_SIMD'];
  });

  it('in a worker', async () => {
    process.env['SCISSORHANDS_SIMD'] = 'scalar';
    const list = [
      makeCase('int4', 'f16', 0, 32, 64, 128, 1, 3),
      makeCase('int2', 'f32', 1, 32, 5, 128, 2, 3),
      makeCase('int8', 'bf16', 1, 64, 3, 128, 3, 3),
      makeCase('int4', 'f32', 0, 16, 16, 48, 4, 3),
    ];
    const payload = list.map(({ input, options }) => ({
      input, dtype: options.dtype ?? 'f32', bits: options.format === 'int2' ? 2 : options.format === 'int4' ? 4 : 8,
      rows: options.shape[0], cols: options.shape[1], axis: options.axis ?? 1, groupSize: options.groupSize ?? 32,
    }));
    const report = await new Promise<{ info: { simd: string }; results: { codes: Uint8Array; scales: Uint16Array; zeros: Uint16Array; out: Float32Array }[] }>((resolve, reject) => {
      const worker = new Worker(WORKER, { eval: true, workerData: { path: nativeStatus().path, cases: payload } });
      worker.on('message', resolve);
      worker.on('error', reject);
    });
    expect(report.info.simd).toBe('scalar');
    list.forEach(({ input, options }, i) => {
      const r = report.results[i]!;
      const want = reference.pack(input, options);
      expect(Buffer.compare(Buffer.from(r.codes), Buffer.from(want.codes))).toBe(0);
      expect(Array.from(r.scales)).toEqual(Array.from(want.scales));
      expect(Array.from(r.zeros)).toEqual(Array.from(want.zeros));
      expect(Array.from(bits(r.out))).toEqual(Array.from(bits(reference.unpack(want))));
    });
  });
});
