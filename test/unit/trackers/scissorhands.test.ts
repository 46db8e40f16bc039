import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KvErrorCode } from '../../../src/core/errors.js';
import { TrackerKind, scissorhands, type Observation } from '../../../src/trackers/index.js';
import { expectKvError, noise, randomF32, setup } from '../helpers.js';

/** Runs the observe hook on one (sequence, head) state of `n` tokens. */
function observer(window: number, n: number) {
  const tracker = scissorhands({ window });
  const scores = new Float32Array(n);
  const aux = new Uint32Array(n * tracker.auxWords);
  for (let index = 0; index < n; index++) {
    tracker.onAppend({ seq: 0, layer: 0, kvHead: 0, index, position: index, key: new Float32Array(1), scores, aux });
  }
  let step = 0;
  return {
    scores,
    observe(probs: number[]) {
      const o: Observation = { seq: 0, layer: 0, kvHead: 0, length: n, step: step++, probs: Float32Array.from(probs), scores, aux };
      tracker.onObserve(o);
    },
  };
}

describe('scissorhands options', () => {
  it('defaults to the paper: window 400, mean over GQA groups, per-head scope', () => {
    const t = scissorhands();
    expect(t).toMatchObject({ name: 'scissorhands', input: 'attention', scope: 'head', gqa: 'mean', auxWords: 13 });
    expect(t.kernel).toEqual({ kind: TrackerKind.Scissorhands, window: 400, seed: 0 });
    expect(Object.isFrozen(t)).toBe(true);
  });

  it('keeps one bit per step of the window', () => {
    expect(scissorhands({ window: 1 }).auxWords).toBe(1);
    expect(scissorhands({ window: 32 }).auxWords).toBe(1);
    expect(scissorhands({ window: 33 }).auxWords).toBe(2);
    expect(scissorhands({ window: 65536, gqa: 'max' })).toMatchObject({ auxWords: 2048, gqa: 'max' });
  });

  it('rejects bad options with an ArgumentError naming the option', () => {
    for (const window of [0, -3, 1.5, 65537, '400', NaN]) {
      expectKvError(() => scissorhands({ window: window as number }), KvErrorCode.Argument, 'window');
    }
    expectKvError(() => scissorhands({ gqa: 'sum' as 'mean' }), KvErrorCode.Argument, 'gqa');
    expectKvError(() => scissorhands({ windows: 100 } as never), KvErrorCode.Argument, 'windows');
  });
});

describe('scissorhands rule', () => {
  it('counts unimportant steps over a sliding window (hand-computed)', () => {
    const o = observer(3, 2); // threshold 1/2
    const expected = [[-1, 0], [-1, 0], [-2, 0], [-1, -1], [-1, -2], [0, -3]];
    const probs = [[0.2, 0.8], [0.5, 0.5], [0.1, 0.9], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]];
    probs.forEach((p, t) => {
      o.observe(p);
      expect(Array.from(o.scores), `after step ${t}`).toEqual(expected[t]);
    });
  });

  it('compares the f32 probability with 1/n in f64, strictly', () => {
    let below = 0;
    for (let n = 1; n <= 64; n++) {
      const o = observer(8, n);
      const share = Math.fround(1 / n); // what an exactly uniform row holds in f32
      o.observe(Array.from({ length: n }, () => share));
      const unimportant = share < 1 / n;
      if (unimportant) below++;
      expect(o.scores[0], `n = ${n}`).toBe(unimportant ? -1 : 0);
    }
    expect(below).toBeGreaterThan(0); // both sides of the threshold were exercised
    expect(below).toBeLessThan(64);
  });

  it('equals a naive recount of the last `window` steps, across word boundaries', () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 70 }), fc.integer({ min: 1, max: 5 }), fc.integer({ min: 0, max: 2 ** 31 }), fc.integer({ min: 1, max: 3 }),
      (window, n, seed, spread) => {
        const o = observer(window, n);
        const next = noise(seed);
        const history: boolean[][] = [];
        for (let t = 0; t < 2 * window + 5; t++) {
          // Probabilities scattered around 1/n, some exactly on it.
          const probs = Array.from({ length: n }, () => (next() > 0.8 ? 1 / n : (1 + spread * next() / 4) / n));
          o.observe(probs);
          history.push(probs.map((p) => Math.fround(p) < 1 / n));
          for (let j = 0; j < n; j++) {
            const count = history.slice(Math.max(0, t + 1 - window)).filter((u) => u[j]).length;
            if (o.scores[j] !== -count) return false;
          }
        }
        return true;
      },
    ), { numRuns: 60 });
  });

  it('through the backend, with GQA, prefill and evictions, scores each kept token by its own history', () => {
    const window = 37;
    const kvHeads = 2;
    const queryHeads = 6;
    const headDim = 4;
    const tracker = scissorhands({ window });
    const { backend, store } = setup({ kvHeads, headDim, capacity: 24, auxWords: tracker.auxWords });
    // history[kvHead] maps a position to the steps at which it was unimportant.
    const history = [new Map<number, number[]>(), new Map<number, number[]>()];
    const recording = {
      ...tracker,
      onObserve(o: Observation) {
        for (let j = 0; j < o.length; j++) {
          const position = store.positions[o.kvHead * store.capacity + j]!;
          const steps = history[o.kvHead]!.get(position) ?? [];
          if (o.probs[j]! < 1 / o.length) steps.push(o.step);
          history[o.kvHead]!.set(position, steps);
        }
        tracker.onObserve(o);
      },
    };
    const next = noise(11);
    const attention = { queryHeads, scale: 1.5 };
    backend.append(store, 0, randomF32(8 * kvHeads * headDim, 1), randomF32(8 * kvHeads * headDim, 2), 8, 0, recording);
    backend.prefill(store, 0, randomF32(8 * queryHeads * headDim, 3), 8, new Float32Array(8 * queryHeads * headDim), attention, recording);
    for (let position = 8; position < 120; position++) {
      if (store.lengths[0] === store.capacity) backend.evict(store, 0, 1 + Math.floor((next() + 1) * 2), 0, 9, 'head');
      backend.append(store, 0, randomF32(kvHeads * headDim, position), randomF32(kvHeads * headDim, -position), 1, position, recording);
      backend.decode(store, 0, randomF32(queryHeads * headDim, 1000 + position), new Float32Array(queryHeads * headDim), attention, recording);
      const now = store.steps[0]! - 1;
      for (let h = 0; h < kvHeads; h++) {
        for (let j = 0; j < store.lengths[h]!; j++) {
          const at = h * store.capacity + j;
          const count = (history[h]!.get(store.positions[at]!) ?? []).filter((s) => s > now - window).length;
          expect(store.scores[at], `head ${h}, position ${store.positions[at]}`).toBe(0 - count);
        }
      }
    }
    expect(Math.min(...store.scores)).toBeLessThan(-10); // the records were far from trivial
  });
});
