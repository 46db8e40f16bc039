/**
 * decode and prefill on the native backend against the reference: outputs and probabilities within
 * per-dtype tolerances (the reference computes in f64, the kernels in f32 with their own summation
 * order), and the native tracker rules exact given the probabilities the kernels computed.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { LayerStore } from '../../src/backend/backend.js';
import type { DType, HostArray } from '../../src/core/dtype.js';
import type { ImportanceTracker } from '../../src/trackers/tracker.js';
import { h2o, scissorhands, streamingLLM, tova } from '../../src/trackers/index.js';
import {
  DTYPES, Rng, copyStore, cpu, expectClose, expectSameStore, floats, hostArray, hostValues, recorder, reference, twins,
  type Seen,
} from './helpers.js';

/** Relative tolerance of an output: f32 arithmetic, or one rounding to the 16-bit type of q (plus a tie). */
function outputTolerance(dtype: DType, bits: boolean): number {
  if (!bits || dtype === 'f32') return 1e-4;
  return dtype === 'f16' ? 2 ** -9 : 2 ** -7;
}

const PROBS_RTOL = 1e-4;
const PROBS_ATOL = 1e-6;
const OUT_ATOL = 2e-5;

interface Case {
  readonly dtype: DType;
  readonly kvHeads: number;
  readonly group: number;
  readonly headDim: number;
  readonly capacity: number;
  readonly bits: boolean;
  readonly gqa: 'mean' | 'max';
  readonly seed: number;
}

const caseArb = fc.record({
  dtype: fc.constantFrom(...DTYPES),
  kvHeads: fc.integer({ min: 1, max: 4 }),
  group: fc.integer({ min: 1, max: 4 }),
  headDim: fc.oneof(fc.constantFrom(1, 3, 8, 16, 31, 64, 128, 256), fc.integer({ min: 1, max: 256 })),
  capacity: fc.integer({ min: 1, max: 40 }),
  bits: fc.boolean(),
  gqa: fc.constantFrom('mean' as const, 'max' as const),
  seed: fc.integer(),
});

/** Twin stores holding the same random tokens, heads of different lengths (at least `minLength`). */
function filled(c: Case, rng: Rng, minLength: number): { native: LayerStore; oracle: LayerStore } {
  const stores = twins({ layer: 2, dtype: c.dtype, maxSequences: 2, kvHeads: c.kvHeads, headDim: c.headDim, capacity: c.capacity, auxWords: 0 });
  const count = Math.max(minLength, 1 + rng.int(c.capacity));
  const k = floats(count * c.kvHeads * c.headDim, rng);
  const v = floats(count * c.kvHeads * c.headDim, rng);
  cpu.append(stores.native, 1, hostArray(k, c.dtype, c.bits), hostArray(v, c.dtype, c.bits), count, 0, streamingLLM());
  reference.append(stores.oracle, 1, hostArray(k, c.dtype, c.bits), hostArray(v, c.dtype, c.bits), count, 0, streamingLLM());
  const drop = rng.int(count - minLength + 1);
  if (drop > 0) {
    // Scores are positions: evicting per head from a different start keeps different tokens per head.
    for (let h = 0; h < c.kvHeads; h++) {
      for (const store of [stores.native, stores.oracle]) store.scores[(1 * c.kvHeads + h) * c.capacity + (h % count)] = -1;
    }
    cpu.evict(stores.native, 1, drop, 0, 0, 'head');
    reference.evict(stores.oracle, 1, drop, 0, 0, 'head');
  }
  stores.native.steps[1] = stores.oracle.steps[1] = rng.int(50);
  return stores;
}

/** Observations grouped as the backends make them: row by row, KV head by KV head. */
function expectSameObservations(actual: Seen[], expected: Seen[]): void {
  expect(actual.length).toBe(expected.length);
  actual.forEach((seen, i) => {
    expect([seen.kvHead, seen.step]).toEqual([expected[i]!.kvHead, expected[i]!.step]);
    expectClose(seen.probs, expected[i]!.probs, PROBS_RTOL, PROBS_ATOL, `observation ${i} probs`);
  });
}

/**
 * Runs `run` with a recorder on a copy of `store`, then with `tracker` on another copy, and checks that the
 * tracker's state is what the reference's rule makes of the recorded (combined) probabilities.
 */
