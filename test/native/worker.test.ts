/**
 * The addon is context-aware: worker threads load it side by side, each with its own state (error
 * factory, scratch, helper thread), and tear it down cleanly when they exit.
 */
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { nativeStatus } from '../../src/native/loader.js';
import { Rng, cpu, expectClose, floats, recorder, reference } from './helpers.js';

/** The worker: loads the addon by path, runs one big decode (split over its helper thread), reports. */
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const binding = require(workerData.path);
const { kvHeads, headDim, length, queryHeads, k, q } = workerData;
const tokens = kvHeads * length;
const store = {
  layer: 0, dtype: 'f32', maxSequences: 1, kvHeads, headDim, capacity: length, auxWords: 0,
  keys: new Uint8Array(tokens * headDim * 4), values: new Uint8Array(tokens * headDim * 4),
  positions: new Int32Array(tokens), scores: new Float32Array(tokens), aux: new Uint32Array(0),
  lengths: new Int32Array(kvHeads), steps: new Float64Array(1),
};
const tracker = { kind: 0, window: 0, seed: 0, gqa: 'mean', observes: true };
binding.append(store, 0, k, k, length, 0, tracker, null);
const out = new Float32Array(queryHeads * headDim);
const probs = new Float32Array(kvHeads * length);
binding.decode(store, 0, q, out, queryHeads, 0.1, tracker, probs);
let error;
try {
  binding.evict(store, 5, 0, 0, 0, 'head');
} catch (e) {
  error = { name: e.name, code: e.code, argument: e.argument };
}
parentPort.postMessage({ info: binding.info(), out, probs, error });
`;

const packageVersion = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

interface Report {
  info: { simd: string; version: string };
  out: Float32Array;
  probs: Float32Array;
  error: { name: string; code: string; argument: string };
}

function runWorker(data: Record<string, unknown>): Promise<{ report: Report; exitCode: number }> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(WORKER, { eval: true, workerData: { path: nativeStatus().path, ...data } });
    let report: Report | undefined;
    worker.on('message', (m: Report) => (report = m));
    worker.on('error', reject);
    worker.on('exit', (exitCode) => (report === undefined ? reject(new Error(`worker exited ${exitCode} without a report`)) : resolve({ report, exitCode })));
  });
}

describe('worker threads', () => {
  const kvHeads = 4;
  const headDim = 128;
  const length = 1100;
  const queryHeads = 8;
  const rng = new Rng(21);
  const k = floats(length * kvHeads * headDim, rng);
  const q = floats(queryHeads * headDim, rng);
  const data = { kvHeads, headDim, length, queryHeads, k, q };

  /** The reference answer for the same cache and query. */
  function expected(): { out: Float32Array; probs: Float32Array } {
    const store = reference.allocate({ layer: 0, dtype: 'f32', maxSequences: 1, kvHeads, headDim, capacity: length, auxWords: 0 });
    const rec = recorder();
    reference.append(store, 0, k, k, length, 0, rec);
    const out = new Float32Array(queryHeads * headDim);
    reference.decode(store, 0, q, out, { queryHeads, scale: 0.1 }, rec);
    const probs = new Float32Array(kvHeads * length);
    rec.seen.forEach((s) => probs.set(s.probs, s.kvHead * length));
    return { out, probs };
  }

  afterEach(() => {
    delete process.env['SCISSORHANDS_SIMD'];
  });

  it('two workers load the addon at once, compute what the main thread computes, and exit cleanly', async () => {
    const [a, b] = await Promise.all([runWorker(data), runWorker(data)]);
    const store = cpu.allocate({ layer: 0, dtype: 'f32', maxSequences: 1, kvHeads, headDim, capacity: length, auxWords: 0 });
    const rec = recorder();
    cpu.append(store, 0, k, k, length, 0, rec);
    const out = new Float32Array(queryHeads * headDim);
    cpu.decode(store, 0, q, out, { queryHeads, scale: 0.1 }, rec);
    for (const { report, exitCode } of [a, b]) {
      expect(exitCode).toBe(0);
      expect(report.out).toEqual(out);
      expect(report.info.version).toBe(packageVersion);
      // Each environment has its own error factory: none was set in the worker, so errors are plain
      // Errors that still carry the stable code and argument.
      expect(report.error).toEqual({ name: 'Error', code: 'KV_ARGUMENT', argument: 'seq' });
    }
    const want = expected();
    expectClose(a.report.out, want.out, 1e-4, 2e-5, 'worker out');
    expectClose(a.report.probs, want.probs, 1e-4, 1e-6, 'worker probs');
  });

  it('the portable kernels (SCISSORHANDS_SIMD=scalar, read when an environment loads the addon) agree too', async () => {
    process.env['SCISSORHANDS_SIMD'] = 'scalar';
    const { report, exitCode } = await runWorker(data);
    expect(exitCode).toBe(0);
    expect(report.info.simd).toBe('scalar');
    const want = expected();
    expectClose(report.out, want.out, 1e-4, 2e-5, 'scalar out');
    expectClose(report.probs, want.probs, 1e-4, 1e-6, 'scalar probs');
  });
});
