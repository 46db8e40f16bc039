/**
 * Probability rows of the shapes attention produces: uniform, peaked, near-uniform, with exact ties,
 * sparse, one-hot and plain random. Shared by {@link attentionRowArb} and the generated `observe`
 * operations (which only learn the row length when they run).
 * @module
 */
import type { Rng } from './rng.js';

/**
 * The shapes of probability rows the testing kit generates.
 * - `uniform`: every entry `f32(1/n)` (all tied, each exactly at Scissorhands' threshold as f32 gives it).
 * - `nearUniform`: `1/n` with relative jitter around `1e-6`, on both sides of the threshold.
 * - `peaked`: one entry takes almost everything, the others tiny.
 * - `oneHot`: one entry 1, the others 0.
 * - `ties`: two or three distinct values shared by many entries (exact ties).
 * - `sparse`: about half the entries 0, the rest random.
 * - `random`: normalised exponential draws (a flat Dirichlet).
 * @example
 * ```ts
 * const kind: AttentionRowKind = 'ties';
 * ```
 */
export type AttentionRowKind = 'uniform' | 'nearUniform' | 'peaked' | 'oneHot' | 'ties' | 'sparse' | 'random';

/**
 * Every {@link AttentionRowKind}, in a fixed order.
 * @example
 * ```ts
 * fc.constantFrom(...ATTENTION_ROW_KINDS);
 * ```
 */
export const ATTENTION_ROW_KINDS: readonly AttentionRowKind[] = ['uniform', 'nearUniform', 'peaked', 'oneHot', 'ties', 'sparse', 'random'];

/**
 * A probability row of length `n` (non-negative f32 entries whose sum is 1 up to f32 rounding).
 * @example
 * ```ts
 * const row = makeAttentionRow(new Rng(7), 16, 'peaked');
 * ```
 */
export function makeAttentionRow(rng: Rng, n: number, kind: AttentionRowKind): Float32Array {
  const row = new Float32Array(n);
  if (n === 0) return row;
  const weights = new Float64Array(n);
  switch (kind) {
    case 'uniform':
      row.fill(1 / n);
      return row;
    case 'oneHot':
      row[rng.int(n)] = 1;
      return row;
    case 'nearUniform':
      for (let j = 0; j < n; j++) weights[j] = 1 + (rng.float() - 0.5) * 4e-6;
      break;
    case 'peaked': {
      const top = rng.int(n);
      for (let j = 0; j < n; j++) weights[j] = j === top ? 1 : rng.float() * 1e-3;
      break;
    }
    case 'ties': {
      const levels = [rng.float() + 0.01, rng.float() + 0.01, rng.float() + 0.01];
      const used = 2 + rng.int(2);
      for (let j = 0; j < n; j++) weights[j] = levels[rng.int(used)]!;
      break;
    }
    case 'sparse':
      for (let j = 0; j < n; j++) weights[j] = rng.float() < 0.5 ? 0 : rng.float() + 1e-3;
      if (weights.every((w) => w === 0)) weights[rng.int(n)] = 1;
      break;
    case 'random':
      for (let j = 0; j < n; j++) weights[j] = -Math.log(1 - rng.float());
      if (weights.every((w) => w === 0)) weights.fill(1);
      break;
  }
  let sum = 0;
  for (let j = 0; j < n; j++) sum += weights[j]!;
  for (let j = 0; j < n; j++) row[j] = weights[j]! / sum;
  return row;
}
