import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { LayerStore } from '../../../src/backend/backend.js';
import { KvErrorCode } from '../../../src/core/errors.js';
import { expectKvError, setup } from '../helpers.js';

const CAPACITY = 12;
const D = 2;
const W = 2;

/** Fills a store directly: every per-token field of (head h, slot t) encodes its original position. */
function filled(kvHeads: number, lengths: number[], scores: number[][]) {
  const { backend, store } = setup({ kvHeads, headDim: D, capacity: CAPACITY, auxWords: W });
  const keys = new Float32Array(store.keys.buffer);
  const values = new Float32Array(store.values.buffer);
  for (let h = 0; h < kvHeads; h++) {
    store.lengths[h] = lengths[h]!;
    for (let t = 0; t < lengths[h]!; t++) {
      const at = h * CAPACITY + t;
      const position = 100 * h + t;
      store.positions[at] = position;
      store.scores[at] = scores[h]![t]!;
      for (let d = 0; d < D; d++) [keys[at * D + d], values[at * D + d]] = [position + d / 4, -position - d / 4];
      for (let w = 0; w < W; w++) store.aux[at * W + w] = position * 7 + w;
    }
  }
  return { backend, store };
}

/** What each head keeps: its positions and whether every field still matches its position. */
function kept(store: LayerStore, h: number): number[] {
  const keys = new Float32Array(store.keys.buffer);
  const values = new Float32Array(store.values.buffer);
  const positions: number[] = [];
  for (let t = 0; t < store.lengths[h]!; t++) {
    const at = h * CAPACITY + t;
    const p = store.positions[at]!;
    for (let d = 0; d < D; d++) expect([keys[at * D + d], values[at * D + d]]).toEqual([p + d / 4, -p - d / 4]);
    for (let w = 0; w < W; w++) expect(store.aux[at * W + w]).toBe(p * 7 + w);
    positions.push(p);
  }
  return positions;
}

/** The documented choice: the `count` lowest (score, slot) of [sinks, length - recent), NaN lowest. */
function naiveDrop(scores: number[], length: number, sinks: number, recent: number, count: number): Set<number> {
  const slots = [];
  for (let t = sinks; t < length - recent; t++) slots.push(t);
  const key = (t: number) => (Number.isNaN(scores[t]) ? -Infinity : scores[t]!);
  slots.sort((a, b) => (key(a) === key(b) ? a - b : key(a) < key(b) ? -1 : 1));
  return new Set(slots.slice(0, count));
}

const score = fc.oneof(fc.constantFrom(NaN, 0, -0, 1, -1, 0.5, 2), fc.float({ noNaN: true, noDefaultInfinity: true }));

