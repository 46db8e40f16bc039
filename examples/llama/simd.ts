/**
 * The same product as `matmul.ts`, as a WebAssembly SIMD kernel (4 f32 lanes) that this file assembles at
 * run time: no toolchain, no binary blob. JavaScript has no SIMD, and on this kind of CPU plain typed-array
 * loops top out near one multiply-add per cycle; 128-bit lanes do four.
 *
 * The module imports the engine's heap as a shared `SharedMemory` (whose buffer is a
 * `SharedArrayBuffer`, so the worker thread instantiates the same module over the same memory) and exports
 * register-tiled kernels: `t42` (4 batch rows x 2 weight rows: 8 vector accumulators), `t41`, `t14`, `t11`.
 * Each walks the inner dimension 4 elements at a time, so it needs `n % 4 === 0`; other shapes use the
 * JavaScript kernel. Lanes are summed at the end, so rounding differs from `matmul.ts` in the last bits.
 * @module
 */
import { matmul } from './matmul.js';

/** A product kernel with the signature of {@link matmul}. */
export type Kernel = typeof matmul;

/** A shared `SharedMemory` (typed here: the project's tsconfig has no DOM lib, which declares it). */
export interface SharedMemory {
  readonly buffer: SharedArrayBuffer;
}

/** The few WebAssembly constructors this file uses. */
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
  Memory: new (descriptor: { initial: number; maximum: number; shared: boolean }) => SharedMemory;
}
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

// A few WebAssembly opcodes (https://webassembly.github.io/spec/core/binary/instructions.html).
const I32 = 0x7f;
const V128 = 0x7b;
const op = {
  block: 0x02, loop: 0x03, br: 0x0c, brIf: 0x0d, end: 0x0b, get: 0x20, set: 0x21, tee: 0x22,
  i32Const: 0x41, i32GeU: 0x4f, i32Add: 0x6a, i32Mul: 0x6c, i32Shl: 0x74, f32Add: 0x92, f32Store: 0x38,
} as const;
const simd = (code: number): number[] => [0xfd, ...uleb(code)];
const V128_LOAD = 0;
const F32X4_SPLAT = 19;
const F32X4_EXTRACT = 31;
const F32X4_ADD = 228;
const F32X4_MUL = 230;

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) return [...out, byte];
    out.push(byte | 0x80);
  }
}

const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];
const name = (s: string): number[] => [...uleb(s.length), ...Buffer.from(s, 'utf8')];

/**
 * One tile kernel `(x, n, w, out, y, o0, o1)` (element offsets): for `o` in `[o0, o1)` by steps of `O`,
 * `y[r][o + j] = x[r] · W[o + j]` for `r < R`, `j < O`. `o1 - o0` must be a multiple of `O`.
 */
function tileBody(R: number, O: number): number[] {
  // Parameters 0..6: x, n, w, out, y, o0, o1. Locals: i32 scratch, then v128 ones.
  const [X, N, W, OUT, Y, O0, O1] = [0, 1, 2, 3, 4, 5, 6];
  let next = 7;
  const nb = next++; // n * 4: bytes per row
  const k = next++; // byte offset along the row
  const o = O0; // reuse o0 as the loop counter
  const xa = Array.from({ length: R }, () => next++); // byte address of x row r
  const ya = Array.from({ length: R }, () => next++); // byte address of y row r
  const wa = Array.from({ length: O }, () => next++); // byte address of weight row o + j
  const i32Locals = next - 7;
  const xv = next++;
  const wv = Array.from({ length: O }, () => next++);
  const acc = Array.from({ length: R * O }, () => next++);
  const v128Locals = next - 7 - i32Locals;

  const c: number[] = [];
  const get = (l: number) => c.push(op.get, ...uleb(l));
  const set = (l: number) => c.push(op.set, ...uleb(l));
  const i32 = (v: number) => c.push(op.i32Const, ...sleb(v));
  // nb = n << 2; xa[r] = (x + r n) << 2; ya[r] = (y + r out) << 2
  get(N); i32(2); c.push(op.i32Shl); set(nb);
  for (let r = 0; r < R; r++) {
    get(X); get(N); i32(r); c.push(op.i32Mul, op.i32Add); i32(2); c.push(op.i32Shl); set(xa[r]!);
    get(Y); get(OUT); i32(r); c.push(op.i32Mul, op.i32Add); i32(2); c.push(op.i32Shl); set(ya[r]!);
  }
  c.push(op.block, 0x40, op.loop, 0x40);
  get(o); get(O1); c.push(op.i32GeU, op.brIf, 1);
  // wa[j] = ((w + o n) << 2) + j nb
  get(W); get(o); get(N); c.push(op.i32Mul, op.i32Add); i32(2); c.push(op.i32Shl); set(wa[0]!);
  for (let j = 1; j < O; j++) {
    get(wa[j - 1]!); get(nb); c.push(op.i32Add); set(wa[j]!);
  }
  for (const a of acc) {
    c.push(0x43, 0, 0, 0, 0, ...simd(F32X4_SPLAT)); // f32.const 0; f32x4.splat
    set(a);
  }
  i32(0); set(k);
  c.push(op.block, 0x40, op.loop, 0x40);
  get(k); get(nb); c.push(op.i32GeU, op.brIf, 1);
  for (let j = 0; j < O; j++) {
    get(wa[j]!); get(k); c.push(op.i32Add, ...simd(V128_LOAD), 0, 0); set(wv[j]!);
  }
  for (let r = 0; r < R; r++) {
    get(xa[r]!); get(k); c.push(op.i32Add, ...simd(V128_LOAD), 0, 0); set(xv);
    for (let j = 0; j < O; j++) {
      const a = acc[r * O + j]!;
      get(a); get(xv); get(wv[j]!); c.push(...simd(F32X4_MUL), ...simd(F32X4_ADD)); set(a);
    }
  }
  get(k); i32(16); c.push(op.i32Add); set(k);
  c.push(op.br, 0, op.end, op.end);
  // y[r][o + j] = sum of the lanes of acc[r][j]
  for (let r = 0; r < R; r++) {
    for (let j = 0; j < O; j++) {
      const a = acc[r * O + j]!;
      get(ya[r]!); get(o); i32(2); c.push(op.i32Shl, op.i32Add);
      get(a); c.push(...simd(F32X4_EXTRACT), 0);
      for (let lane = 1; lane < 4; lane++) {
        get(a); c.push(...simd(F32X4_EXTRACT), lane, op.f32Add);
      }
      c.push(op.f32Store, 2, ...uleb(4 * j)); // align 4 bytes, offset 4 j
    }
  }
  get(o); i32(O); c.push(op.i32Add); set(o);
  c.push(op.br, 0, op.end, op.end);
  const body = [...vec([[...uleb(i32Locals), I32], [...uleb(v128Locals), V128]]), ...c, op.end];
  return [...uleb(body.length), ...body];
}

