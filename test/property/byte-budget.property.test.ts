/**
 * byteBudget: the bytes a cache reserves per sequence never exceed the budget, and the budget buys as many
 * tokens as fit (one more would exceed it), for every storage format, element type, tracker and geometry;
 * a budget too small for the protected windows is a typed error; packed storage buys more tokens.
 */
import * as fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  BudgetError, KVCache, byteBudget, resolveStorage, storeBytesPerSequence, type DType, type StorageOptions,
} from '../../src/index.js';
import { trackerSpecArb } from '../../src/testing/index.js';
import { Rng } from '../../src/testing/rng.js';
import { runs, seed } from './helpers.js';

const setups = fc.record({
  layers: fc.integer({ min: 1, max: 4 }),
  kvHeads: fc.integer({ min: 1, max: 4 }),
  group: fc.integer({ min: 1, max: 2 }),
  headDim: fc.constantFrom(8, 16, 32, 64, 128),
  dtype: fc.constantFrom<DType>('f32', 'f16', 'bf16'),
  format: fc.constantFrom('dense', 'int2', 'int4', 'int8'),
  groupSize: fc.constantFrom(8, 16, 32),
  residual: fc.constantFrom(0, 4, 32, 64),
  tracker: trackerSpecArb(),
  bytes: fc.integer({ min: 1, max: 2 ** 23 }),
  sinks: fc.integer({ min: 0, max: 4 }),
  recent: fc.integer({ min: 0, max: 16 }),
});

describe('byteBudget', () => {
  it('never reserves more than the budget per sequence, and buys every token that fits', () => {
    fc.assert(fc.property(setups, (s) => {
      const groupSize = Math.min(s.groupSize, s.headDim);
      const storage: StorageOptions = s.format === 'dense' ? { format: 'dense' } : { format: s.format as 'int4', groupSize, residual: s.residual };
      const geometry = { layers: s.layers, queryHeads: s.kvHeads * s.group, kvHeads: s.kvHeads, headDim: s.headDim };
      const tracker = s.tracker.create();
      const policy = byteBudget({ bytes: s.bytes, sinks: s.sinks, recent: s.recent });
      const layout = { dtype: s.dtype, storage: resolveStorage(storage, s.headDim), auxWords: tracker.auxWords };
      const perSequence = (t: number): number => s.layers * storeBytesPerSequence(layout, s.kvHeads, s.headDim, t);
      const floor = s.sinks + Math.max(s.recent, 1);
      let cache: KVCache;
      try {
        cache = KVCache.create({ geometry, policy, tracker, dtype: s.dtype, storage, backend: 'reference', maxSequences: 2 });
      } catch (e) {
        // Only a budget too small for the protected windows may be refused.
        expect(e).toBeInstanceOf(BudgetError);
        expect(perSequence(floor)).toBeGreaterThan(s.bytes);
        return;
      }
      try {
        const stats = cache.stats();
        const tokens = stats.layers[0]!.capacity;
        expect(stats.bytesPerSequence).toBeLessThanOrEqual(s.bytes);
        expect(stats.bytesPerSequence).toBe(perSequence(tokens));
        expect(perSequence(tokens + 1)).toBeGreaterThan(s.bytes);
        expect(tokens).toBeGreaterThanOrEqual(floor);
        // A few steps: the cache stays within what it reserved.
        const seq = cache.open();
        const rng = new Rng(s.bytes);
        const rows = Math.min(tokens - s.sinks, 1 + rng.int(40));
        const k = Float32Array.from({ length: rows * s.kvHeads * s.headDim }, () => rng.range(-1, 1));
        cache.append(seq, 0, k, k);
        const after = cache.stats();
        expect(after.bytesUsed).toBeLessThanOrEqual(after.bytesReserved);
        expect(after.bytesPerSequence).toBe(stats.bytesPerSequence);
      } finally {
        cache.dispose();
      }
    }), { numRuns: runs(100), ...seed });
  });

  it('int4 storage buys about 3x the tokens of f16 in the same bytes (head size 128, groups of 32)', () => {
    const geometry = { layers: 32, queryHeads: 32, kvHeads: 8, headDim: 128 };
    const policy = byteBudget({ bytes: 2 ** 30 });
    const f16 = policy.tokens(geometry, { dtype: 'f16', storage: { format: 'dense' }, auxWords: 0 });
    const int4 = policy.tokens(geometry, { dtype: 'f16', storage: resolveStorage({ format: 'int4' }, 128), auxWords: 0 });
    expect(int4 / f16).toBeGreaterThan(2.5);
    expect(int4 / f16).toBeLessThan(4);
  });

  it('typed errors: bad bytes, no layout, a drop larger than the budget allows', () => {
    expect(() => byteBudget({ bytes: 0 })).toThrow(/bytes/);
    expect(() => byteBudget({ bytes: 1.5 })).toThrow(/bytes/);
    const geometry = { layers: 1, queryHeads: 1, kvHeads: 1, headDim: 8 };
    expect(() => byteBudget({ bytes: 1000 }).capacity(0, geometry)).toThrow(/layout/);
    expect(() => KVCache.create({ geometry, policy: byteBudget({ bytes: 100 }) })).toThrow(BudgetError);
    expect(() => KVCache.create({ geometry, policy: byteBudget({ bytes: 2000, recent: 1, drop: 500 }) })).toThrow(/drop/);
  });
});
