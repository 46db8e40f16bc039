import { describe, expect, it } from 'vitest';
import { createReferenceBackend } from '../../../src/backend/reference.js';
import { f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../../src/core/dtype.js';
import { KvErrorCode } from '../../../src/core/errors.js';
import { scissorhands, type AppendedToken, type ImportanceTracker } from '../../../src/trackers/index.js';
import { expectKvError, inert, randomF32, setup } from '../helpers.js';

describe('reference allocate', () => {
  it('makes zeroed arrays with the documented layout', () => {
    const { store } = setup({ dtype: 'bf16', maxSequences: 3, kvHeads: 2, headDim: 5, capacity: 7, auxWords: 2 });
    expect(store.keys.byteLength).toBe(3 * 2 * 7 * 5 * 2);
    expect(store.values.byteLength).toBe(3 * 2 * 7 * 5 * 2);
    expect([store.positions.length, store.scores.length, store.aux.length]).toEqual([42, 42, 84]);
    expect([store.lengths.length, store.steps.length]).toEqual([6, 3]);
    for (const a of [store.keys, store.values, store.positions, store.scores, store.aux, store.lengths, store.steps]) {
      expect(a.every((x) => x === 0)).toBe(true);
    }
    expect(store).toMatchObject({ dtype: 'bf16', maxSequences: 3, kvHeads: 2, headDim: 5, capacity: 7, auxWords: 2 });
  });

  it('rejects impossible specs naming the field', () => {
    const backend = createReferenceBackend();
    const spec = { layer: 0, dtype: 'f32', maxSequences: 1, kvHeads: 1, headDim: 4, capacity: 4, auxWords: 0 } as const;
    expectKvError(() => backend.allocate({ ...spec, dtype: 'f8' as 'f32' }), KvErrorCode.DType, 'dtype');
    expectKvError(() => backend.allocate({ ...spec, headDim: 513 }), KvErrorCode.Argument, 'headDim');
    expectKvError(() => backend.allocate({ ...spec, capacity: 0 }), KvErrorCode.Argument, 'capacity');
    expectKvError(() => backend.allocate({ ...spec, kvHeads: 1.5 }), KvErrorCode.Argument, 'kvHeads');
    expectKvError(() => backend.allocate({ ...spec, auxWords: -1 }), KvErrorCode.Argument, 'auxWords');
    expectKvError(() => backend.allocate({ ...spec, maxSequences: 1 << 16, kvHeads: 4096, capacity: 1 << 20 }), KvErrorCode.Argument, 'capacity');
  });

  it('throws DisposedError once disposed, and disposes idempotently', () => {
    const backend = createReferenceBackend();
    backend.dispose();
    backend.dispose();
    expectKvError(() => backend.allocate({ layer: 0, dtype: 'f32', maxSequences: 1, kvHeads: 1, headDim: 4, capacity: 4, auxWords: 0 }), KvErrorCode.Disposed);
  });
});

describe('reference append', () => {
  it('writes [count][kvHeads][headDim] inputs to slots length.. of each head of the sequence', () => {
    const { backend, store } = setup({ maxSequences: 2, kvHeads: 2, headDim: 2, capacity: 4 });
    const k = Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8]); // token 0: head 0 [1,2], head 1 [3,4]; token 1: ...
    backend.append(store, 1, k, k.map((x) => -x), 2, 50, inert);
    backend.append(store, 1, Float32Array.from([9, 9, 10, 10]), new Float32Array(4), 1, 52, inert);
    const keys = new Float32Array(store.keys.buffer);
    const at = (s: number, h: number, t: number) => ((s * 2 + h) * 4 + t) * 2;
    expect(Array.from(keys.subarray(at(1, 0, 0), at(1, 0, 3)))).toEqual([1, 2, 5, 6, 9, 9]);
    expect(Array.from(keys.subarray(at(1, 1, 0), at(1, 1, 3)))).toEqual([3, 4, 7, 8, 10, 10]);
    expect(new Float32Array(store.values.buffer)[at(1, 1, 1)]).toBe(-7);
    expect(Array.from(store.positions.subarray(12, 15))).toEqual([50, 51, 52]);
    expect(Array.from(store.lengths)).toEqual([0, 0, 3, 3]);
    expect(keys.subarray(0, at(1, 0, 0)).every((x) => x === 0)).toBe(true); // sequence 0 untouched
  });

  it('rounds f32 inputs to the store nearest-even, and copies 16-bit bits as given', () => {
    for (const [dtype, encode] of [['f16', f32ToF16Bits], ['bf16', f32ToBf16Bits]] as const) {
      const { backend, store } = setup({ dtype, headDim: 3, capacity: 2 });
      const x = Float32Array.from([0.1, 1 + 2 ** -11, 65520]);
      backend.append(store, 0, x, x, 1, 0, inert);
      const bits = Uint16Array.from([0x7e01, 0x1234, 0xfc00]); // a NaN payload survives
      backend.append(store, 0, bits, bits, 1, 1, inert);
      expect(Array.from(new Uint16Array(store.keys.buffer))).toEqual([...Array.from(x, encode), 0x7e01, 0x1234, 0xfc00]);
      expect(Array.from(new Uint16Array(store.values.buffer))).toEqual(Array.from(new Uint16Array(store.keys.buffer)));
    }
  });

  it('zeroes the new slot\'s score and aux words, then calls onAppend with the key as stored', () => {
    const calls: { index: number; position: number; kvHead: number; layer: number; key: number[]; aux: number[]; score: number }[] = [];
    const recorder: ImportanceTracker = {
      name: 'recorder', input: 'keys', scope: 'head', auxWords: 2, gqa: 'mean',
      onAppend(t: AppendedToken) {
        calls.push({
          index: t.index, position: t.position, kvHead: t.kvHead, layer: t.layer, key: Array.from(t.key),
          aux: Array.from(t.aux.subarray(t.index * 2, t.index * 2 + 2)), score: t.scores[t.index]!,
        });
        t.aux[t.index * 2] = 0xdead;
        t.scores[t.index] = 7;
      },
      onObserve() {},
    };
    const { backend, store } = setup({ dtype: 'f16', kvHeads: 2, headDim: 2, capacity: 3, auxWords: 2, layer: 4 });
    store.aux.fill(0xffffffff);
    store.scores.fill(-3);
    backend.append(store, 0, Float32Array.from([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]), new Float32Array(8), 2, 9, recorder);
    expect(calls.map((c) => [c.kvHead, c.index, c.position, c.layer])).toEqual([[0, 0, 9, 4], [0, 1, 10, 4], [1, 0, 9, 4], [1, 1, 10, 4]]);
    expect(calls.every((c) => c.score === 0 && c.aux.every((w) => w === 0))).toBe(true);
    expect(calls[3]!.key).toEqual([f16BitsToF32(f32ToF16Bits(0.7)), f16BitsToF32(f32ToF16Bits(0.8))]);
    expect(calls[3]!.key[0]).not.toBe(Math.fround(0.7)); // decoded from f16, not the f32 input
    expect(store.aux[2 * 3 * 2 - 1]).toBe(0xffffffff); // slot 2 of head 1 was not appended
  });

  it('rejects impossible appends before writing anything', () => {
    const { backend, store } = setup({ kvHeads: 2, headDim: 2, capacity: 3 });
    const four = new Float32Array(4);
    expectKvError(() => backend.append(store, 0, new Uint16Array(4), four, 1, 0, inert), KvErrorCode.DType, 'k');
    expectKvError(() => backend.append(store, 0, four, new Uint16Array(4), 1, 0, inert), KvErrorCode.DType, 'v');
    expectKvError(() => backend.append(store, 0, four, new Float32Array(3), 1, 0, inert), KvErrorCode.Shape, 'v');
    expectKvError(() => backend.append(store, 0, four, four, 2, 0, inert), KvErrorCode.Shape, 'k');
    expectKvError(() => backend.append(store, 2, four, four, 1, 0, inert), KvErrorCode.Argument, 'seq');
    expectKvError(() => backend.append(store, 0, four, four, -1, 0, inert), KvErrorCode.Argument, 'count');
    expectKvError(() => backend.append(store, 0, four, four, 1, 0, scissorhands()), KvErrorCode.Argument, 'tracker');
    expectKvError(() => backend.append(store, 0, four, four, 1, 2 ** 31 - 1, inert), KvErrorCode.Argument, 'firstPosition');
    backend.append(store, 0, randomF32(8, 1), randomF32(8, 2), 2, 0, inert);
    const keys = store.keys.slice();
    expectKvError(() => backend.append(store, 0, new Float32Array(8), new Float32Array(8), 2, 2, inert), KvErrorCode.Budget, 'count');
    expect(store.keys).toEqual(keys);
    expect(Array.from(store.lengths)).toEqual([2, 2]);
  });
});

