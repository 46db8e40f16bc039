import { describe, expect, it } from 'vitest';
import { decodeElement, encodeElement, type DType } from '../../../src/core/dtype.js';
import { KvErrorCode } from '../../../src/core/errors.js';
import { h2o, scissorhands, type ImportanceTracker } from '../../../src/trackers/index.js';
import { expectKvError, inert, naiveAttention, randomF32, setup, spy } from '../helpers.js';

const KV = 2;
const QH = 6;
const G = QH / KV;
const D = 8;

/** The stored rows of one head, decoded. */
function rows(store: ReturnType<typeof setup>['store'], bytes: Uint8Array, kvHead: number, length: number): number[][] {
  const words = store.dtype === 'f32' ? new Float32Array(bytes.buffer) : new Uint16Array(bytes.buffer);
  return Array.from({ length }, (_, t) => Array.from({ length: D }, (_, d) =>
    decodeElement(store.dtype, words[(kvHead * store.capacity + t) * D + d]!)));
}

function closeTo(actual: number, expected: number, relative: number): void {
  expect(Math.abs(actual - expected)).toBeLessThanOrEqual(relative * Math.abs(expected) + 1e-7);
}

/** The documented GQA combination of f32 probabilities. */
function combine(probs: number[][], gqa: 'mean' | 'max'): number[] {
  return probs[0]!.map((_, j) => {
    if (gqa === 'max') return Math.max(...probs.map((p) => p[j]!));
    let acc = 0;
    for (const p of probs) acc = Math.fround(acc + p[j]!);
    return Math.fround(acc / probs.length);
  });
}

