/**
 * Matrix products for the engine: `y[b][o] = sum_k x[b][k] * W[o][k]` for a batch of rows `x`, with `W`
 * stored row-major `[out][in]` as Hugging Face stores linear weights (so this is `x · Wᵀ`).
 *
 * Everything lives in one `Float32Array` "heap" addressed by element offsets, so that the same call can run
 * on the main thread and, over a `SharedArrayBuffer`, in a worker (see `parallel.ts`). The kernel keeps the
 * JIT monomorphic (always the same array type) and is blocked for the caches:
 *
 * - the inner loop is a 4 x 4 register tile: four weight rows against four batch rows, sixteen accumulators,
 *   eight loads for sixteen multiply-adds (a plain dot product needs two loads per multiply-add);
 * - each group of four batch rows makes one pass over the weight rows; the whole batch is held in L1/L2
 *   while the weights stream past (a 4-row pass needs one byte of weights per multiply-add, far below
 *   what the caches deliver, so more passes cost little and a larger tile would only spill registers);
 * - batch remainders use 2 x 4 and 1 x 4 tiles, output remainders single rows.
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
 * Batch rows go four at a time through a 4 x 4 tile, then two, then one: each tile is its own function so
 * the JIT optimises each one for its own loop (one function with every case in it deoptimises as the
 * batch size changes). Every tile reads the weight rows `[o0, o1)` once.
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
  let b = 0;
  for (; b + 4 <= rows; b += 4) tile4(h, x + b * n, n, w, out, y + b * out, o0, o1);
  if (b + 2 <= rows) {
    tile2(h, x + b * n, n, w, out, y + b * out, o0, o1);
    b += 2;
  }
  if (b < rows) tile1(h, x + b * n, n, w, out, y + b * out, o0, o1);
}

/** Four batch rows: 4 x 4 register tiles (16 accumulators, 8 loads per 16 multiply-adds). */
function tile4(h: Float32Array, x: number, n: number, w: number, out: number, y: number, o0: number, o1: number): void {
  const x1 = x + n;
  const x2 = x1 + n;
  const x3 = x2 + n;
  const o4 = o0 + ((o1 - o0) & ~3);
  for (let o = o0; o < o4; o += 4) {
    const w0 = w + o * n;
    const w1 = w0 + n;
    const w2 = w1 + n;
    const w3 = w2 + n;
    let a00 = 0, a01 = 0, a02 = 0, a03 = 0;
    let a10 = 0, a11 = 0, a12 = 0, a13 = 0;
    let a20 = 0, a21 = 0, a22 = 0, a23 = 0;
    let a30 = 0, a31 = 0, a32 = 0, a33 = 0;
    for (let k = 0; k < n; k++) {
      const u0 = h[w0 + k]!;
      const u1 = h[w1 + k]!;
      const u2 = h[w2 + k]!;
      const u3 = h[w3 + k]!;
      let p = h[x + k]!;
      a00 += p * u0; a01 += p * u1; a02 += p * u2; a03 += p * u3;
      p = h[x1 + k]!;
      a10 += p * u0; a11 += p * u1; a12 += p * u2; a13 += p * u3;
      p = h[x2 + k]!;
      a20 += p * u0; a21 += p * u1; a22 += p * u2; a23 += p * u3;
      p = h[x3 + k]!;
      a30 += p * u0; a31 += p * u1; a32 += p * u2; a33 += p * u3;
    }
    let yo = y + o;
    h[yo] = a00; h[yo + 1] = a01; h[yo + 2] = a02; h[yo + 3] = a03;
    yo += out;
    h[yo] = a10; h[yo + 1] = a11; h[yo + 2] = a12; h[yo + 3] = a13;
    yo += out;
    h[yo] = a20; h[yo + 1] = a21; h[yo + 2] = a22; h[yo + 3] = a23;
    yo += out;
    h[yo] = a30; h[yo + 1] = a31; h[yo + 2] = a32; h[yo + 3] = a33;
  }
  for (let o = o4; o < o1; o++) {
    const w0 = w + o * n;
    let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (let k = 0; k < n; k++) {
      const u = h[w0 + k]!;
      a0 += h[x + k]! * u; a1 += h[x1 + k]! * u; a2 += h[x2 + k]! * u; a3 += h[x3 + k]! * u;
    }
    h[y + o] = a0; h[y + out + o] = a1; h[y + 2 * out + o] = a2; h[y + 3 * out + o] = a3;
  }
}

/** Two batch rows: 2 x 4 tiles. */
function tile2(h: Float32Array, x: number, n: number, w: number, out: number, y: number, o0: number, o1: number): void {
  const x1 = x + n;
  const o4 = o0 + ((o1 - o0) & ~3);
  for (let o = o0; o < o4; o += 4) {
    const w0 = w + o * n;
    const w1 = w0 + n;
    const w2 = w1 + n;
    const w3 = w2 + n;
    let a00 = 0, a01 = 0, a02 = 0, a03 = 0;
    let a10 = 0, a11 = 0, a12 = 0, a13 = 0;
    for (let k = 0; k < n; k++) {
      const p = h[x + k]!;
      const q = h[x1 + k]!;
      let u = h[w0 + k]!;
      a00 += p * u; a10 += q * u;
      u = h[w1 + k]!;
      a01 += p * u; a11 += q * u;
      u = h[w2 + k]!;
      a02 += p * u; a12 += q * u;
      u = h[w3 + k]!;
      a03 += p * u; a13 += q * u;
    }
    const yo = y + o;
    h[yo] = a00; h[yo + 1] = a01; h[yo + 2] = a02; h[yo + 3] = a03;
    h[yo + out] = a10; h[yo + out + 1] = a11; h[yo + out + 2] = a12; h[yo + out + 3] = a13;
  }
  for (let o = o4; o < o1; o++) {
    const w0 = w + o * n;
    let a0 = 0, a1 = 0;
    for (let k = 0; k < n; k++) {
      const u = h[w0 + k]!;
      a0 += h[x + k]! * u; a1 += h[x1 + k]! * u;
    }
    h[y + o] = a0; h[y + out + o] = a1;
  }
}

/** One batch row (a matrix-vector product): 1 x 4 tiles. */
function tile1(h: Float32Array, x: number, n: number, w: number, out: number, y: number, o0: number, o1: number): void {
  const o4 = o0 + ((o1 - o0) & ~3);
  for (let o = o0; o < o4; o += 4) {
    const w0 = w + o * n;
    const w1 = w0 + n;
    const w2 = w1 + n;
    const w3 = w2 + n;
    let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (let k = 0; k < n; k++) {
      const p = h[x + k]!;
      a0 += p * h[w0 + k]!; a1 += p * h[w1 + k]!; a2 += p * h[w2 + k]!; a3 += p * h[w3 + k]!;
    }
    h[y + o] = a0; h[y + o + 1] = a1; h[y + o + 2] = a2; h[y + o + 3] = a3;
  }
  for (let o = o4; o < o1; o++) {
    const w0 = w + o * n;
    let a = 0;
    for (let k = 0; k < n; k++) a += h[x + k]! * h[w0 + k]!;
    h[y + o] = a;
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
