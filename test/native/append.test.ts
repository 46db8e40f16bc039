/**
 * append on the native backend against the reference: stored bits, positions, lengths and every
 * tracker's initial state, bit for bit; f16/bf16 conversions against src/core/dtype.ts.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, type DType } from '../../src/core/dtype.js';
import { loadNative } from '../../src/native/loader.js';
import { TrackerKind, type ImportanceTracker } from '../../src/trackers/tracker.js';
import { h2o, keyNorm, random, scissorhands, streamingLLM, tova } from '../../src/trackers/index.js';
import { DTYPES, Rng, cpu, expectSameStore, floats, hostArray, recorder, reference, twins } from './helpers.js';

/** Trackers with their aux words; the recorder is a custom TypeScript tracker. */
const TRACKERS: readonly (() => ImportanceTracker)[] = [
  () => scissorhands({ window: 5 }),
  () => scissorhands({ window: 70 }),
  () => h2o(),
  () => tova(),
  () => keyNorm(),
  () => random({ seed: 0xdeadbeef }),
  () => streamingLLM(),
  () => recorder('mean', 2),
];

const HEAD_DIMS = fc.oneof(fc.constantFrom(1, 2, 3, 7, 8, 9, 16, 33, 64, 127, 128, 255, 256), fc.integer({ min: 1, max: 256 }));

describe('append', () => {
  it('stores keys, values, positions and tracker state exactly as the reference does', () => {
    fc.assert(
      fc.property(
        fc.record({
          dtype: fc.constantFrom(...DTYPES),
          kvHeads: fc.integer({ min: 1, max: 4 }),
          headDim: HEAD_DIMS,
          capacity: fc.integer({ min: 1, max: 20 }),
          maxSequences: fc.integer({ min: 1, max: 3 }),
          layer: fc.integer({ min: 0, max: 40 }),
          tracker: fc.integer({ min: 0, max: TRACKERS.length - 1 }),
          bits: fc.boolean(),
          seed: fc.integer(),
        }),
        (c) => {
          const rng = new Rng(c.seed);
          const nativeTracker = TRACKERS[c.tracker]!();
          const oracleTracker = TRACKERS[c.tracker]!();
          const { native, oracle } = twins({ ...c, auxWords: nativeTracker.auxWords });
          for (let op = 0; op < 6; op++) {
            const seq = rng.int(c.maxSequences);
            const room = c.capacity - native.lengths[seq * c.kvHeads]!;
            if (room === 0 || rng.float() < 0.25) {
              // Evicting frees slots that the next append must reset (score and aux words).
              const length = native.lengths[seq * c.kvHeads]!;
              const count = rng.int(length + 1);
              cpu.evict(native, seq, count, 0, 0, 'layer');
              reference.evict(oracle, seq, count, 0, 0, 'layer');
              continue;
            }
            const count = 1 + rng.int(room);
            const k = floats(count * c.kvHeads * c.headDim, rng, 3);
            const v = floats(count * c.kvHeads * c.headDim, rng, 3);
            const first = rng.int(2000) - 1000;
            cpu.append(native, seq, hostArray(k, c.dtype, c.bits), hostArray(v, c.dtype, c.bits), count, first, nativeTracker);
            reference.append(oracle, seq, hostArray(k, c.dtype, c.bits), hostArray(v, c.dtype, c.bits), count, first, oracleTracker);
            expectSameStore(native, oracle, `op ${op}`);
          }
          if ('keys' in nativeTracker) expect(nativeTracker.keys).toEqual((oracleTracker as typeof nativeTracker).keys);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('keyNorm sums squares in f64 over the key as stored, like the reference', () => {
    for (const dtype of DTYPES) {
      const { native, oracle } = twins({ layer: 0, dtype, maxSequences: 1, kvHeads: 2, headDim: 256, capacity: 8, auxWords: 0 });
      const rng = new Rng(7);
      // Large and tiny magnitudes side by side, where f32 accumulation would differ.
      const k = Float32Array.from({ length: 8 * 2 * 256 }, (_, i) => (i % 3 === 0 ? 3e4 : 1e-3) * rng.range(-1, 1));
      cpu.append(native, 0, k, k, 8, 0, keyNorm());
      reference.append(oracle, 0, k, k, 8, 0, keyNorm());
      expectSameStore(native, oracle, dtype);
    }
  });

  it('random draws randomScore(seed, layer, kvHead, position) for every seed, layer and position', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 1000 }), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 9 }), (seed, layer, first) => {
        const { native, oracle } = twins({ layer, dtype: 'f32', maxSequences: 1, kvHeads: 3, headDim: 1, capacity: 8, auxWords: 0 });
        const k = new Float32Array(8 * 3);
        cpu.append(native, 0, k, k, 8, first, random({ seed }));
        reference.append(oracle, 0, k, k, 8, first, random({ seed }));
        expectSameStore(native, oracle);
      }),
      { numRuns: 200 },
    );
  });
});