describe('reference decode', () => {
  it.each(['mean', 'max'] as const)('matches the f64 formula and feeds GQA-combined (%s) f32 probabilities', (gqa) => {
    const tracker = spy(h2o({ gqa }));
    const { backend, store } = setup({ kvHeads: KV, headDim: D, capacity: 9 });
    backend.append(store, 0, randomF32(7 * KV * D, 1), randomF32(7 * KV * D, 2), 7, 0, tracker);
    const q = randomF32(QH * D, 3, 2);
    const out = new Float32Array(QH * D);
    backend.decode(store, 0, q, out, { queryHeads: QH, scale: 0.7 }, tracker);
    for (let kvHead = 0; kvHead < KV; kvHead++) {
      const keys = rows(store, store.keys, kvHead, 7);
      const values = rows(store, store.values, kvHead, 7);
      const probs: number[][] = [];
      for (let g = 0; g < G; g++) {
        const h = kvHead * G + g;
        const naive = naiveAttention(q.subarray(h * D, (h + 1) * D), keys, values, 0.7);
        naive.out.forEach((x, d) => closeTo(out[h * D + d]!, x, 1e-6));
        probs.push(naive.probs.map(Math.fround));
      }
      const seen = tracker.seen.find((o) => o.kvHead === kvHead)!;
      expect(seen.step).toBe(0);
      Array.from(seen.probs).forEach((p, j) => closeTo(p, combine(probs, gqa)[j]!, 1e-6));
    }
    expect(store.steps[0]).toBe(1);
  });

  it('combines a group in f32 in query-head order', () => {
    const tracker = spy(h2o());
    const { backend, store } = setup({ headDim: 1, capacity: 2 });
    backend.append(store, 0, new Float32Array(2), new Float32Array(2), 2, 0, tracker);
    // 1 + 2^-24 rounds back to 1 in f32, twice; 2^-24 + 2^-24 + 1 does not.
    backend.observe(store, 0, Float32Array.from([1, 2 ** -24, 2 ** -24, 2 ** -24, 2 ** -24, 1]), 2, 3, tracker);
    expect(tracker.seen[0]!.probs[0]).toBe(Math.fround(1 / 3));
    expect(tracker.seen[0]!.probs[1]).toBe(Math.fround((1 + 2 ** -23) / 3));
  });

  it('advances the clock for every tracker, and only for its own sequence', () => {
    const { backend, store } = setup({ maxSequences: 2, headDim: D, capacity: 4 });
    backend.append(store, 1, randomF32(D, 1), randomF32(D, 2), 1, 0, inert);
    backend.decode(store, 1, randomF32(D, 3), new Float32Array(D), { queryHeads: 1, scale: 1 }, inert);
    backend.observe(store, 1, Float32Array.from([1]), 1, 1, inert);
    expect(Array.from(store.steps)).toEqual([0, 2]);
  });

  it.each(['f16', 'bf16'] as DType[])('reads %s storage and writes outputs of the type of q', (dtype) => {
    const { backend, store } = setup({ dtype, kvHeads: KV, headDim: D, capacity: 5 });
    const k = Uint16Array.from(randomF32(5 * KV * D, 4), (x) => encodeElement(dtype, x));
    backend.append(store, 0, k, randomF32(5 * KV * D, 5), 5, 0, inert);
    const qf = randomF32(QH * D, 6);
    const qBits = Uint16Array.from(qf, (x) => encodeElement(dtype, x));
    const outBits = new Uint16Array(QH * D);
    const outF32 = new Float32Array(QH * D);
    backend.decode(store, 0, qBits, outBits, { queryHeads: QH, scale: 0.5 }, inert);
    backend.decode(store, 0, qf, outF32, { queryHeads: QH, scale: 0.5 }, inert);
    const ulp = dtype === 'f16' ? 2 ** -10 : 2 ** -7;
    for (let h = 0; h < QH; h++) {
      const keys = rows(store, store.keys, Math.floor(h / G), 5);
      const values = rows(store, store.values, Math.floor(h / G), 5);
      const fromBits = naiveAttention(Array.from(qBits.subarray(h * D, (h + 1) * D), (b) => decodeElement(dtype, b)), keys, values, 0.5);
      fromBits.out.forEach((x, d) => expect(outBits[h * D + d]).toBe(encodeElement(dtype, x)));
      const fromF32 = naiveAttention(qf.subarray(h * D, (h + 1) * D), keys, values, 0.5);
      fromF32.out.forEach((x, d) => closeTo(outF32[h * D + d]!, x, 1e-6));
      fromF32.out.forEach((x, d) => closeTo(decodeElement(dtype, outBits[h * D + d]!), x, 4 * ulp));
    }
  });
});

describe('reference prefill', () => {
  it('is causal: row i sees the slots up to length - rows + i, one observation per row', () => {
    const tracker = spy(h2o());
    const { backend, store } = setup({ kvHeads: KV, headDim: D, capacity: 8 });
    backend.append(store, 0, randomF32(6 * KV * D, 7), randomF32(6 * KV * D, 8), 6, 0, tracker);
    const q = randomF32(4 * QH * D, 9);
    const out = new Float32Array(4 * QH * D);
    backend.prefill(store, 0, q, 4, out, { queryHeads: QH, scale: 0.4 }, tracker);
    for (let row = 0; row < 4; row++) {
      for (let h = 0; h < QH; h++) {
        const visible = 3 + row;
        const keys = rows(store, store.keys, Math.floor(h / G), visible);
        const values = rows(store, store.values, Math.floor(h / G), visible);
        const at = (row * QH + h) * D;
        naiveAttention(q.subarray(at, at + D), keys, values, 0.4).out.forEach((x, d) => closeTo(out[at + d]!, x, 1e-6));
      }
    }
    expect(tracker.seen.map((o) => [o.step, o.kvHead, o.probs.length])).toEqual(
      [0, 1, 2, 3].flatMap((row) => [[row, 0, 3 + row], [row, 1, 3 + row]]),
    );
    expect(store.steps[0]).toBe(4);
  });

  it('equals appending and decoding one token at a time', () => {
    const run = (chunked: boolean) => {
      const tracker: ImportanceTracker = scissorhands({ window: 3 });
      const { backend, store } = setup({ kvHeads: KV, headDim: D, capacity: 8, auxWords: tracker.auxWords });
      const k = randomF32(6 * KV * D, 10);
      const v = randomF32(6 * KV * D, 11);
      const q = randomF32(6 * QH * D, 12, 3);
      const out = new Float32Array(6 * QH * D);
      const attention = { queryHeads: QH, scale: 1 };
      if (chunked) {
        backend.append(store, 0, k, v, 6, 0, tracker);
        backend.prefill(store, 0, q, 6, out, attention, tracker);
      } else {
        for (let t = 0; t < 6; t++) {
          backend.append(store, 0, k.subarray(t * KV * D, (t + 1) * KV * D), v.subarray(t * KV * D, (t + 1) * KV * D), 1, t, tracker);
          backend.decode(store, 0, q.subarray(t * QH * D, (t + 1) * QH * D), out.subarray(t * QH * D, (t + 1) * QH * D), attention, tracker);
        }
      }
      return { out: Array.from(out), scores: Array.from(store.scores), aux: Array.from(store.aux), steps: store.steps[0] };
    };
    const chunked = run(true);
    expect(chunked).toEqual(run(false));
    expect(chunked.scores.some((s) => s < 0)).toBe(true);
  });
});

