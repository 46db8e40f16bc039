import { describe, expect, it } from 'vitest';
import { KvErrorCode } from '../../../src/core/errors.js';
import { TrackerKind, h2o } from '../../../src/trackers/index.js';
import { expectKvError, setup } from '../helpers.js';

describe('h2o', () => {
  it('is a per-head attention tracker with no aux words', () => {
    const t = h2o();
    expect(t).toMatchObject({ name: 'h2o', input: 'attention', scope: 'head', gqa: 'mean', auxWords: 0 });
    expect(t.kernel).toEqual({ kind: TrackerKind.H2O, window: 0, seed: 0 });
    expect(h2o({ gqa: 'max' }).gqa).toBe('max');
    expectKvError(() => h2o({ gqa: 'min' as 'max' }), KvErrorCode.Argument, 'gqa');
    expectKvError(() => h2o({ window: 3 } as never), KvErrorCode.Argument, 'window');
  });

  it('accumulates each observation into the score (hand-computed)', () => {
    const t = h2o();
    const { backend, store } = setup({ headDim: 2, capacity: 4 });
    backend.append(store, 0, new Float32Array(6), new Float32Array(6), 3, 0, t);
    expect(Array.from(store.scores.subarray(0, 3))).toEqual([0, 0, 0]);
    backend.observe(store, 0, Float32Array.from([0.5, 0.25, 0.25, 9]), 4, 1, t);
    backend.observe(store, 0, Float32Array.from([0.125, 0.125, 0.75, 9]), 4, 1, t);
    expect(Array.from(store.scores.subarray(0, 3))).toEqual([0.625, 0.375, 1]);
    expect(store.scores[3]).toBe(0); // beyond the kept tokens: untouched
  });

  it('sums in f32, not f64', () => {
    const t = h2o();
    const { backend, store } = setup({ headDim: 1, capacity: 2 });
    backend.append(store, 0, new Float32Array(2), new Float32Array(2), 2, 0, t);
    backend.observe(store, 0, Float32Array.from([1, 0.1]), 2, 1, t);
    for (let i = 0; i < 10; i++) backend.observe(store, 0, Float32Array.from([2 ** -25, 0.1]), 2, 1, t);
    expect(store.scores[0]).toBe(1); // each 2^-25 is below half an f32 ulp of 1
    let expected = 0;
    for (let i = 0; i < 11; i++) expected = Math.fround(expected + Math.fround(0.1));
    expect(store.scores[1]).toBe(expected);
  });

  it('starts a new token at 0 whatever its slot held before', () => {
    const t = h2o();
    const { backend, store } = setup({ headDim: 1, capacity: 2 });
    backend.append(store, 0, new Float32Array(2), new Float32Array(2), 2, 0, t);
    backend.observe(store, 0, Float32Array.from([0.75, 0.25]), 2, 1, t);
    backend.evict(store, 0, 1, 0, 1, 'head'); // drops slot 0; slot 1 moves to 0 and leaves a stale 0.25
    expect(store.scores[1]).toBe(0.25);
    backend.append(store, 0, new Float32Array(1), new Float32Array(1), 1, 2, t);
    expect(Array.from(store.scores)).toEqual([0.25, 0]);
    expect(Array.from(store.positions)).toEqual([1, 2]);
  });
});
