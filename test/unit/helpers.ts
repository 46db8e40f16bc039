/**
 * Shared helpers of the unit tests: stores, deterministic data, naive formulas and error matchers.
 */
import { expect } from 'vitest';
import type { Backend, LayerStore } from '../../src/backend/backend.js';
import { createReferenceBackend } from '../../src/backend/reference.js';
import type { DType } from '../../src/core/dtype.js';
import { KvError, type KvErrorCode } from '../../src/core/errors.js';
import type { ImportanceTracker, Observation } from '../../src/trackers/tracker.js';

/** A reference backend and one store. */
export function setup(options: {
  dtype?: DType; maxSequences?: number; kvHeads?: number; headDim?: number; capacity?: number; auxWords?: number; layer?: number;
} = {}): { backend: Backend; store: LayerStore } {
  const backend = createReferenceBackend();
  const spec = {
    dtype: options.dtype ?? 'f32',
    maxSequences: options.maxSequences ?? 1,
    kvHeads: options.kvHeads ?? 1,
    headDim: options.headDim ?? 4,
    capacity: options.capacity ?? 16,
    auxWords: options.auxWords ?? 0,
    layer: options.layer ?? 0,
  };
  return { backend, store: backend.allocate(spec) };
}

/** A deterministic pseudo-random stream in [-1, 1) (tests must not depend on Math.random). */
export function noise(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 31 - 1;
  };
}

/** `n` values from {@link noise}, as a Float32Array. */
export function randomF32(n: number, seed: number, scale = 1): Float32Array {
  const next = noise(seed);
  return Float32Array.from({ length: n }, () => next() * scale);
}

/** Attention of one query over keys/values given as number rows, all in f64: the textbook formula. */
export function naiveAttention(q: ArrayLike<number>, keys: ArrayLike<number>[], values: ArrayLike<number>[], scale: number): {
  out: number[]; probs: number[];
} {
  const logits = keys.map((k) => {
    let dot = 0;
    for (let d = 0; d < q.length; d++) dot += q[d]! * k[d]!;
    return dot * scale;
  });
  const max = Math.max(...logits);
  const e = logits.map((s) => Math.exp(s - max));
  const sum = e.reduce((a, b) => a + b, 0);
  const probs = e.map((x) => x / sum);
  const out = Array.from({ length: q.length }, (_, d) => probs.reduce((acc, p, j) => acc + p * values[j]![d]!, 0));
  return { out, probs };
}

/** Wraps a tracker so that every observation is recorded (a copy of its probabilities) before it runs. */
export function spy(tracker: ImportanceTracker): ImportanceTracker & { seen: { kvHead: number; step: number; probs: Float32Array }[] } {
  const seen: { kvHead: number; step: number; probs: Float32Array }[] = [];
  return {
    ...tracker,
    seen,
    onObserve(o: Observation) {
      seen.push({ kvHead: o.kvHead, step: o.step, probs: o.probs.slice(0, o.length) });
      tracker.onObserve(o);
    },
  };
}

/** Asserts that `fn` throws a {@link KvError} of `code` naming `argument`. */
export function expectKvError(fn: () => unknown, code: KvErrorCode, argument?: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected a KvError').toBeInstanceOf(KvError);
  const error = caught as KvError;
  expect(error.code).toBe(code);
  if (argument !== undefined) expect(error.argument).toBe(argument);
}

/** A tracker with no state: scores stay whatever the test writes. */
export const inert: ImportanceTracker = {
  name: 'inert', input: 'none', scope: 'head', auxWords: 0, gqa: 'mean',
  onAppend() {},
  onObserve() {},
};
