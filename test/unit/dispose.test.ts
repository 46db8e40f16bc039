/**
 * Lifetimes: dispose() is idempotent and `using` calls it; after it every method throws DisposedError
 * (before looking at its arguments); disposing one cache leaves others working; a closed or reset
 * slot starts clean when reused (positions from 0, no tracker state left behind) and never disturbs
 * the other sequences, whose kept data stay bit-identical.
 */
import { describe, expect, it } from 'vitest';
import {
  DisposedError, type ImportanceTracker, KVCache, KvErrorCode, backendInfo, fixedBudget, h2o, keyNorm, random, scissorhands,
  streamingLLM, tova,
} from '../../src/index.js';
import { Rng, diffSnapshots, snapshotCache } from '../../src/testing/index.js';

const BACKENDS = backendInfo().cpu.available ? (['reference', 'cpu'] as const) : (['reference'] as const);
const geometry = { layers: 2, queryHeads: 4, kvHeads: 2, headDim: 5 };
const Q = geometry.queryHeads * geometry.headDim;
const KV = geometry.kvHeads * geometry.headDim;

const TRACKERS: readonly [string, () => ImportanceTracker][] = [
  ['scissorhands', () => scissorhands({ window: 5 })], ['h2o', () => h2o()], ['tova', () => tova()],
  ['streamingLLM', () => streamingLLM()], ['keyNorm', () => keyNorm()], ['random', () => random({ seed: 9 })],
];

function block(seed: number, rows: number): { q: Float32Array; k: Float32Array; v: Float32Array } {
  const rng = new Rng(seed);
  const fill = (n: number): Float32Array => Float32Array.from({ length: n }, () => rng.range(-2, 2));
  return { q: fill(rows * Q), k: fill(rows * KV), v: fill(rows * KV) };
}

/** A prompt and some decode steps on every layer, enough to evict. */
function drive(cache: KVCache, seq: number, seed: number): void {
  for (let layer = 0; layer < geometry.layers; layer++) {
    const p = block(seed + layer, 9);
    cache.prefill(seq, layer, p.q, p.k, p.v);
    for (let t = 0; t < 6; t++) {
      const s = block(seed * 31 + layer * 7 + t, 1);
      cache.attend(seq, layer, s.q, s.k, s.v);
    }
    cache.observe(seq, layer, new Float32Array(geometry.queryHeads * cache.length(seq, layer)).fill(1 / cache.length(seq, layer)));
  }
}

describe.each(BACKENDS)('lifetimes on the %s backend', (backend) => {
  const make = (tracker: ImportanceTracker = h2o(), maxSequences = 3): KVCache =>
    KVCache.create({ geometry, tracker, policy: fixedBudget({ tokens: 8, sinks: 1, recent: 2, drop: 2 }), maxSequences, backend });

  it('dispose() is idempotent, and [Symbol.dispose] after it is a no-op', () => {
    const cache = make();
    cache.dispose();
    expect(() => cache.dispose()).not.toThrow();
    expect(() => cache[Symbol.dispose]()).not.toThrow();
  });

  it('`using` disposes at the end of the scope', () => {
    let escaped: KVCache | undefined;
    {
      using cache = make();
      escaped = cache;
      cache.open();
    }
    expect(() => escaped.open()).toThrow(DisposedError);
  });

  it('every method throws DisposedError after dispose(), before checking its arguments', () => {
    const cache = make();
    const seq = cache.open();
    const { q, k, v } = block(1, 1);
    cache.dispose();
    const calls: Record<string, () => unknown> = {
      open: () => cache.open(),
      reset: () => cache.reset(seq),
      close: () => cache.close(seq),
      isOpen: () => cache.isOpen(seq),
      attend: () => cache.attend(seq, 0, q, k, v),
      prefill: () => cache.prefill(seq, 0, q, k, v),
      append: () => cache.append(seq, 0, k, v),
      observe: () => cache.observe(seq, 0, new Float32Array(0)),
      length: () => cache.length(seq, 0),
      seen: () => cache.seen(seq),
      headBudget: () => cache.headBudget(seq, 0),
      headCapacity: () => cache.headCapacity(seq, 0),
      view: () => cache.view(seq, 0, 0),
      inspect: () => cache.inspect(seq, 0, 0),
      stats: () => cache.stats(),
      setStream: () => cache.setStream(0n),
    };
    // Every public method of KVCache is in the list (a new method must join it).
    const methods = Object.getOwnPropertyNames(KVCache.prototype).filter((name) => {
      const d = Object.getOwnPropertyDescriptor(KVCache.prototype, name);
      return name !== 'constructor' && name !== 'dispose' && typeof d?.value === 'function';
    });
    expect(methods.sort()).toEqual(Object.keys(calls).sort());
    for (const [name, call] of Object.entries(calls)) {
      let error: unknown;
      try {
        call();
      } catch (e) {
        error = e;
      }
      expect(error, name).toBeInstanceOf(DisposedError);
      expect((error as DisposedError).code, name).toBe(KvErrorCode.Disposed);
    }
    // Arguments are not looked at: a disposed cache says so even to nonsense.
    expect(() => cache.attend(-1, 99, q, k, v)).toThrow(DisposedError);
    expect(() => cache.view(Number.NaN, 0, 0)).toThrow(DisposedError);
  });

  it('disposing one cache leaves another one working, with its data intact', () => {
    using keep = make();
    const other = make();
    const a = keep.open();
    const b = other.open();
    drive(keep, a, 5);
    drive(other, b, 6);
    const before = snapshotCache(keep);
    other.dispose();
    expect(diffSnapshots(before, snapshotCache(keep))).toBeUndefined();
    drive(keep, a, 7);
    expect(keep.stats().tokensKept).toBeGreaterThan(0);
  });

  describe.each(TRACKERS)('%s', (_name, tracker) => {
    for (const how of ['close and reopen', 'reset'] as const) {
      it(`${how}: the slot starts clean and the other sequences stay bit-identical`, () => {
        using cache = make(tracker());
        using fresh = make(tracker());
        const a = cache.open();
        const b = cache.open();
        const c = cache.open();
        drive(cache, a, 11);
        drive(cache, b, 12);
        drive(cache, c, 13);
        const others = snapshotCache(cache);

        if (how === 'reset') {
          cache.reset(a);
        } else {
          cache.close(a);
          expect(cache.isOpen(a)).toBe(false);
          expect(cache.open()).toBe(a);
        }
        for (let layer = 0; layer < geometry.layers; layer++) {
          expect(cache.seen(a, layer)).toBe(0);
          for (let h = 0; h < geometry.kvHeads; h++) {
            expect(cache.length(a, layer, h)).toBe(0);
            expect(cache.view(a, layer, h).keys).toHaveLength(0);
            expect(cache.inspect(a, layer, h).positions).toHaveLength(0);
          }
        }
        expect(diffSnapshots(others, snapshotCache(cache), { sequences: [b, c] })).toBeUndefined();

        // The reused slot behaves exactly like slot 0 of a brand-new cache: same positions, scores
        // (tracker state and clock restarted), keys and values, bit for bit.
        const f = fresh.open();
        expect(f).toBe(0);
        drive(cache, a, 21);
        drive(fresh, f, 21);
        const reused = snapshotCache(cache).sequences[a];
        const clean = snapshotCache(fresh).sequences[f];
        expect(reused).toEqual(clean);
        expect(diffSnapshots(others, snapshotCache(cache), { sequences: [b, c] })).toBeUndefined();
      });
    }
  });
});
