import { describe, expect, it } from 'vitest';
import { KvErrorCode } from '../../../src/core/errors.js';
import { TrackerKind, tova } from '../../../src/trackers/index.js';
import { expectKvError, setup } from '../helpers.js';

describe('tova', () => {
  it('is a layer-scope attention tracker', () => {
    const t = tova();
    expect(t).toMatchObject({ name: 'tova', input: 'attention', scope: 'layer', gqa: 'mean', auxWords: 0 });
    expect(t.kernel).toEqual({ kind: TrackerKind.Tova, window: 0, seed: 0 });
    expectKvError(() => tova({ gqa: 'median' as 'mean' }), KvErrorCode.Argument, 'gqa');
  });

  it('keeps only the latest probabilities', () => {
    const t = tova();
    const { backend, store } = setup({ headDim: 1, capacity: 3 });
    backend.append(store, 0, new Float32Array(3), new Float32Array(3), 3, 0, t);
    backend.observe(store, 0, Float32Array.from([0.5, 0.25, 0.25]), 3, 1, t);
    backend.observe(store, 0, Float32Array.from([0.125, 0.625, 0.25]), 3, 1, t);
    expect(Array.from(store.scores)).toEqual([0.125, 0.625, 0.25]);
  });

  it('drops the same token from every head, chosen on the mean over heads', () => {
    const t = tova();
    const { backend, store } = setup({ kvHeads: 2, headDim: 1, capacity: 4 });
    backend.append(store, 0, Float32Array.from([1, 2, 3, 4, 5, 6]), new Float32Array(6), 3, 10, t);
    // Head 0 alone would drop slot 0, head 1 alone slot 1; their mean (0.35, 0.275, 0.375) drops slot 1.
    backend.observe(store, 0, Float32Array.from([0.1, 0.5, 0.4, 0.6, 0.05, 0.35]), 3, 2, t);
    backend.evict(store, 0, 1, 0, 0, t.scope);
    expect(Array.from(store.lengths)).toEqual([2, 2]);
    expect(Array.from(store.positions.subarray(0, 2))).toEqual([10, 12]);
    expect(Array.from(store.positions.subarray(4, 6))).toEqual([10, 12]);
    expect(Array.from(new Float32Array(store.keys.buffer).subarray(0, 2))).toEqual([1, 5]);
    expect(Array.from(new Float32Array(store.keys.buffer).subarray(4, 6))).toEqual([2, 6]);
  });
});