function expectNativeRule(
  store: LayerStore, tracker: () => ImportanceTracker, run: (s: LayerStore, t: ImportanceTracker) => void,
): void {
  // The store's tracker words start at zero; only their number differs between trackers.
  const spec = { ...store, auxWords: tracker().auxWords };
  const recorded = cpu.allocate(spec);
  const native = cpu.allocate(spec);
  const oracle = reference.allocate(spec);
  for (const copy of [recorded, native, oracle]) copyStore({ ...store, aux: copy.aux }, copy);
  const rec = recorder(tracker().gqa, spec.auxWords);
  run(recorded, rec);
  run(native, tracker());
  // One reference observation per recorded row, with the group already combined (G = 1 is the identity),
  // over the slots that row attended (a causal prefill row sees fewer than the heads keep).
  const t = tracker();
  const lengths = oracle.lengths.slice();
  for (let i = 0; i < rec.seen.length; i += store.kvHeads) {
    const probs = new Float32Array(store.kvHeads * store.capacity);
    for (let h = 0; h < store.kvHeads; h++) {
      probs.set(rec.seen[i + h]!.probs, h * store.capacity);
      oracle.lengths[store.kvHeads + h] = rec.seen[i + h]!.probs.length;
    }
    reference.observe(oracle, 1, probs, store.capacity, store.kvHeads, t);
  }
  oracle.lengths.set(lengths);
  expectSameStore(native, oracle, tracker().name);
}

const NATIVE_TRACKERS = (gqa: 'mean' | 'max'): (() => ImportanceTracker)[] => [
  () => h2o({ gqa }),
  () => tova({ gqa }),
  () => scissorhands({ window: 3, gqa }),
];

describe('decode', () => {
  it('outputs and probabilities agree with the reference; native tracker rules are exact', () => {
    fc.assert(
      fc.property(caseArb, (c) => {
        const rng = new Rng(c.seed);
        const { native, oracle } = filled(c, rng, 1);
        const queryHeads = c.kvHeads * c.group;
        const q = hostArray(floats(queryHeads * c.headDim, rng), c.dtype, c.bits);
        const outNative: HostArray = q instanceof Float32Array ? new Float32Array(q.length) : new Uint16Array(q.length);
        const outOracle: HostArray = q instanceof Float32Array ? new Float32Array(q.length) : new Uint16Array(q.length);
        const attention = { queryHeads, scale: 1 / Math.sqrt(c.headDim) };
        const before = cpu.allocate(native);
        copyStore(native, before);
        const recNative = recorder(c.gqa);
        const recOracle = recorder(c.gqa);
        cpu.decode(native, 1, q, outNative, attention, recNative);
        reference.decode(oracle, 1, q, outOracle, attention, recOracle);
        expectClose(hostValues(outNative, c.dtype), hostValues(outOracle, c.dtype), outputTolerance(c.dtype, c.bits), OUT_ATOL, 'out');
        expectSameObservations(recNative.seen, recOracle.seen);
        expect(native.steps).toEqual(oracle.steps);
        for (const tracker of NATIVE_TRACKERS(c.gqa)) {
          expectNativeRule(before, tracker, (s, t) => cpu.decode(s, 1, q, new (q.constructor as typeof Float32Array)(q.length), attention, t));
        }
      }),
      { numRuns: 80 },
    );
  });

  it('uniform attention gives exactly f32(1/n), so Scissorhands agrees with the reference bit for bit', () => {
    for (const dtype of DTYPES) {
      for (const n of [1, 3, 7, 10, 33, 100, 257]) {
        const spec = { layer: 0, dtype, maxSequences: 1, kvHeads: 2, headDim: 24, capacity: 300, auxWords: 1 };
        const { native, oracle } = twins(spec);
        const k = floats(n * 2 * 24, new Rng(n));
        cpu.append(native, 0, k, k, n, 0, scissorhands({ window: 20 }));
        reference.append(oracle, 0, k, k, n, 0, scissorhands({ window: 20 }));
        const q = new Float32Array(8 * 24);
        for (let step = 0; step < 3; step++) {
          cpu.decode(native, 0, q, new Float32Array(q.length), { queryHeads: 8, scale: 0.2 }, scissorhands({ window: 20 }));
          reference.decode(oracle, 0, q, new Float32Array(q.length), { queryHeads: 8, scale: 0.2 }, scissorhands({ window: 20 }));
        }
        expectSameStore(native, oracle, `${dtype} n ${n}`);
      }
    }
  });

  it('sharply peaked attention (logit gaps far beyond exp underflow) stays finite and agrees', () => {
    for (const dtype of DTYPES) {
      const c: Case = { dtype, kvHeads: 2, group: 2, headDim: 16, capacity: 64, bits: false, gqa: 'mean', seed: 3 };
      const rng = new Rng(17);
      const { native, oracle } = filled(c, rng, 64);
      const q = floats(4 * 16, rng);
      const outNative = new Float32Array(q.length);
      const outOracle = new Float32Array(q.length);
      const recNative = recorder();
      const recOracle = recorder();
      cpu.decode(native, 1, q, outNative, { queryHeads: 4, scale: 60 }, recNative);
      reference.decode(oracle, 1, q, outOracle, { queryHeads: 4, scale: 60 }, recOracle);
      expect(outNative.every(Number.isFinite)).toBe(true);
      expectClose(outNative, outOracle, 1e-4, OUT_ATOL, `${dtype} out`);
      expectSameObservations(recNative.seen, recOracle.seen);
    }
  });

  it('a cache big enough to be split over two threads gives the same answers', () => {
    for (const dtype of DTYPES) {
      const c: Case = { dtype, kvHeads: 4, group: 2, headDim: 128, capacity: 1200, bits: dtype !== 'f32', gqa: 'mean', seed: 5 };
      const rng = new Rng(11);
      const { native, oracle } = filled(c, rng, 1100);
      const q = hostArray(floats(8 * 128, rng), dtype, c.bits);
      const outNative = q instanceof Float32Array ? new Float32Array(q.length) : new Uint16Array(q.length);
      const outOracle = q instanceof Float32Array ? new Float32Array(q.length) : new Uint16Array(q.length);
      const recNative = recorder();
      const recOracle = recorder();
      cpu.decode(native, 1, q, outNative, { queryHeads: 8, scale: 0.09 }, recNative);
      reference.decode(oracle, 1, q, outOracle, { queryHeads: 8, scale: 0.09 }, recOracle);
      expectClose(hostValues(outNative, dtype), hostValues(outOracle, dtype), outputTolerance(dtype, c.bits), OUT_ATOL, `${dtype} out`);
      expectSameObservations(recNative.seen, recOracle.seen);
    }
  });
});

