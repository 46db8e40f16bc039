import { afterAll, describe, expect, it } from 'vitest';
import { matmul } from '../../examples/llama/matmul.js';
import { MatmulPool } from '../../examples/llama/parallel.js';
import { sharedMemory, simdKernel, type Kernel } from '../../examples/llama/simd.js';

/** Fills a heap with x (rows x n) at 0 and W (out x n) after it; y goes after W. */
function setup(rows: number, n: number, out: number, seed: number) {
  const memory = sharedMemory(rows * n + out * n + rows * out + 64)!;
  const h = new Float32Array(memory.buffer);
  let s = seed;
  for (let i = 0; i < rows * n + out * n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    h[i] = s / 2 ** 32 - 0.5;
  }
  const w = rows * n;
  const y = w + out * n;
  const expected = new Float64Array(rows * out);
  for (let b = 0; b < rows; b++) {
    for (let o = 0; o < out; o++) {
      let a = 0;
      for (let k = 0; k < n; k++) a += h[b * n + k]! * h[w + o * n + k]!;
      expected[b * out + o] = a;
    }
  }
  return { memory, h, w, y, expected };
}

const shapes: [number, number, number][] = [];
for (const rows of [1, 2, 3, 4, 5, 7, 8, 9]) for (const n of [1, 3, 4, 8, 13, 64]) for (const out of [1, 2, 3, 4, 5, 9]) shapes.push([rows, n, out]);

describe('matrix products', () => {
  const kernels: [string, (m: ReturnType<typeof setup>['memory']) => Kernel][] = [
    ['typescript', () => matmul],
    ['wasm simd', (m) => simdKernel(m)!],
  ];
  it('has WebAssembly SIMD on this runtime', () => expect(simdKernel(sharedMemory(16)!)).toBeDefined());

  it.each(kernels)('%s kernel: y = x Wᵀ for every tile remainder, whole and in row ranges', (_, make) => {
    for (const [rows, n, out] of shapes) {
      const { memory, h, w, y, expected } = setup(rows, n, out, rows * 100 + n * 10 + out);
      const kernel = make(memory);
      kernel(h, 0, rows, n, w, out, y, 0, out);
      for (let i = 0; i < rows * out; i++) expect(Math.abs(h[y + i]! - expected[i]!)).toBeLessThan(1e-5 * Math.max(1, n));
      h.fill(NaN, y, y + rows * out);
      const split = Math.floor(out / 2);
      kernel(h, 0, rows, n, w, out, y, 0, split);
      kernel(h, 0, rows, n, w, out, y, split, out);
      for (let i = 0; i < rows * out; i++) expect(Math.abs(h[y + i]! - expected[i]!)).toBeLessThan(1e-5 * Math.max(1, n));
    }
  });

  const pools: MatmulPool[] = [];
  afterAll(() => pools.forEach((p) => p.close()));
  it.each([['typescript', false], ['wasm simd', true]] as const)('a worker thread (%s) computes its share of the rows', async (_, useSimd) => {
    const { memory, h, w, y, expected } = setup(8, 384, 300, 7);
    const kernel = useSimd ? simdKernel(memory)! : matmul;
    const pool = await MatmulPool.create(h, { kernel, ...(useSimd ? { memory } : {}) });
    pools.push(pool);
    for (let rep = 0; rep < 50; rep++) {
      h.fill(NaN, y, y + 8 * 300);
      pool.run({ x: 0, rows: 8 - (rep % 8), n: 384, w, out: 300, y });
      const rows = 8 - (rep % 8);
      for (let i = 0; i < rows * 300; i++) expect(Math.abs(h[y + i]! - expected[i]!)).toBeLessThan(1e-3);
    }
    pool.close();
    expect(() => pool.run({ x: 0, rows: 1, n: 384, w, out: 300, y })).toThrow(/closed/);
  });
});
