/**
 * The {@link attentionRowArb} arbitrary.
 * @module
 */
import * as fc from 'fast-check';
import { ATTENTION_ROW_KINDS, type AttentionRowKind, makeAttentionRow } from './attention-row.js';
import { Rng } from './rng.js';

/**
 * Constraints of {@link attentionRowArb}.
 * @example
 * ```ts
 * const c: AttentionRowConstraints = { kinds: ['uniform', 'ties'] };
 * ```
 */
export interface AttentionRowConstraints {
  /** Row shapes to draw from; default all of {@link ATTENTION_ROW_KINDS}. */
  readonly kinds?: readonly AttentionRowKind[];
}

/**
 * Valid attention probability rows of length `n`: non-negative finite f32 entries summing to 1 within
 * f32 rounding. Draws uniform rows (exact ties at `1/n`), near-uniform rows (entries within about
 * `1e-6` of `1/n`, on both sides of Scissorhands' threshold), peaked and one-hot rows, rows made of two
 * or three tied levels, sparse rows with exact zeros, and random rows. Rows are built from a seed, so
 * they shrink towards simpler seeds and print compactly.
 *
 * @example
 * ```ts
 * import fc from 'fast-check';
 * import { attentionRowArb } from 'scissorhands/testing';
 * fc.assert(fc.property(attentionRowArb(8), (row) => Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-5));
 * ```
 */
export function attentionRowArb(n: number, constraints: AttentionRowConstraints = {}): fc.Arbitrary<Float32Array> {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`attentionRowArb: expected a non-negative integer length, got ${String(n)}`);
  const kinds = constraints.kinds ?? ATTENTION_ROW_KINDS;
  if (kinds.length === 0) throw new RangeError('attentionRowArb: expected at least one row kind');
  return fc
    .tuple(fc.constantFrom(...kinds), fc.integer({ min: 0, max: 0xffffffff }))
    .map(([kind, seed]) => makeAttentionRow(new Rng(seed), n, kind));
}
