/**
 * Shared helpers of the native backend tests: both backends, twin stores, seeded data, comparisons.
 */
import { expect } from 'vitest';
import type { Backend, LayerStore, LayerStoreSpec } from '../../src/backend/backend.js';
import { createCpuBackend } from '../../src/backend/cpu.js';
import { createReferenceBackend } from '../../src/backend/reference.js';
import { decodeElement, encodeElement, type DType, type HostArray } from '../../src/core/dtype.js';
import { KvError, type KvErrorCode } from '../../src/core/errors.js';
import { Rng } from '../../src/testing/rng.js';
import type { ImportanceTracker, Observation } from '../../src/trackers/tracker.js';

export const cpu: Backend = createCpuBackend();
export const reference: Backend = createReferenceBackend();

export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];

/** The same spec allocated on both backends. */
export function twins(spec: LayerStoreSpec): { native: LayerStore; oracle: LayerStore } {
  return { native: cpu.allocate(spec), oracle: reference.allocate(spec) };
}

/** Scores as bits, every NaN as one pattern (NaN sign and payload are not part of the contract). */
function scoreBits(scores: Float32Array): Uint32Array {
  const bits = new Uint32Array(Float32Array.from(scores).buffer);
  scores.forEach((x, i) => {
    if (Number.isNaN(x)) bits[i] = 0x7fc00000;
  });
  return bits;
}

/** Every array of two stores, bit for bit (scores as bits, so -0 and +0 differ; all NaNs are equal). */
export function expectSameStore(native: LayerStore, oracle: LayerStore, what = ''): void {
  expect(native.lengths, `${what} lengths`).toEqual(oracle.lengths);
  expect(native.steps, `${what} steps`).toEqual(oracle.steps);
  expect(Buffer.compare(Buffer.from(native.keys), Buffer.from(oracle.keys)), `${what} keys`).toBe(0);
  expect(Buffer.compare(Buffer.from(native.values), Buffer.from(oracle.values)), `${what} values`).toBe(0);
  expect(native.positions, `${what} positions`).toEqual(oracle.positions);
  expect(scoreBits(native.scores), `${what} scores`).toEqual(scoreBits(oracle.scores));
  expect(native.aux, `${what} aux`).toEqual(oracle.aux);
}

/** Copies every array of `from` into `to` (same spec). */
export function copyStore(from: LayerStore, to: LayerStore): void {
  to.keys.set(from.keys);
  to.values.set(from.values);
  to.positions.set(from.positions);
  to.scores.set(from.scores);
  to.aux.set(from.aux);
  to.lengths.set(from.lengths);
  to.steps.set(from.steps);
}

/** `n` values in `[-scale, scale)` from a seed. */
export function floats(n: number, rng: Rng, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => rng.range(-scale, scale));
}

/** Values as the caller passes them: f32, or bits of the store's 16-bit dtype. */
export function hostArray(values: Float32Array, dtype: DType, bits: boolean): HostArray {
  return bits && dtype !== 'f32' ? Uint16Array.from(values, (x) => encodeElement(dtype, x)) : values;
}

/** A host array's values as numbers. */
export function hostValues(array: HostArray, dtype: DType): number[] {
  return Array.from(array, (x) => (array instanceof Float32Array ? x : decodeElement(dtype, x)));
}

/**
 * Asserts |actual - expected| <= atol + rtol * |expected| element-wise, reporting the worst element.
 */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, rtol: number, atol: number, what = ''): void {
  expect(actual.length, `${what} length`).toBe(expected.length);
  let worst = -1;
  let excess = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const b = expected[i]!;
    const over = Math.abs(a - b) - (atol + rtol * Math.abs(b));
    if (!(over <= excess)) {
      excess = Number.isNaN(over) ? Infinity : over;
      worst = i;
    }
  }
  if (worst >= 0) {
    expect.fail(`${what}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} (rtol ${rtol}, atol ${atol})`);
  }
}

/** One recorded observation: which head, which step, the combined probabilities. */
export interface Seen {
  readonly kvHead: number;
  readonly step: number;
  readonly probs: Float32Array;
}

/** A custom TypeScript tracker that records every observation (and every appended key) it is given. */
export function recorder(gqa: 'mean' | 'max' = 'mean', auxWords = 0): ImportanceTracker & { seen: Seen[]; keys: string[] } {
  const seen: Seen[] = [];
  const keys: string[] = [];
  return {
    name: 'recorder', input: 'attention', scope: 'head', auxWords, gqa, seen, keys,
    onAppend(t) {
      keys.push(`${t.seq}/${t.layer}/${t.kvHead}/${t.index}/${t.position}:${Array.from(t.key).join(',')}`);
      t.scores[t.index] = t.position;
    },
    onObserve(o: Observation) {
      seen.push({ kvHead: o.kvHead, step: o.step, probs: o.probs.slice(0, o.length) });
    },
  };
}

/** The error `fn` throws (fails if it does not). */
export function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return expect.fail('expected an error');
}

/** Asserts that `fn` throws a {@link KvError} (subclass `type`, when given) with `code` naming `argument`. */
export function expectKvError(fn: () => unknown, code: KvErrorCode, argument?: string, type?: new (...args: never[]) => KvError): void {
  const error = caught(fn);
  expect(error, String(error)).toBeInstanceOf(type ?? KvError);
  expect((error as KvError).code, String(error)).toBe(code);
  if (argument !== undefined) expect((error as KvError).argument, String(error)).toBe(argument);
}

export { Rng };
