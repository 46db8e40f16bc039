/**
 * The addon is context-aware: worker threads load it side by side, each with its own state (error
 * factory, scratch, helper thread), and tear it down cleanly when they exit. Workers are also how the
 * other kernel paths get tested on one machine: SCISSORHANDS_SIMD is read when an environment loads
 * the addon.
 */
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import type { DType } from '../../src/core/dtype.js';
import { nativeStatus } from '../../src/native/loader.js';
import { Rng, expectClose, floats, hostArray, hostValues, recorder, reference } from './helpers.js';

const packageVersion = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** One cache and one prefill: the worker runs it natively, the test runs the reference. */
interface Case {
  readonly dtype: DType;
  readonly kvHeads: number;
  readonly group: number;
  readonly headDim: number;
  readonly length: number;
  readonly rows: number;
  readonly k: Float32Array | Uint16Array;
  readonly q: Float32Array | Uint16Array;
}

/** The worker: loads the addon by path, runs every case's prefill (probabilities handed back), reports. */
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const binding = require(workerData.path);
const tracker = { kind: 0, window: 0, seed: 0, gqa: 'mean', observes: true };
const results = workerData.cases.map(({ dtype, kvHeads, group, headDim, length, rows, k, q }) => {
  const tokens = kvHeads * length;
  const bytes = dtype === 'f32' ? 4 : 2;
  const store = {
    layer: 0, dtype, maxSequences: 1, kvHeads, headDim, capacity: length, auxWords: 0,
    keys: new Uint8Array(tokens * headDim * bytes), values: new Uint8Array(tokens * headDim * bytes),
    positions: new Int32Array(tokens), scores: new Float32Array(tokens), aux: new Uint32Array(0),
    lengths: new Int32Array(kvHeads), steps: new Float64Array(1),
  };
  binding.append(store, 0, k, k, length, 0, tracker, null);
  const out = new q.constructor(q.length);
  const probs = new Float32Array(rows * kvHeads * length);
  binding.prefill(store, 0, q, rows, out, kvHeads * group, 0.3, tracker, 0, rows, probs);
  return { out, probs };
});
let error;
try {
  binding.evict({}, 0, 0, 0, 0, 'head');
} catch (e) {
  error = { name: e.name, code: e.code, argument: e.argument };
}
parentPort.postMessage({ info: binding.info(), results, error });
`;

interface Report {
  info: { simd: string; version: string };
  results: { out: Float32Array | Uint16Array; probs: Float32Array }[];
  error: { name: string; code: string; argument: string };
}

function runWorker(cases: Case[]): Promise<{ report: Report; exitCode: number }> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(WORKER, { eval: true, workerData: { path: nativeStatus().path, cases } });
    let report: Report | undefined;
    worker.on('message', (m: Report) => (report = m));
    worker.on('error', reject);
    worker.on('exit', (exitCode) => (report === undefined ? reject(new Error(`worker exited ${exitCode} without a report`)) : resolve({ report, exitCode })));
  });
}

function makeCase(dtype: DType, kvHeads: number, group: number, headDim: number, length: number, rows: number, seed: number): Case {
  const rng = new Rng(seed);
  const bits = dtype !== 'f32';
  return {
    dtype, kvHeads, group, headDim, length, rows,
    k: hostArray(floats(length * kvHeads * headDim, rng), dtype, bits),
    q: hostArray(floats(rows * kvHeads * group * headDim, rng), dtype, bits),
  };
}

/** Odd and even head sizes (a half vector at the end for AVX-512), groups of 1 to 8, every dtype. */
const CASES: Case[] = [
  makeCase('f32', 2, 3, 24, 40, 5, 1),
  makeCase('f16', 2, 4, 128, 70, 3, 2),
  makeCase('bf16', 1, 2, 5, 33, 4, 3),
  makeCase('f16', 3, 1, 200, 50, 2, 4),
  makeCase('bf16', 2, 8, 64, 45, 2, 5),
  // Big enough to be split over the helper thread.
  makeCase('f32', 4, 2, 128, 1100, 1, 6),
];

/** The reference's outputs and probabilities for a case, in the worker's layout. */
function expected(c: Case): { out: number[]; probs: Float32Array } {
  const store = reference.allocate({ layer: 0, dtype: c.dtype, maxSequences: 1, kvHeads: c.kvHeads, headDim: c.headDim, capacity: c.length, auxWords: 0 });
  const rec = recorder();
  reference.append(store, 0, c.k, c.k, c.length, 0, rec);
  const out = c.q instanceof Float32Array ? new Float32Array(c.q.length) : new Uint16Array(c.q.length);
  reference.prefill(store, 0, c.q, c.rows, out, { queryHeads: c.kvHeads * c.group, scale: 0.3 }, rec);
  const probs = new Float32Array(c.rows * c.kvHeads * c.length);
  rec.seen.forEach((s, i) => probs.set(s.probs, i * c.length));
  return { out: hostValues(out, c.dtype), probs };
}

function expectAgrees(report: Report): void {
  CASES.forEach((c, i) => {
    const want = expected(c);
    const rtol = c.dtype === 'f32' ? 1e-4 : c.dtype === 'f16' ? 2 ** -9 : 2 ** -7;
    expectClose(hostValues(report.results[i]!.out, c.dtype), want.out, rtol, 2e-5, `${report.info.simd} case ${i} out`);
    expectClose(report.results[i]!.probs, want.probs, 1e-4, 1e-6, `${report.info.simd} case ${i} probs`);
  });
}

describe('worker threads', () => {
  afterEach(() => {
    delete process.env['SCISSORHANDS_SIMD'];
  });

  it('two workers load the addon at once, agree with the reference, and exit cleanly', async () => {
    const runs = await Promise.all([runWorker(CASES), runWorker(CASES)]);
    for (const { report, exitCode } of runs) {
      expect(exitCode).toBe(0);
      expect(report.info.version).toBe(packageVersion);
      // Each environment has its own error factory: none was set in the worker, so errors are plain
      // Errors that still carry the stable code and argument.
      expect(report.error).toEqual({ name: 'Error', code: 'KV_DTYPE', argument: 'store.dtype' });
    }
    expect(runs[1]!.report.results).toEqual(runs[0]!.report.results);
    expectAgrees(runs[0]!.report);
  });

  it.each(['avx2', 'scalar'])('the kernels capped at %s agree with the reference too', async (cap) => {
    process.env['SCISSORHANDS_SIMD'] = cap;
    const { report, exitCode } = await runWorker(CASES);
    expect(exitCode).toBe(0);
    // A machine without AVX2 runs the portable kernels whatever the cap.
    expect(cap === 'scalar' ? ['scalar'] : ['avx2', 'scalar']).toContain(report.info.simd);
    expectAgrees(report);
  });
});
