/**
 * observe on the native backend against the reference: GQA combination (mean in f32 in head order, max
 * with Math.max semantics) and every built-in tracker rule, bit for bit, given the probabilities.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { ImportanceTracker } from '../../src/trackers/tracker.js';
import { h2o, keyNorm, scissorhands, tova } from '../../src/trackers/index.js';
import { Rng, cpu, expectSameStore, floats, recorder, reference, twins } from './helpers.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The f32 next to `x` (toward +infinity for up, -infinity otherwise), for x > 0. */
function nextF32(x: number, up: boolean): number {
  f32[0] = x;
  u32[0] = u32[0]! + (up ? 1 : -1);
  return f32[0]!;
}

/** A probability for slot j of a head keeping n tokens: uniform-share ties and neighbours, odd values. */
function probability(rng: Rng, n: number): number {
  const share = Math.fround(1 / n);
  switch (rng.int(8)) {
    case 0: return share;
    case 1: return nextF32(share, true);
    case 2: return nextF32(share, false);
    case 3: return rng.int(2) === 0 ? 0 : -0;
    case 4: return rng.int(20) === 0 ? NaN : 1;
    default: return rng.float() * 2 / n;
  }
}

function trackerFor(kind: number, gqa: 'mean' | 'max'): ImportanceTracker {
  switch (kind) {
    case 0: return scissorhands({ window: 1, gqa });
    case 1: return scissorhands({ window: 3, gqa });
    case 2: return scissorhands({ window: 32, gqa });
    case 3: return scissorhands({ window: 33, gqa });
    case 4: return h2o({ gqa });
    case 5: return tova({ gqa });
    case 6: return keyNorm();
    default: return recorder(gqa, 1);
  }
}

describe('observe', () => {
  it('combines the group and updates every tracker exactly as the reference', () => {
    fc.assert(
      fc.property(
        fc.record({
          kvHeads: fc.integer({ min: 1, max: 4 }),
          group: fc.integer({ min: 1, max: 4 }),
          capacity: fc.integer({ min: 1, max: 40 }),
          maxSequences: fc.integer({ min: 1, max: 2 }),
          kind: fc.integer({ min: 0, max: 7 }),
          gqa: fc.constantFrom('mean' as const, 'max' as const),
          seed: fc.integer(),
        }),
        (c) => {
          const rng = new Rng(c.seed);
          const nativeTracker = trackerFor(c.kind, c.gqa);
          const oracleTracker = trackerFor(c.kind, c.gqa);
          const { native, oracle } = twins({
            layer: 1, dtype: 'f32', maxSequences: c.maxSequences, kvHeads: c.kvHeads, headDim: 2, capacity: c.capacity,
            auxWords: nativeTracker.auxWords,
          });
          const queryHeads = c.kvHeads * c.group;
          for (let seq = 0; seq < c.maxSequences; seq++) {
            const count = 1 + rng.int(c.capacity);
            const k = floats(count * c.kvHeads * 2, rng);
            cpu.append(native, seq, k, k, count, 0, nativeTracker);
            reference.append(oracle, seq, k, k, count, 0, oracleTracker);
            // Heads of different lengths.
            const drop = rng.int(count);
            cpu.evict(native, seq, drop, 0, 0, 'head');
            reference.evict(oracle, seq, drop, 0, 0, 'head');
          }
          // Steps that cross the window several times, and a clock that does not start at 0.
          native.steps[0] = oracle.steps[0] = rng.int(100);
          for (let round = 0; round < 12; round++) {
            const seq = rng.int(c.maxSequences);
            const stride = c.capacity + rng.int(3);
            const probs = new Float32Array(queryHeads * stride);
            for (let h = 0; h < queryHeads; h++) {
              const n = native.lengths[seq * c.kvHeads + Math.floor(h / c.group)]!;
              for (let j = 0; j < n; j++) probs[h * stride + j] = probability(rng, n);
            }
            cpu.observe(native, seq, probs, stride, queryHeads, nativeTracker);
            reference.observe(oracle, seq, probs, stride, queryHeads, oracleTracker);
            expectSameStore(native, oracle, `round ${round}`);
          }
          if ('seen' in nativeTracker) expect(nativeTracker.seen).toEqual((oracleTracker as typeof nativeTracker).seen);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('a tracker whose input is not attention only advances the clock', () => {
    const { native } = twins({ layer: 0, dtype: 'f32', maxSequences: 2, kvHeads: 1, headDim: 1, capacity: 4, auxWords: 0 });
    cpu.append(native, 1, new Float32Array(3), new Float32Array(3), 3, 5, keyNorm());
    const before = native.scores.slice();
    cpu.observe(native, 1, new Float32Array([0.5, 0.25, 0.25, 0]), 4, 1, keyNorm());
    expect(native.scores).toEqual(before);
    expect(Array.from(native.steps)).toEqual([0, 1]);
  });
});