describe('reference evict, head scope', () => {
  it('drops the count lowest (score, slot) candidates per head and compacts every field in order', () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 3 }).chain((kvHeads) => fc.record({
        kvHeads: fc.constant(kvHeads),
        lengths: fc.array(fc.integer({ min: 0, max: CAPACITY }), { minLength: kvHeads, maxLength: kvHeads }),
        scores: fc.array(fc.array(score, { minLength: CAPACITY, maxLength: CAPACITY }), { minLength: kvHeads, maxLength: kvHeads }),
        sinks: fc.integer({ min: 0, max: 4 }),
        recent: fc.integer({ min: 0, max: 4 }),
        share: fc.double({ min: 0, max: 1, noNaN: true }),
      })),
      ({ kvHeads, lengths, scores, sinks, recent, share }) => {
        const { backend, store } = filled(kvHeads, lengths, scores);
        const candidates = Math.min(...lengths.map((l) => Math.max(0, l - sinks - recent)));
        const count = Math.floor(share * candidates);
        backend.evict(store, 0, count, sinks, recent, 'head');
        for (let h = 0; h < kvHeads; h++) {
          const dropped = naiveDrop(scores[h]!, lengths[h]!, sinks, recent, count);
          const expected = Array.from({ length: lengths[h]! }, (_, t) => t).filter((t) => !dropped.has(t)).map((t) => 100 * h + t);
          expect(kept(store, h)).toEqual(expected);
          expect(Array.from(store.scores.subarray(h * CAPACITY, h * CAPACITY + expected.length)))
            .toEqual(expected.map((p) => Math.fround(scores[h]![p - 100 * h]!)));
        }
      },
    ), { numRuns: 300 });
  });

  it('sends ties to the older token, counts NaN as lowest, and never touches sinks or recent tokens', () => {
    const { backend, store } = filled(1, [8], [[-5, 1, 0, 1, NaN, 0, -0, -9]]);
    backend.evict(store, 0, 3, 1, 1, 'head'); // candidates: slots 1..6
    expect(kept(store, 0)).toEqual([0, 1, 3, 6, 7]); // NaN (4), then 0 at 2 and 0 at 5; -0 at 6 ties them but is newer
  });

  it('does nothing for count 0', () => {
    const { backend, store } = filled(2, [3, 1], [[1, 2, 3], [4]]);
    backend.evict(store, 0, 0, 5, 5, 'head');
    expect([kept(store, 0), kept(store, 1)]).toEqual([[0, 1, 2], [100]]);
  });

  it('refuses to drop more than the candidates of any head, changing nothing', () => {
    const { backend, store } = filled(2, [6, 4], [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4]]);
    expectKvError(() => backend.evict(store, 0, 2, 1, 2, 'head'), KvErrorCode.Budget, 'count');
    expect([kept(store, 0).length, kept(store, 1).length]).toEqual([6, 4]);
    expectKvError(() => backend.evict(store, 0, -1, 0, 0, 'head'), KvErrorCode.Argument, 'count');
    expectKvError(() => backend.evict(store, 0, 1, -1, 0, 'head'), KvErrorCode.Argument, 'sinks');
    expectKvError(() => backend.evict(store, 0, 1, 0, 0.5, 'head'), KvErrorCode.Argument, 'recent');
    expectKvError(() => backend.evict(store, 0, 1, 0, 0, 'all' as 'head'), KvErrorCode.Argument, 'scope');
    expectKvError(() => backend.evict(store, 3, 1, 0, 0, 'head'), KvErrorCode.Argument, 'seq');
  });
});

describe('reference evict, layer scope', () => {
  it('drops the same slots from every head, chosen on the f32 mean of the heads\' scores', () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 3 }), fc.integer({ min: 0, max: CAPACITY }),
      fc.array(fc.array(fc.oneof(fc.constantFrom(0, 1, 2, 3), score), { minLength: CAPACITY, maxLength: CAPACITY }), { minLength: 3, maxLength: 3 }),
      fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 3 }), fc.double({ min: 0, max: 1, noNaN: true }),
      (kvHeads, length, scores, sinks, recent, share) => {
        const { backend, store } = filled(kvHeads, Array(kvHeads).fill(length), scores);
        const count = Math.floor(share * Math.max(0, length - sinks - recent));
        backend.evict(store, 0, count, sinks, recent, 'layer');
        const mean = Array.from({ length }, (_, t) => {
          let acc = 0;
          for (let h = 0; h < kvHeads; h++) acc = Math.fround(acc + Math.fround(scores[h]![t]!));
          return Math.fround(acc / kvHeads);
        });
        const dropped = naiveDrop(mean, length, sinks, recent, count);
        const slots = Array.from({ length }, (_, t) => t).filter((t) => !dropped.has(t));
        for (let h = 0; h < kvHeads; h++) expect(kept(store, h)).toEqual(slots.map((t) => 100 * h + t));
      },
    ), { numRuns: 300 });
  });

  it('needs equal head lengths', () => {
    const { backend, store } = filled(2, [3, 2], [[1, 2, 3], [1, 2]]);
    expectKvError(() => backend.evict(store, 0, 1, 0, 0, 'layer'), KvErrorCode.Argument, 'scope');
  });
});
