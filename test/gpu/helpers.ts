/**
 * Shared helpers of the GPU suite (runs only on a machine with an NVIDIA GPU; excluded from `npm test`).
 * The files are bundled by scripts/device-bundle.sh into plain .mjs files run with `node --test`, so
 * they use node:test and node:assert, not vitest.
 */
import assert from 'node:assert/strict';
import type { Backend, LayerStore, LayerStoreSpec } from '../../src/backend/backend.js';
import { createCpuBackend } from '../../src/backend/cpu.js';
import { type CudaBackend, copyStoreToDevice, copyStoreToHost, createCudaBackend } from '../../src/backend/cuda.js';
import { headBase } from '../../src/backend/host-store.js';
import { type DType, type HostArray, bytesPerElement, decodeElement, encodeElement } from '../../src/core/dtype.js';
import type { ImportanceTracker } from '../../src/trackers/tracker.js';
import { Rng } from '../../src/testing/rng.js';

export const cpu: Backend = createCpuBackend();
export const cuda: CudaBackend = createCudaBackend();
export { Rng, copyStoreToDevice, copyStoreToHost };

/** The same spec on the CPU (the oracle) and on the GPU. */
export function twins(spec: LayerStoreSpec): { host: LayerStore; device: LayerStore } {
  return { host: cpu.allocate(spec), device: cuda.allocate(spec) };
}

export function floats(n: number, rng: Rng, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => rng.range(-scale, scale));
}

export function hostArray(values: Float32Array, dtype: DType, bits: boolean): HostArray {
  return bits && dtype !== 'f32' ? Uint16Array.from(values, (x) => encodeElement(dtype, x)) : values;
}

export function values(array: HostArray, dtype: DType): Float64Array {
  return Float64Array.from(array, (x) => (array instanceof Float32Array ? x : decodeElement(dtype, x)));
}

/** Worst |a - b| - (atol + rtol |b|) over the elements (<= 0 passes), with where it happened. */
export function closeness(actual: ArrayLike<number>, expected: ArrayLike<number>, rtol: number, atol: number): { excess: number; at: number; a: number; b: number } {
  assert.equal(actual.length, expected.length, 'lengths');
  let worst = { excess: -Infinity, at: -1, a: 0, b: 0 };
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const b = expected[i]!;
    const over = Number.isNaN(a) !== Number.isNaN(b) ? Infinity : Number.isNaN(a) ? -1 : Math.abs(a - b) - (atol + rtol * Math.abs(b));
    if (over > worst.excess) worst = { excess: over, at: i, a, b };
  }
  return worst;
}

export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, rtol: number, atol: number, what: string): void {
  const w = closeness(actual, expected, rtol, atol);
  assert.ok(w.excess <= 0, `${what}: element ${w.at} is ${w.a}, expected ${w.b} (rtol ${rtol}, atol ${atol})`);
}

/** Tolerances of attention outputs by dtype (the output is rounded to it). */
export const OUT_TOL: Record<DType, [number, number]> = { f32: [1e-3, 1e-4], f16: [4e-3, 2e-3], bf16: [2e-2, 1.6e-2] };

/** Only the kept slots of every (seq, head) of a store's per-token arrays (dense or per-head layout). */
export function keptSlots(store: LayerStore, each: (base: number, n: number) => void): void {
  for (let s = 0; s < store.maxSequences; s++) {
    for (let h = 0; h < store.kvHeads; h++) each(headBase(store, s * store.kvHeads + h), store.lengths[s * store.kvHeads + h]!);
  }
}

/** Keys, values, positions, lengths and steps bit for bit, over the kept slots (scores and aux by the caller). */
export function expectSameData(device: LayerStore, host: LayerStore, what: string): void {
  assert.deepEqual(Array.from(device.lengths), Array.from(host.lengths), `${what}: lengths`);
  assert.deepEqual(Array.from(device.steps), Array.from(host.steps), `${what}: steps`);
  if (host.heads !== undefined) {
    assert.deepEqual(Array.from(device.heads!.bases), Array.from(host.heads.bases), `${what}: head bases`);
    assert.deepEqual(Array.from(device.heads!.capacities), Array.from(host.heads.capacities), `${what}: head capacities`);
  }
  const row = host.headDim * bytesPerElement(host.dtype);
  keptSlots(host, (base, n) => {
    const a = Buffer.from(device.keys.buffer, base * row, n * row);
    const b = Buffer.from(host.keys.buffer, base * row, n * row);
    assert.equal(Buffer.compare(a, b), 0, `${what}: keys at ${base}`);
    assert.equal(Buffer.compare(Buffer.from(device.values.buffer, base * row, n * row), Buffer.from(host.values.buffer, base * row, n * row)), 0, `${what}: values at ${base}`);
    assert.deepEqual(Array.from(device.positions.subarray(base, base + n)), Array.from(host.positions.subarray(base, base + n)), `${what}: positions at ${base}`);
  });
}

/** Scores bit for bit (NaN as one pattern) and aux words, over the kept slots. */
export function expectSameState(device: LayerStore, host: LayerStore, what: string): void {
  keptSlots(host, (base, n) => {
    for (let j = 0; j < n; j++) {
      const a = device.scores[base + j]!;
      const b = host.scores[base + j]!;
      if (!(Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b)))) assert.fail(`${what}: score of slot ${base + j} is ${a}, expected ${b}`);
    }
    const w = host.auxWords;
    assert.deepEqual(Array.from(device.aux.subarray(base * w, (base + n) * w)), Array.from(host.aux.subarray(base * w, (base + n) * w)), `${what}: aux at ${base}`);
  });
}

/** Attention-fed state within tolerance: h2o/tova scores close, Scissorhands bits rarely flipped; else exact. */
export function expectCloseState(device: LayerStore, host: LayerStore, tracker: ImportanceTracker, what: string): void {
  if (tracker.input !== 'attention') {
    expectSameState(device, host, what);
    return;
  }
  if (tracker.name === 'scissorhands') {
    let bits = 0;
    let flipped = 0;
    keptSlots(host, (base, n) => {
      for (let i = base * host.auxWords; i < (base + n) * host.auxWords; i++) {
        let x = device.aux[i]! ^ host.aux[i]!;
        bits += 32;
        while (x !== 0) {
          flipped += x & 1;
          x >>>= 1;
        }
      }
    });
    assert.ok(flipped <= Math.max(2, bits * 0.002), `${what}: ${flipped} of ${bits} scissorhands bits differ`);
    return;
  }
  keptSlots(host, (base, n) => {
    expectClose(device.scores.subarray(base, base + n), host.scores.subarray(base, base + n), 2e-3, 2e-6, `${what}: scores at ${base}`);
  });
}