describe('reference observe', () => {
  it('reads row h of [queryHeads][stride] over the kept slots of KV head h / group', () => {
    const seen: number[][] = [];
    const recorder: ImportanceTracker = {
      name: 'recorder', input: 'attention', scope: 'head', auxWords: 0, gqa: 'max',
      onAppend() {},
      onObserve(o) { seen.push([o.kvHead, o.step, ...o.probs.subarray(0, o.length)]); },
    };
    const { backend, store } = setup({ kvHeads: 2, headDim: 1, capacity: 4 });
    backend.append(store, 0, new Float32Array(6), new Float32Array(6), 3, 0, recorder);
    backend.evict(store, 0, 1, 0, 0, 'head'); // both heads keep 2
    backend.append(store, 0, new Float32Array(2), new Float32Array(2), 1, 3, recorder);
    const probs = Float32Array.from([0.5, 0.25, 0.25, 9, 0.75, 0.125, 0.125, 9, 0.25, 0.25, 0.5, 9, 0, 1, 0, 9]);
    backend.observe(store, 0, probs, 4, 4, recorder);
    expect(seen).toEqual([[0, 0, 0.75, 0.25, 0.25], [1, 0, 0.25, 1, 0.5]]);
    expect(store.steps[0]).toBe(1);
  });

  it('rejects wrong shapes', () => {
    const { backend, store } = setup({ kvHeads: 2, headDim: 1, capacity: 4 });
    backend.append(store, 0, new Float32Array(6), new Float32Array(6), 3, 0, inert);
    expectKvError(() => backend.observe(store, 0, new Float32Array(6), 2, 2, inert), KvErrorCode.Shape, 'stride');
    expectKvError(() => backend.observe(store, 0, new Float32Array(7), 3, 2, inert), KvErrorCode.Shape, 'probs');
    expectKvError(() => backend.observe(store, 0, new Float32Array(9), 3, 3, inert), KvErrorCode.Argument, 'queryHeads');
    expectKvError(() => backend.observe(store, 0, new Uint16Array(6) as never, 3, 2, inert), KvErrorCode.DType, 'probs');
  });
});
