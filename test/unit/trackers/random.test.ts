import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KvErrorCode } from '../../../src/core/errors.js';
import { TrackerKind, random, randomScore } from '../../../src/trackers/index.js';
import { expectKvError, setup } from '../helpers.js';

/** The documented hash, in BigInt arithmetic modulo 2^32 (independent of Math.imul). */
function mixBig(x: bigint): bigint {
  const m = 0xffffffffn;
  x &= m;
  x ^= x >> 16n;
  x = (x * 0x7feb352dn) & m;
  x ^= x >> 15n;
  x = (x * 0x846ca68bn) & m;
  x ^= x >> 16n;
  return x;
}
function expectedScore(seed: number, layer: number, kvHead: number, position: number): number {
  const u = (n: number): bigint => BigInt(n >>> 0);
  const h = mixBig(mixBig(mixBig(u(seed) ^ u(layer)) ^ u(kvHead)) ^ u(position));
  return Number(h >> 8n) / 2 ** 24;
}

describe('randomScore', () => {
  it('is the documented hash', () => {
    expect(randomScore(0, 0, 0, 0)).toBe(0);
    fc.assert(fc.property(
      fc.integer({ min: 0, max: 0xffffffff }), fc.nat(4095), fc.nat(4095), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
      (seed, layer, kvHead, position) => randomScore(seed, layer, kvHead, position) === expectedScore(seed, layer, kvHead, position),
    ), { numRuns: 500 });
  });

  it('lies in [0, 1) on a grid of 2^-24, exact in f32, and looks uniform', () => {
    let sum = 0;
    for (let position = 0; position < 20000; position++) {
      const s = randomScore(7, 1, 2, position);
      expect(s >= 0 && s < 1 && Number.isInteger(s * 2 ** 24) && Math.fround(s) === s).toBe(true);
      sum += s;
    }
    expect(sum / 20000).toBeCloseTo(0.5, 1);
  });
});

describe('random', () => {
  it('takes an unsigned 32-bit seed, default 0', () => {
    const t = random();
    expect(t).toMatchObject({ name: 'random', input: 'none', scope: 'head', auxWords: 0 });
    expect(t.kernel).toEqual({ kind: TrackerKind.Random, window: 0, seed: 0 });
    expect(random({ seed: 0xffffffff }).kernel.seed).toBe(0xffffffff);
    for (const seed of [-1, 2 ** 32, 1.5, '1']) {
      expectKvError(() => random({ seed: seed as number }), KvErrorCode.Argument, 'seed');
    }
  });

  it('scores each token by (seed, layer, head, position), the same every run', () => {
    const run = (seed: number) => {
      const t = random({ seed });
      const { backend, store } = setup({ kvHeads: 2, headDim: 1, capacity: 3, layer: 5 });
      backend.append(store, 0, new Float32Array(6), new Float32Array(6), 3, 100, t);
      return Array.from(store.scores);
    };
    const scores = run(9);
    expect(scores).toEqual(run(9));
    expect(scores).not.toEqual(run(10));
    expect(scores[0]).toBe(randomScore(9, 5, 0, 100));
    expect(scores[2]).toBe(randomScore(9, 5, 0, 102));
    expect(scores[4]).toBe(randomScore(9, 5, 1, 101));
  });
});
