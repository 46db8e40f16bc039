/**
 * evict on the native backend against the reference: which tokens go (lowest score then slot, NaN
 * first, per head or on the layer mean) and the compaction of every array, bit for bit.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DTYPES, Rng, cpu, expectSameStore, floats, reference, twins } from './helpers.js';

/** Scores with ties, NaN, infinities and both zeros, so every branch of the order is exercised. */
function score(rng: Rng): number {
  const pick = rng.int(10);
  if (pick === 0) return NaN;
  if (pick === 1) return rng.int(2) === 0 ? 0 : -0;
  if (pick === 2) return rng.int(2) === 0 ? Infinity : -Infinity;
  if (pick < 6) return rng.int(4);
  return rng.range(-3, 3);
}

describe('evict', () => {
  it('drops and compacts exactly as the reference, per head and per layer', () => {
    fc.assert(
      fc.property(
        fc.record({
          dtype: fc.constantFrom(...DTYPES),
          kvHeads: fc.integer({ min: 1, max: 4 }),
          headDim: fc.integer({ min: 1, max: 40 }),
          capacity: fc.integer({ min: 1, max: 48 }),
          auxWords: fc.integer({ min: 0, max: 3 }),
          maxSequences: fc.integer({ min: 1, max: 3 }),
          layerScope: fc.boolean(),
          seed: fc.integer(),
        }),
        (c) => {
          const rng = new Rng(c.seed);
          const { native, oracle } = twins({ ...c, layer: 0 });
          // Arbitrary contents: evict moves whatever is there.
          const bytes = Uint8Array.from({ length: native.keys.length }, () => rng.int(256));
          native.keys.set(bytes);
          native.values.set(bytes.reverse());
          native.positions.set(Int32Array.from({ length: native.positions.length }, () => rng.uint32() | 0));
          native.scores.set(Float32Array.from({ length: native.scores.length }, () => score(rng)));
          native.aux.set(Uint32Array.from({ length: native.aux.length }, () => rng.uint32()));
          for (let s = 0; s < c.maxSequences; s++) {
            const shared = rng.int(c.capacity + 1);
            for (let h = 0; h < c.kvHeads; h++) native.lengths[s * c.kvHeads + h] = c.layerScope ? shared : rng.int(c.capacity + 1);
          }
          oracle.keys.set(native.keys);
          oracle.values.set(native.values);
          oracle.positions.set(native.positions);
          oracle.scores.set(native.scores);
          oracle.aux.set(native.aux);
          oracle.lengths.set(native.lengths);

          for (let round = 0; round < 3; round++) {
            const seq = rng.int(c.maxSequences);
            let shortest = Infinity;
            for (let h = 0; h < c.kvHeads; h++) shortest = Math.min(shortest, native.lengths[seq * c.kvHeads + h]!);
            const sinks = rng.int(4);
            const recent = rng.int(4);
            const count = rng.int(Math.max(0, shortest - sinks - recent) + 1);
            const scope = c.layerScope ? 'layer' : 'head';
            cpu.evict(native, seq, count, sinks, recent, scope);
            reference.evict(oracle, seq, count, sinks, recent, scope);
            expectSameStore(native, oracle, `round ${round}`);
          }
        },
      ),
      { numRuns: 150 },
    );
  });

  it('on the layer mean, the sum runs in f32 in head order', () => {
    // Head order matters: slot 0 sums 1e8 + 1 - 1e8, which is 0 in f32 in head order (1 otherwise), so
    // its mean falls below slot 1's 0.1.
    const { native, oracle } = twins({ layer: 0, dtype: 'f32', maxSequences: 1, kvHeads: 3, headDim: 1, capacity: 4, auxWords: 0 });
    const k = floats(4 * 3, new Rng(3));
    for (const store of [native, oracle]) {
      (store === native ? cpu : reference).append(store, 0, k, k, 4, 0, { name: 'inert', input: 'none', scope: 'layer', auxWords: 0, gqa: 'mean', onAppend() {}, onObserve() {} });
      store.scores.set([1e8, 0.1, 5, 5, 1, 0.1, 5, 5, -1e8, 0.1, 5, 5]);
    }
    cpu.evict(native, 0, 1, 0, 0, 'layer');
    reference.evict(oracle, 0, 1, 0, 0, 'layer');
    expectSameStore(native, oracle);
    expect(Array.from(native.positions.subarray(0, 3))).toEqual([1, 2, 3]);
  });
});
