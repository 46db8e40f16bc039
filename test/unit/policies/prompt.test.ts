import { describe, expect, it } from 'vitest';
import { KvErrorCode } from '../../../src/core/errors.js';
import {
  KVCache, adaKV, fixedBudget, h2o, pyramidKV, scissorhands, snapKV, snapKVScores, tova, trackers,
} from '../../../src/index.js';
import { expectKvError, setup } from '../helpers.js';

const geometry = { layers: 4, queryHeads: 4, kvHeads: 2, headDim: 8 };

describe('prompt policies', () => {
  it('have the ALGORITHMS.md defaults: window 32, pooling avg of 5, beta 20, floor 0.2, chunk max(window, B/4)', () => {
    const p = snapKV({ tokens: 256 });
    expect(p).toMatchObject({ name: 'snapKV', tokens: 256, sinks: 0, recent: 32, drop: 1 });
    expect(p.prompt).toMatchObject({ window: 32, chunk: 64 });
    expect(p.capacity(0, geometry)).toBe(256 + 64);
    expect(snapKV({ tokens: 100 }).prompt.chunk).toBe(32);
    expect(snapKVScores().pooling).toEqual({ kernel: 5, mode: 'avg' });
    expect(snapKVScores()).toMatchObject({ input: 'attention', scope: 'head', gqa: 'mean', auxWords: 0 });
    expect(trackers.create('snapKVScores', { kernel: 7, pooling: 'max' }).pooling).toEqual({ kernel: 7, mode: 'max' });
    expect(adaKV({ tokens: 256 }).capacity(0, geometry)).toBe(256 * 2 + 64);
  });

  it('pyramidKV: budgets fall linearly from 2(B - w) - min + w to min + w, min = (B - w) / beta, as the reference implementation rounds them', () => {
    const p = pyramidKV({ tokens: 256 });
    const g = { ...geometry, layers: 32 };
    const budgets = Array.from({ length: 32 }, (_, l) => p.prompt.tokens(l, g));
    // min = floor(224 / 20) = 11, max = 448 - 11 = 437, step = floor(426 / 31) = 13.
    expect(budgets[0]).toBe(32 + 437);
    expect(budgets[1]).toBe(32 + 437 - 13);
    expect(budgets[31]).toBe(32 + 437 - 31 * 13);
    expect(budgets.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(32 * 256);
    expect(p.prompt.tokens(0, { ...geometry, layers: 1 })).toBe(256);
    // A steep pyramid never goes below one candidate beside the sinks and the window.
    expect(pyramidKV({ tokens: 40, window: 32, sinks: 2, beta: 100 }).prompt.tokens(3, geometry)).toBe(35);
  });

  it('check their options with typed errors', () => {
    expectKvError(() => snapKV({ tokens: 32 }), KvErrorCode.Budget, 'tokens');
    expectKvError(() => adaKV({ tokens: 64, floor: 2 }), KvErrorCode.Argument, 'floor');
    expectKvError(() => pyramidKV({ tokens: 64, beta: 0 }), KvErrorCode.Argument, 'beta');
    expectKvError(() => snapKV({ tokens: 64, chunk: 0 }), KvErrorCode.Argument, 'chunk');
    expectKvError(() => snapKVScores({ pooling: 'median' as 'avg' }), KvErrorCode.Argument, 'pooling');
    const packed = { format: 'int4', groupSize: 8, residual: 8 } as const;
    expectKvError(() => KVCache.create({ geometry, policy: adaKV({ tokens: 64 }), tracker: snapKVScores(), storage: packed, backend: 'reference' }),
      KvErrorCode.Argument, 'storage');
    expectKvError(() => KVCache.create({ geometry, policy: adaKV({ tokens: 64 }), tracker: tova(), backend: 'reference' }), KvErrorCode.Argument, 'tracker');
    expectKvError(() => KVCache.create({ geometry, policy: fixedBudget({ tokens: 64 }), prompt: { policy: fixedBudget({ tokens: 64 }) } }),
      KvErrorCode.Argument, 'prompt.policy');
    expectKvError(() => KVCache.create({
      geometry, tracker: scissorhands({ window: 64 }), policy: fixedBudget({ tokens: 64 }),
      prompt: { tracker: scissorhands({ window: 32 }), policy: snapKV({ tokens: 64 }) },
    }), KvErrorCode.Argument, 'prompt.tracker');
    // A head the prompt left with only its sinks and window must still take a decode step.
    expectKvError(() => KVCache.create({
      geometry, tracker: scissorhands(), policy: fixedBudget({ tokens: 64, recent: 10 }),
      prompt: { tracker: snapKVScores(), policy: adaKV({ tokens: 64, window: 4 }) },
    }), KvErrorCode.Budget, 'policy');
    using composed = KVCache.create({
      geometry, tracker: scissorhands(), policy: fixedBudget({ tokens: 64, recent: 5 }), backend: 'reference',
      prompt: { tracker: snapKVScores(), policy: adaKV({ tokens: 64, window: 4 }) },
    });
    const seq = composed.open();
    expect([composed.headBudget(seq, 0, 1), composed.headCapacity(seq, 0, 1)]).toEqual([64, 64 + 16]); // chunk: max(window, 64 / 4)
  });
});

describe('score pooling', () => {
  it('avg divides by the kernel with missing slots as 0 and stops at the end; max takes the largest present', () => {
    const { backend, store } = setup({ capacity: 8 });
    store.lengths[0] = 6;
    store.scores.set([1, 2, 3, 4, 5, 6]);
    backend.poolScores!(store, 0, 3, 'avg', Int32Array.of(4));
    expect(Array.from(store.scores.subarray(0, 6))).toEqual([1, 2, 3, 7 / 3, 5, 6].map(Math.fround));
    store.scores.set([1, 5, 3, 4, 2, 6]);
    backend.poolScores!(store, 0, 5, 'max', Int32Array.of(5));
    expect(Array.from(store.scores.subarray(0, 6))).toEqual([5, 5, 5, 5, 4, 6]);
  });
});

describe('composition', () => {
  it('the decoding tracker takes over with its own state on every kept token, and a new prompt hands back', () => {
    using cache = KVCache.create({
      geometry: { ...geometry, layers: 1 }, backend: 'reference',
      tracker: scissorhands({ window: 64 }), policy: fixedBudget({ tokens: 24, recent: 4 }),
      prompt: { tracker: snapKVScores(), policy: adaKV({ tokens: 24, window: 4, chunk: 8 }) },
    });
    const seq = cache.open();
    const f = (n: number, s: number): Float32Array => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.7 + s));
    cache.prefill(seq, 0, f(40 * 32, 1), f(40 * 16, 2), f(40 * 16, 3));
    const afterPrompt = [0, 1].map((h) => cache.inspect(seq, 0, h));
    // SnapKV's window sums: positive, and the heads kept different numbers of tokens within 2 x 24.
    expect(afterPrompt.some((k) => k.scores.some((s) => s > 0))).toBe(true);
    expect(afterPrompt[0]!.positions.length + afterPrompt[1]!.positions.length).toBeLessThanOrEqual(48);
    cache.attend(seq, 0, f(32, 4), f(16, 5), f(16, 6));
    // Scissorhands' scores: minus a count of steps, so integers <= 0 (one observation so far).
    for (const h of [0, 1]) for (const s of cache.inspect(seq, 0, h).scores) expect([0, -1]).toContain(s);
    cache.prefill(seq, 0, f(2 * 32, 7), f(2 * 16, 8), f(2 * 16, 9));
    for (const h of [0, 1]) for (const s of cache.inspect(seq, 0, h).scores) expect(s).toBeGreaterThanOrEqual(0);
    expect(h2o().kernel.kind).toBe(snapKVScores().kernel.kind);
  });
});
