/**
 * Full-precision attention, the yardstick every backend's output is held to.
 * @module
 */

/**
 * The result of {@link referenceAttention} for one query head.
 * @example
 * ```ts
 * const { out, probs } = referenceAttention(q, keys, values, 3, 8, 0.35);
 * ```
 */
export interface ReferenceAttention {
  /** `headDim` outputs. */
  readonly out: Float64Array;
  /** `length` probabilities. */
  readonly probs: Float64Array;
  /** Largest `sum_i |scale * q_i * k_i|` over the keys: how large the rounding of a logit can be. */
  readonly logitMagnitude: number;
  /** Largest `|v|` element over the values. */
  readonly valueMagnitude: number;
}

/**
 * Softmax attention of one query over `length` keys and values, in f64 with max-subtraction:
 * `p_j = exp(s_j - max s) / sum exp(s - max s)` with `s_j = scale * q . k_j`, `out = sum p_j v_j`.
 * `keys` and `values` are `[length][headDim]` (already decoded to numbers); `q` is `headDim` numbers,
 * read from `qOffset`.
 *
 * @example
 * ```ts
 * import { referenceAttention } from 'scissorhands/testing';
 * const { out } = referenceAttention([1, 0], [1, 0, 0, 1], [1, 2, 3, 4], 2, 2, 1);
 * ```
 */
export function referenceAttention(
  q: ArrayLike<number>, keys: ArrayLike<number>, values: ArrayLike<number>, length: number, headDim: number,
  scale: number, qOffset = 0,
): ReferenceAttention {
  const logits = new Float64Array(length);
  let max = -Infinity;
  let logitMagnitude = 0;
  let valueMagnitude = 0;
  for (let j = 0; j < length; j++) {
    let dot = 0;
    let magnitude = 0;
    for (let i = 0; i < headDim; i++) {
      const term = q[qOffset + i]! * keys[j * headDim + i]!;
      dot += term;
      magnitude += Math.abs(term);
      valueMagnitude = Math.max(valueMagnitude, Math.abs(values[j * headDim + i]!));
    }
    logits[j] = scale * dot;
    logitMagnitude = Math.max(logitMagnitude, scale * magnitude);
    if (logits[j]! > max) max = logits[j]!;
  }
  const probs = new Float64Array(length);
  let sum = 0;
  for (let j = 0; j < length; j++) {
    probs[j] = Math.exp(logits[j]! - max);
    sum += probs[j]!;
  }
  const out = new Float64Array(headDim);
  for (let j = 0; j < length; j++) {
    probs[j]! /= sum;
    for (let i = 0; i < headDim; i++) out[i]! += probs[j]! * values[j * headDim + i]!;
  }
  return { out, probs, logitMagnitude, valueMagnitude };
}

/**
 * The tolerance an f32 kernel's output may differ from {@link referenceAttention} by: a few f32 ulps of
 * each logit's rounding (which grows with the head size and the logits' size), spread over the values,
 * plus the rounding of the output itself to its stored type (`f32`, or `f16`/`bf16` bits).
 * @example
 * ```ts
 * const tol = attentionTolerance(ref, 64, 'f32');
 * expect(Math.abs(out[i] - ref.out[i])).toBeLessThanOrEqual(tol(ref.out[i]));
 * ```
 */
export function attentionTolerance(
  reference: ReferenceAttention, headDim: number, output: 'f32' | 'f16' | 'bf16',
): (expected: number) => number {
  const eps32 = 2 ** -23;
  const logitError = eps32 * (4 * headDim + 8) * (reference.logitMagnitude + 1);
  // exp and the division may be a few ulps off in a vectorised kernel (2e-6 covers polynomial exps);
  // summing `p_j v_j` in f32 adds about one ulp per term.
  const terms = reference.probs.length + 16;
  const absolute = (4 * logitError + 2e-6 + terms * eps32) * reference.valueMagnitude + 1e-30;
  const relative = output === 'f32' ? 4 * eps32 : output === 'f16' ? 2 ** -10 : 2 ** -7;
  const floor = output === 'f16' ? 2 ** -24 : output === 'bf16' ? 2 ** -126 : 0;
  return (expected) => absolute * (1 + relative) + relative * Math.abs(expected) + floor;
}
