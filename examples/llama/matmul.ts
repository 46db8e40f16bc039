/**
 * Matrix products for the engine: `y[b][o] = sum_k x[b][k] * W[o][k]` for a batch of rows `x`, with `W`
 * stored row-major `[out][in]` as Hugging Face stores linear weights (so this is `x · Wᵀ`).
 *
 * Everything lives in one `Float32Array` "heap" addressed by element offsets, so that the same call can run
 * on the main thread and, over a `SharedArrayBuffer`, in a worker (see `parallel.ts`). The kernel keeps the
 * JIT monomorphic (always the same array type) and is blocked for the caches:
 *
 * - the outer loop walks the weight rows four at a time, and for those four rows runs over every batch row,
 *   so one pass over the weights serves the whole batch (decoding is bound by reading the weights);
 * - the inner loop is a 4 x 4 register tile: four weight rows against four batch rows, sixteen accumulators,
 *   eight loads for sixteen multiply-adds. Tails (batch or output rows not a multiple of 4) use 1-row tiles.
 *
 * Sums are accumulated in doubles (JavaScript numbers) and rounded to f32 once when stored.
 * @module
 */

/** One product over the heap: rows `[o0, o1)` of `y = x · Wᵀ`. */
export interface MatmulJob {
  /** Offset of `x` (`rows` rows of `n` elements). */
  x: number;
  /** Batch rows. */
  rows: number;
  /** Inner dimension (`in`). */
  n: number;
  /** Offset of `W` (`out` rows of `n` elements). */
  w: number;
  /** Output rows of `W` (the row stride of `y`). */
  out: number;
  /** Offset of `y` (`rows` rows of `out` elements). */
  y: number;
}

/**
 * Computes output columns `[o0, o1)` of `y = x · Wᵀ` (all batch rows). Offsets are element indexes into `h`.
 * @example
 * ```ts
 * const h = new Float32Array(2 * 3 + 4 * 3 + 2 * 4);
 * matmul(h, 0, 2, 3, 6, 4, 18, 0, 4); // y (2x4) at 18 = x (2x3) at 0 times W (4x3) at 6, transposed
 * ```
 */
export function matmul(
  h: Float32Array,
  x: number,
  rows: number,
  n: number,
  w: number,
  out: number,
  y: number,
  o0: number,
  o1: number,
): void {
  const o4 = o0 + ((o1 - o0) & ~3);
  const b4 = rows & ~3;
  for (let o = o0; o < o4; o += 4) {
    const w0 = w + o * n;
    const w1 = w0 + n;
    const w2 = w1 + n;
    const w3 = w2 + n;
    for (let b = 0; b < b4; b += 4) {
      const x0 = x + b * n;
      const x1 = x0 + n;
      const x2 = x1 + n;
      const x3 = x2 + n;
      let a00 = 0, a01 = 0, a02 = 0, a03 = 0;
      let a10 = 0, a11 = 0, a12 = 0, a13 = 0;
      let a20 = 0, a21 = 0, a22 = 0, a23 = 0;
      let a30 = 0, a31 = 0, a32 = 0, a33 = 0;
      for (let k = 0; k < n; k++) {
        const u0 = h[w0 + k]!;
        const u1 = h[w1 + k]!;
        const u2 = h[w2 + k]!;
        const u3 = h[w3 + k]!;
        let p = h[x0 + k]!;
        a00 += p * u0; a01 += p * u1; a02 += p * u2; a03 += p * u3;
        p = h[x1 + k]!;
        a10 += p * u0; a11 += p * u1; a12 += p * u2; a13 += p * u3;
        p = h[x2 + k]!;
        a20 += p * u0; a21 += p * u1; a22 += p * u2; a23 += p * u3;
        p = h[x3 + k]!;
        a30 += p * u0; a31 += p * u1; a32 += p * u2; a33 += p * u3;
      }
      let yo = y + b * out + o;
      h[yo] = a00; h[yo + 1] = a01; h[yo + 2] = a02; h[yo + 3] = a03;
      yo += out;
      h[yo] = a10; h[yo + 1] = a11; h[yo + 2] = a12; h[yo + 3] = a13;
      yo += out;
      h[yo] = a20; h[yo + 1] = a21; h[yo + 2] = a22; h[yo + 3] = a23;
      yo += out;
      h[yo] = a30; h[yo + 1] = a31; h[yo + 2] = a32; h[yo + 3] = a33;
    }
    // Batch tail: one row against the four weight rows.
    for (let b = b4; b < rows; b++) {
      const x0 = x + b * n;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      for (let k = 0; k < n; k++) {
        const p = h[x0 + k]!;
        a0 += p * h[w0 + k]!; a1 += p * h[w1 + k]!; a2 += p * h[w2 + k]!; a3 += p * h[w3 + k]!;
      }
      const yo = y + b * out + o;
      h[yo] = a0; h[yo + 1] = a1; h[yo + 2] = a2; h[yo + 3] = a3;
    }
  }
  // Output tail: one weight row against four batch rows, then one against one.
  for (let o = o4; o < o1; o++) {
    const w0 = w + o * n;
    let b = 0;
    for (; b < b4; b += 4) {
      const x0 = x + b * n;
      const x1 = x0 + n;
      const x2 = x1 + n;
      const x3 = x2 + n;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      for (let k = 0; k < n; k++) {
        const u = h[w0 + k]!;
        a0 += h[x0 + k]! * u; a1 += h[x1 + k]! * u; a2 += h[x2 + k]! * u; a3 += h[x3 + k]! * u;
      }
      const yo = y + b * out + o;
      h[yo] = a0; h[yo + out] = a1; h[yo + 2 * out] = a2; h[yo + 3 * out] = a3;
    }
    for (; b < rows; b++) {
      const x0 = x + b * n;
      let a = 0;
      for (let k = 0; k < n; k++) a += h[x0 + k]! * h[w0 + k]!;
      h[y + b * out + o] = a;
    }
  }
}

/**
 * Runs a whole {@link MatmulJob} on the calling thread.
 * @example
 * ```ts
 * matmulJob(heap, { x: xOff, rows: 8, n: 384, w: wqOff, out: 384, y: qOff });
 * ```
 */
export function matmulJob(h: Float32Array, job: MatmulJob): void {
  matmul(h, job.x, job.rows, job.n, job.w, job.out, job.y, 0, job.out);
}