const TILES = [[4, 2], [4, 1], [1, 4], [1, 1]] as const;

/** The module's bytes, importing a shared memory of `pages` 64 KiB pages as `env.memory`. */
export function kernelModule(pages: number): Uint8Array {
  const type = [0x60, ...vec(Array.from({ length: 7 }, () => [I32])), 0];
  const bytes = [
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec([type])),
    ...section(2, vec([[...name('env'), ...name('memory'), 0x02, 0x03, ...uleb(pages), ...uleb(pages)]])),
    ...section(3, vec(TILES.map(() => [0]))),
    ...section(7, vec(TILES.map(([r, o], i) => [...name(`t${r}${o}`), 0x00, i]))),
    ...section(10, vec(TILES.map(([r, o]) => tileBody(r, o)))),
  ];
  return new Uint8Array(bytes);
}

type Tile = (x: number, n: number, w: number, out: number, y: number, o0: number, o1: number) => void;

/**
 * Instantiates the kernels over `memory` and returns a {@link Kernel} (or `undefined` where WebAssembly
 * SIMD is not available). `heap` must be a `Float32Array` over the whole of `memory.buffer`.
 * @example
 * ```ts
 * const memory = sharedMemory(1 << 20);
 * const kernel = simdKernel(memory) ?? matmul;
 * ```
 */
export function simdKernel(memory: SharedMemory): Kernel | undefined {
  const pages = memory.buffer.byteLength / 65536;
  const bytes = kernelModule(pages);
  if (!wasm.validate(bytes)) return undefined;
  const exports = new wasm.Instance(new wasm.Module(bytes), { env: { memory } }).exports as Record<string, Tile>;
  const t42 = exports['t42']!;
  const t41 = exports['t41']!;
  const t14 = exports['t14']!;
  const t11 = exports['t11']!;
  return (h, x, rows, n, w, out, y, o0, o1) => {
    if ((n & 3) !== 0) return matmul(h, x, rows, n, w, out, y, o0, o1);
    const even = o0 + ((o1 - o0) & ~1);
    const four = o0 + ((o1 - o0) & ~3);
    let b = 0;
    for (; b + 4 <= rows; b += 4) {
      t42(x + b * n, n, w, out, y + b * out, o0, even);
      if (even < o1) t41(x + b * n, n, w, out, y + b * out, even, o1);
    }
    for (; b < rows; b++) {
      t14(x + b * n, n, w, out, y + b * out, o0, four);
      if (four < o1) t11(x + b * n, n, w, out, y + b * out, four, o1);
    }
  };
}

/**
 * A shared WebAssembly memory of at least `floats` f32 elements, or `undefined` if it cannot be had
 * (over 4 GiB, or no shared memory).
 * @example
 * ```ts
 * const memory = sharedMemory(1024);
 * const heap = memory ? new Float32Array(memory.buffer) : new Float32Array(new SharedArrayBuffer(4096));
 * ```
 */
export function sharedMemory(floats: number): SharedMemory | undefined {
  const pages = Math.ceil((floats * 4) / 65536);
  if (pages > 65536) return undefined;
  try {
    return new wasm.Memory({ initial: pages, maximum: pages, shared: true });
  } catch {
    return undefined;
  }
}
