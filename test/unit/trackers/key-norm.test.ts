import { describe, expect, it } from 'vitest';
import { f16BitsToF32 } from '../../../src/core/dtype.js';
import { KvErrorCode } from '../../../src/core/errors.js';
import { TrackerKind, keyNorm } from '../../../src/trackers/index.js';
import { expectKvError, randomF32, setup } from '../helpers.js';

describe('keyNorm', () => {
  it('needs keys, not attention', () => {
    const t = keyNorm();
    expect(t).toMatchObject({ name: 'keyNorm', input: 'keys', scope: 'head', auxWords: 0 });
    expect(t.kernel).toEqual({ kind: TrackerKind.KeyNorm, window: 0, seed: 0 });
    expect(keyNorm({}).name).toBe('keyNorm');
    expectKvError(() => keyNorm({ p: 2 } as never), KvErrorCode.Argument, 'p');
  });

  it('scores minus the L2 norm (hand-computed)', () => {
    const t = keyNorm();
    const { backend, store } = setup({ kvHeads: 2, headDim: 2, capacity: 2 });
    backend.append(store, 0, Float32Array.from([3, 4, 0, -1, 6, 8, 0, 0]), new Float32Array(8), 2, 0, t);
    expect(Array.from(store.scores)).toEqual([-5, -10, -1, -0]);
  });

  it('reads the key as stored (f16), summing squares in f64 in element order', () => {
    const t = keyNorm();
    const { backend, store } = setup({ dtype: 'f16', headDim: 3, capacity: 1 });
    backend.append(store, 0, Float32Array.from([0.1, -0.2, 0.3]), new Float32Array(3), 1, 0, t);
    const stored = Array.from(new Uint16Array(store.keys.buffer), f16BitsToF32);
    expect(stored[0]).toBe(0.0999755859375);
    const sum = stored[0]! * stored[0]! + stored[1]! * stored[1]! + stored[2]! * stored[2]!;
    expect(store.scores[0]).toBe(-Math.fround(Math.sqrt(sum)));
  });

  it('is never observed, while the clock still advances', () => {
    const t = keyNorm();
    const { backend, store } = setup({ headDim: 4, capacity: 4 });
    backend.append(store, 0, randomF32(8, 1), randomF32(8, 2), 2, 0, t);
    const before = Array.from(store.scores);
    backend.decode(store, 0, randomF32(4, 3), new Float32Array(4), { queryHeads: 1, scale: 0.5 }, t);
    expect(Array.from(store.scores)).toEqual(before);
    expect(store.steps[0]).toBe(1);
  });
});
