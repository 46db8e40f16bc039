/**
 * Per-head layouts (`LayerStore.heads`) on the native backend against the reference: append bounded by
 * each head's own capacity, attention over heads of different lengths, per-head eviction counts and
 * heads moved to new capacities, bit for bit where the semantics are exact; hostile layouts refused.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KvErrorCode, type LayerStore, h2o, scissorhands } from '../../src/index.js';
import { resolveStorage } from '../../src/quant/storage.js';
import { DTYPES, Rng, cpu, expectClose, expectKvError, expectSameStore, floats, reference, twins } from './helpers.js';

/** Random capacities for the heads of `seq` that leave room for their lengths and fit the sequence's slots. */
function capacitiesFor(store: LayerStore, seq: number, rng: Rng): Int32Array {
  const lengths = store.lengths.subarray(seq * store.kvHeads, (seq + 1) * store.kvHeads);
  const caps = Int32Array.from(lengths);
  let spare = store.heads!.slots - caps.reduce((a, b) => a + b, 0);
  for (let h = 0; h < caps.length; h++) {
    const more = Math.min(rng.int(spare + 1), store.capacity - caps[h]!);
    caps[h]! += more;
    spare -= more;
  }
  return caps;
}

describe('per-head layout', () => {
  it('append, decode, per-head evict and relayout agree with the reference (stores bit for bit, outputs within f32 rounding)', () => {
    fc.assert(
      fc.property(
        fc.record({
          dtype: fc.constantFrom(...DTYPES),
          kvHeads: fc.integer({ min: 1, max: 4 }),
          group: fc.integer({ min: 1, max: 3 }),
          headDim: fc.constantFrom(3, 8, 16, 33),
          share: fc.integer({ min: 2, max: 24 }),
          maxSequences: fc.integer({ min: 1, max: 3 }),
          scissors: fc.boolean(),
          seed: fc.integer(),
        }),
        (c) => {
          const rng = new Rng(c.seed);
          const tracker = c.scissors ? scissorhands({ window: 8 }) : h2o();
          const slots = c.share * c.kvHeads;
          const { native, oracle } = twins({
            layer: 0, dtype: c.dtype, maxSequences: c.maxSequences, kvHeads: c.kvHeads, headDim: c.headDim,
            capacity: slots, auxWords: tracker.auxWords, slots,
          });
          const queryHeads = c.kvHeads * c.group;
          const attention = { queryHeads, scale: 0.5 };
          // Sums probabilities and leaves the aux words alone: decode then changes only scores.
          const observer = { ...h2o(), auxWords: tracker.auxWords };
          for (let round = 0; round < 12; round++) {
            const seq = rng.int(c.maxSequences);
            const first = seq * c.kvHeads;
            const action = rng.int(3);
            if (action === 0) {
              const caps = capacitiesFor(native, seq, rng);
              cpu.relayout!(native, seq, caps);
              reference.relayout!(oracle, seq, caps);
            } else if (action === 1) {
              const counts = Int32Array.from({ length: c.kvHeads }, (_, h) => rng.int(Math.max(0, native.lengths[first + h]! - 1) + 1));
              cpu.evictHeads!(native, seq, counts, 1, 0);
              reference.evictHeads!(oracle, seq, counts, 1, 0);
            } else {
              let room = Infinity;
              for (let h = 0; h < c.kvHeads; h++) room = Math.min(room, native.heads!.capacities[first + h]! - native.lengths[first + h]!);
              if (room === 0) continue;
              const count = 1 + rng.int(room);
              const k = floats(count * c.kvHeads * c.headDim, rng);
              const v = floats(count * c.kvHeads * c.headDim, rng);
              cpu.append(native, seq, k, v, count, round * 100, tracker);
              reference.append(oracle, seq, k, v, count, round * 100, tracker);
              const q = floats(queryHeads * c.headDim, rng);
              const outNative = new Float32Array(q.length);
              const outOracle = new Float32Array(q.length);
              cpu.decode(native, seq, q, outNative, attention, observer);
              reference.decode(oracle, seq, q, outOracle, attention, observer);
              expectClose(outNative, outOracle, 1e-5, 1e-6, 'out');
              // Scores come from each backend's own probabilities: compare them within rounding, then align.
              expectClose(native.scores, oracle.scores, 1e-5, 1e-6, 'scores');
              oracle.scores.set(native.scores);
            }
            expect(native.heads!.bases).toEqual(oracle.heads!.bases);
            expect(native.heads!.capacities).toEqual(oracle.heads!.capacities);
            expectSameStore(native, oracle, `round ${round}`);
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it('a head never grows past its own capacity, whatever the others have', () => {
    const store = cpu.allocate({ layer: 0, dtype: 'f32', maxSequences: 1, kvHeads: 2, headDim: 4, capacity: 12, auxWords: 0, slots: 12 });
    cpu.relayout!(store, 0, Int32Array.of(2, 10));
    const rows = (n: number): Float32Array => new Float32Array(n * 2 * 4);
    cpu.append(store, 0, rows(2), rows(2), 2, 0, h2o());
    expectKvError(() => cpu.append(store, 0, rows(1), rows(1), 1, 2, h2o()), KvErrorCode.Budget, 'count');
    // An even layout: 6 slots per head.
    const even = reference.allocate({ ...store, slots: 12 });
    expectKvError(() => reference.append(even, 0, rows(7), rows(7), 7, 0, h2o()), KvErrorCode.Budget, 'count');
  });

  it('refuses layouts that overlap, leave the sequence or exceed the capacity, and per-head layouts of packed stores', () => {
    const spec = { layer: 0, dtype: 'f32' as const, maxSequences: 2, kvHeads: 2, headDim: 8, capacity: 8, auxWords: 0, slots: 10 };
    const store = cpu.allocate(spec);
    const q = new Float32Array(2 * 8);
    const hostile = (bases: number[], caps: number[]): LayerStore =>
      ({ ...store, heads: { slots: 10, bases: Int32Array.from([...bases, 15, 20]), capacities: Int32Array.from([...caps, 5, 0]) } });
    expectKvError(() => cpu.decode(hostile([0, 3], [5, 5]), 0, q, new Float32Array(16), { queryHeads: 2, scale: 1 }, h2o()), KvErrorCode.Argument, 'store.heads');
    expectKvError(() => cpu.evict(hostile([0, 8], [5, 5]), 0, 0, 0, 0, 'head'), KvErrorCode.Argument, 'store.heads');
    expectKvError(() => cpu.evict(hostile([0, 1], [1, 9]), 0, 0, 0, 0, 'head'), KvErrorCode.Argument, 'store.heads');
    expectKvError(() => cpu.evict({ ...store, heads: { ...store.heads!, slots: 11 } }, 0, 0, 0, 0, 'head'), KvErrorCode.Shape);
    expectKvError(() => cpu.evictHeads!(store, 0, Int32Array.of(1, 0), 0, 0), KvErrorCode.Budget, 'count');
    expectKvError(() => cpu.evictHeads!(store, 0, Int32Array.of(0), 0, 0), KvErrorCode.Shape, 'count');
    expectKvError(() => cpu.allocate({ ...spec, storage: resolveStorage({ format: 'int4', groupSize: 8, residual: 8 }, 8) }), KvErrorCode.Argument, 'storage');
    expectKvError(() => cpu.relayout!(store, 0, Int32Array.of(6, 6)), KvErrorCode.Budget, 'capacities');
    expectKvError(() => cpu.relayout!(store, 0, Int32Array.of(9, 1)), KvErrorCode.Budget, 'capacities');
  });
});
