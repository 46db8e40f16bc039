/**
 * Two-core matrix products: the main thread and one worker thread each compute half of the output rows of
 * every product, over one `SharedArrayBuffer` heap that holds the weights and the activations.
 *
 * Synchronisation is a pair of counters in a shared `Int32Array`, no messages: the main thread writes the
 * job's offsets, bumps `GO` and notifies; the worker (spinning briefly, then sleeping in `Atomics.wait`)
 * computes its rows and bumps `DONE`; the main thread computes its own rows and then waits for `DONE`.
 * A product costs two atomic stores and, usually, no system call, so even a few-microsecond product can
 * be shared; the engine still only shares products that are big enough to pay (see `minWork`).
 * @module
 */
import { Worker } from 'node:worker_threads';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { matmul, type MatmulJob } from './matmul.js';
import type { Kernel, SharedMemory } from './simd.js';

/** Slots of the control array. */
export const Ctrl = {
  /** Job counter, bumped by the main thread; -1 asks the worker to exit. */
  GO: 0,
  /** Last job the worker finished. */
  DONE: 1,
  /** Non-zero when the worker failed (its message is posted). */
  FAILED: 2,
  X: 3,
  ROWS: 4,
  N: 5,
  W: 6,
  OUT: 7,
  Y: 8,
  /** First output row of the worker's share. */
  O0: 9,
  /** Spin iterations before sleeping. */
  SPIN: 10,
  SIZE: 16,
} as const;

/** What the worker receives at start. */
export interface WorkerData {
  heap: SharedArrayBuffer;
  ctrl: SharedArrayBuffer;
  /** When the heap is a WebAssembly memory: the worker runs the SIMD kernel over it too. */
  memory: SharedMemory | undefined;
}

/** Options of {@link MatmulPool.create}. */
export interface PoolOptions {
  /** Share of the output rows the worker computes (default 0.5). */
  workerShare?: number;
  /** The heap's WebAssembly memory, if it is one: both threads then use the SIMD kernel. */
  memory?: SharedMemory | undefined;
  /** The kernel the main thread runs (default the JavaScript `matmul`). */
  kernel?: Kernel;
  /** Polls of the job counter before a thread sleeps (default 2000, a few microseconds: on a machine whose cores share a budget a longer spin slows the other thread). */
  spin?: number;
}

/** Starts the worker module; from TypeScript sources (tsx, vitest) it is loaded through tsx's API. */
function startWorker(data: WorkerData): Worker {
  const self = import.meta.url;
  if (!self.endsWith('.ts')) return new Worker(new URL('./matmul-worker.js', self), { workerData: data });
  // tsx's ESM API (its package exports map `tsx/esm/api` to this file for `import`).
  const api = new URL('dist/esm/api/index.mjs', pathToFileURL(createRequire(self).resolve('tsx/package.json'))).href;
  const entry = new URL('./matmul-worker.ts', self).href;
  const boot = `import(${JSON.stringify(api)}).then((m) => m.tsImport(${JSON.stringify(entry)}, ${JSON.stringify(self)}))`;
  return new Worker(boot, { eval: true, workerData: data });
}

/**
 * A worker thread that shares every matrix product with the main thread.
 * @example
 * ```ts
 * const heap = new Float32Array(new SharedArrayBuffer(4 * size));
 * const pool = await MatmulPool.create(heap);
 * pool.run({ x, rows: 8, n: 384, w, out: 1024, y });
 * pool.close();
 * ```
 */
export class MatmulPool {
  private readonly ctrl: Int32Array;
  private job = 0;
  private closed = false;
  private failure: string | undefined;

  private constructor(
    private readonly heap: Float32Array,
    ctrlBuffer: SharedArrayBuffer,
    private readonly worker: Worker,
    private readonly share: number,
    private readonly spin: number,
    private readonly kernel: Kernel,
  ) {
    this.ctrl = new Int32Array(ctrlBuffer);
    worker.on('message', (m: unknown) => {
      if (typeof m === 'object' && m !== null && 'error' in m) this.failure = String(m.error);
    });
  }

  /** Starts the worker and waits until it runs. `heap` must be a view of a `SharedArrayBuffer`. */
  static async create(heap: Float32Array, options: PoolOptions = {}): Promise<MatmulPool> {
    if (!(heap.buffer instanceof SharedArrayBuffer)) throw new TypeError('the heap must be a SharedArrayBuffer view');
    const ctrl = new SharedArrayBuffer(Ctrl.SIZE * 4);
    const spin = options.spin ?? 2000;
    new Int32Array(ctrl)[Ctrl.SPIN] = spin;
    const worker = startWorker({ heap: heap.buffer, ctrl, memory: options.memory });
    await new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`matmul worker exited with code ${code}`)));
    });
    worker.removeAllListeners('error');
    worker.removeAllListeners('exit');
    worker.on('error', () => undefined);
    worker.unref();
    return new MatmulPool(heap, ctrl, worker, options.workerShare ?? 0.5, spin, options.kernel ?? matmul);
  }

  /** Computes `job` with both threads; returns when all rows are written. */
  run(job: MatmulJob): void {
    if (this.closed) throw new Error('MatmulPool is closed');
    const c = this.ctrl;
    // The worker takes the last rows; split on a multiple of 4 so both halves use full tiles.
    const split = Math.min(job.out, Math.round((job.out * (1 - this.share)) / 4) * 4);
    c[Ctrl.X] = job.x;
    c[Ctrl.ROWS] = job.rows;
    c[Ctrl.N] = job.n;
    c[Ctrl.W] = job.w;
    c[Ctrl.OUT] = job.out;
    c[Ctrl.Y] = job.y;
    c[Ctrl.O0] = split;
    const id = ++this.job;
    Atomics.store(c, Ctrl.GO, id);
    Atomics.notify(c, Ctrl.GO);
    this.kernel(this.heap, job.x, job.rows, job.n, job.w, job.out, job.y, 0, split);
    let polls = this.spin;
    while (Atomics.load(c, Ctrl.DONE) !== id) {
      if (Atomics.load(c, Ctrl.FAILED) !== 0) throw new Error(`matmul worker failed: ${this.failure ?? 'unknown error'}`);
      if (--polls < 0) Atomics.wait(c, Ctrl.DONE, id - 1, 50);
    }
  }

  /** Stops the worker. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    Atomics.store(this.ctrl, Ctrl.GO, -1);
    Atomics.notify(this.ctrl, Ctrl.GO);
    void this.worker.terminate();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