describe('reference attention argument checks', () => {
  const { backend, store } = setup({ kvHeads: KV, headDim: D, capacity: 4, auxWords: 0 });
  backend.append(store, 0, randomF32(2 * KV * D, 1), randomF32(2 * KV * D, 2), 2, 0, inert);
  const q = new Float32Array(QH * D);
  const attention = { queryHeads: QH, scale: 1 };

  it('rejects wrong types, shapes and groups with typed errors naming the argument', () => {
    expectKvError(() => backend.decode(store, 0, new Uint16Array(QH * D), new Uint16Array(QH * D), attention, inert), KvErrorCode.DType, 'q');
    expectKvError(() => backend.decode(store, 0, q, new Uint16Array(QH * D), attention, inert), KvErrorCode.DType, 'out');
    expectKvError(() => backend.decode(store, 0, new Float64Array(QH * D) as never, q, attention, inert), KvErrorCode.DType, 'q');
    expectKvError(() => backend.decode(store, 0, q.subarray(1), q, attention, inert), KvErrorCode.Shape, 'q');
    expectKvError(() => backend.decode(store, 0, q, new Float32Array(1), attention, inert), KvErrorCode.Shape, 'out');
    expectKvError(() => backend.decode(store, 0, q, q.slice(), { queryHeads: 3, scale: 1 }, inert), KvErrorCode.Argument, 'attention.queryHeads');
    expectKvError(() => backend.decode(store, 0, q, q.slice(), { queryHeads: QH, scale: NaN }, inert), KvErrorCode.Argument, 'attention.scale');
    expectKvError(() => backend.decode(store, 1, q, q.slice(), attention, inert), KvErrorCode.Argument, 'seq');
    expectKvError(() => backend.decode(store, 0, q, q.slice(), attention, scissorhands()), KvErrorCode.Argument, 'tracker');
  });

  it('needs as many kept tokens as query rows', () => {
    const empty = setup({ headDim: D }).store;
    expectKvError(() => backend.decode(empty, 0, new Float32Array(D), new Float32Array(D), { queryHeads: 1, scale: 1 }, inert), KvErrorCode.Argument, 'rows');
    const q3 = new Float32Array(3 * QH * D);
    expectKvError(() => backend.prefill(store, 0, q3, 3, q3.slice(), attention, inert), KvErrorCode.Argument, 'rows');
    expectKvError(() => backend.prefill(store, 0, q3, 0, q3.slice(), attention, inert), KvErrorCode.Argument, 'rows');
  });
});
