/**
 * Shared settings of the property tests.
 *
 * Runs: every property has a small default `numRuns` so that the whole property suite stays well under
 * two minutes on two cores. `SCISSORHANDS_PROPERTY_RUNS=<n>` multiplies every default by `n / 10`
 * (so `SCISSORHANDS_PROPERTY_RUNS=100` gives ten times the default runs) for long runs; past about 300
 * the slowest prompt tests need more than vitest's 120 s a test (146-161 s at 1000 under load), so add
 * `--testTimeout`. fast-check prints the seed and replay path of any failure; replay it with
 * `SCISSORHANDS_PROPERTY_SEED=<seed>`.
 */
import type { BackendName } from '../../src/index.js';
import { backendInfo } from '../../src/index.js';

const scale = (() => {
  const raw = process.env['SCISSORHANDS_PROPERTY_RUNS'];
  if (raw === undefined || raw === '') return 1;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`SCISSORHANDS_PROPERTY_RUNS must be a positive number, got ${raw}`);
  return n / 10;
})();

/** The number of runs of a property: `base`, scaled by `SCISSORHANDS_PROPERTY_RUNS`. */
export function runs(base: number): number {
  return Math.max(1, Math.round(base * scale));
}

/** The seed to replay, from `SCISSORHANDS_PROPERTY_SEED`. */
export const seed: { seed?: number } = (() => {
  const raw = process.env['SCISSORHANDS_PROPERTY_SEED'];
  return raw === undefined || raw === '' ? {} : { seed: Number(raw) };
})();

/** Whether the native CPU addon loads here. */
export const CPU_AVAILABLE = backendInfo().cpu.available;

/** The backends to test: the reference always, the native CPU backend when it loads. */
export const BACKENDS: readonly BackendName[] = CPU_AVAILABLE ? ['reference', 'cpu'] : ['reference'];