describe('f16 and bf16 conversions match src/core/dtype.ts bit for bit', () => {
  const binding = loadNative();
  const custom = { kind: TrackerKind.Custom, window: 0, seed: 0, gqa: 'mean', observes: false } as const;

  /** Stores `values` (f32) into a 16-bit store through append; returns the stored bits. */
  function storeBits(dtype: DType, values: Float32Array): Uint16Array {
    const store = cpu.allocate({ layer: 0, dtype, maxSequences: 1, kvHeads: 1, headDim: 256, capacity: values.length / 256, auxWords: 0 });
    binding.append(store, 0, values, values, values.length / 256, 0, custom, null);
    return new Uint16Array(store.keys.buffer);
  }

  /** Decodes every 16-bit pattern through append's decoded keys. */
  function decodeAll(dtype: DType): Float32Array {
    const store = cpu.allocate({ layer: 0, dtype, maxSequences: 1, kvHeads: 1, headDim: 256, capacity: 256, auxWords: 0 });
    const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const decoded = new Float32Array(65536);
    binding.append(store, 0, bits, bits, 256, 0, custom, decoded);
    return decoded;
  }

  it('every f16 and bf16 bit pattern decodes to the same value', () => {
    const f16 = decodeAll('f16');
    const bf16 = decodeAll('bf16');
    for (let i = 0; i < 65536; i++) {
      if (!Object.is(f16[i], Math.fround(f16BitsToF32(i)))) expect.fail(`f16 ${i.toString(16)}: ${f16[i]} vs ${f16BitsToF32(i)}`);
      if (!Object.is(bf16[i], bf16BitsToF32(i))) expect.fail(`bf16 ${i.toString(16)}: ${bf16[i]} vs ${bf16BitsToF32(i)}`);
    }
  });

  it('f32 values round to nearest even exactly as the reference (subnormals, ties, overflow, NaN)', () => {
    const rng = new Rng(1234);
    const n = 256 * 1024;
    const words = new Uint32Array(n);
    for (let i = 0; i < n; i++) words[i] = rng.uint32();
    // Exact ties and their neighbours at every exponent, for both formats.
    for (let e = 0; e < 256; e++) {
      for (let j = 0; j < 8; j++) {
        const at = 4096 + e * 8 + j;
        const mantissa = [0x1000, 0x3000, 0x0fff, 0x1001, 0x8000, 0x18000, 0x7fff, 0x8001][j]!;
        words[at] = ((rng.uint32() & 1) << 31) | (e << 23) | (mantissa & 0x7fffff) | (j < 4 ? rng.uint32() & 0x7fc000 : rng.uint32() & 0x7e0000);
      }
    }
    const values = new Float32Array(words.buffer);
    values.set([0, -0, Infinity, -Infinity, NaN, 65504, 65519.99, 65520, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 3.4e38, 1e-45]);
    const f16 = storeBits('f16', values);
    const bf16 = storeBits('bf16', values);
    for (let i = 0; i < n; i++) {
      const x = values[i]!;
      if (Number.isNaN(x)) {
        // NaN stays NaN (payloads are not part of the contract).
        expect((f16[i]! & 0x7c00) === 0x7c00 && (f16[i]! & 0x3ff) !== 0).toBe(true);
        expect((bf16[i]! & 0x7f80) === 0x7f80 && (bf16[i]! & 0x7f) !== 0).toBe(true);
        continue;
      }
      if (f16[i] !== f32ToF16Bits(x)) expect.fail(`f16 of ${x} (${words[i]!.toString(16)}): ${f16[i]} vs ${f32ToF16Bits(x)}`);
      if (bf16[i] !== f32ToBf16Bits(x)) expect.fail(`bf16 of ${x} (${words[i]!.toString(16)}): ${bf16[i]} vs ${f32ToBf16Bits(x)}`);
    }
  });
});