describe('prefill', () => {
  it('causal rows agree with the reference, one observation per row; native tracker rules are exact', () => {
    fc.assert(
      fc.property(caseArb, fc.integer({ min: 1, max: 40 }), (c, wantRows) => {
        const rng = new Rng(c.seed);
        const rows = Math.min(wantRows, c.capacity);
        const { native, oracle } = filled(c, rng, rows);
        const queryHeads = c.kvHeads * c.group;
        const q = hostArray(floats(rows * queryHeads * c.headDim, rng), c.dtype, c.bits);
        const outNative: HostArray = q instanceof Float32Array ? new Float32Array(q.length) : new Uint16Array(q.length);
        const outOracle: HostArray = q instanceof Float32Array ? new Float32Array(q.length) : new Uint16Array(q.length);
        const attention = { queryHeads, scale: 1 / Math.sqrt(c.headDim) };
        const before = cpu.allocate(native);
        copyStore(native, before);
        const recNative = recorder(c.gqa);
        const recOracle = recorder(c.gqa);
        cpu.prefill(native, 1, q, rows, outNative, attention, recNative);
        reference.prefill(oracle, 1, q, rows, outOracle, attention, recOracle);
        expectClose(hostValues(outNative, c.dtype), hostValues(outOracle, c.dtype), outputTolerance(c.dtype, c.bits), OUT_ATOL, 'out');
        expectSameObservations(recNative.seen, recOracle.seen);
        expect(native.steps).toEqual(oracle.steps);
        for (const tracker of NATIVE_TRACKERS(c.gqa)) {
          expectNativeRule(before, tracker, (s, t) => cpu.prefill(s, 1, q, rows, new (q.constructor as typeof Float32Array)(q.length), attention, t));
        }
      }),
      { numRuns: 60 },
    );
  });

  it('a custom tracker sees every row in order when the rows go through the kernels in blocks', () => {
    // 2 heads x 4096 slots: the backend hands probabilities back 128 rows at a time.
    const c: Case = { dtype: 'f16', kvHeads: 2, group: 3, headDim: 4, capacity: 4096, bits: true, gqa: 'max', seed: 9 };
    const rng = new Rng(c.seed);
    const { native, oracle } = filled(c, rng, 300);
    const rows = 300;
    const q = hostArray(floats(rows * 6 * 4, rng), 'f16', true);
    const recNative = recorder('max');
    const recOracle = recorder('max');
    const outNative = new Uint16Array(q.length);
    const outOracle = new Uint16Array(q.length);
    cpu.prefill(native, 1, q, rows, outNative, { queryHeads: 6, scale: 0.5 }, recNative);
    reference.prefill(oracle, 1, q, rows, outOracle, { queryHeads: 6, scale: 0.5 }, recOracle);
    expectClose(hostValues(outNative, 'f16'), hostValues(outOracle, 'f16'), outputTolerance('f16', true), OUT_ATOL, 'out');
    expectSameObservations(recNative.seen, recOracle.seen);
    expect(native.steps).toEqual(oracle.steps);
  });
});
