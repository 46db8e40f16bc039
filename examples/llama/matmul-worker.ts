/**
 * The worker half of `parallel.ts`: waits for a job counter to move, computes its share of the output
 * rows over the shared heap, and publishes the job number it finished.
 * @module
 */
import { parentPort, workerData } from 'node:worker_threads';
import { matmul } from './matmul.js';
import { Ctrl, type WorkerData } from './parallel.js';
import { simdKernel } from './simd.js';

const data = workerData as WorkerData;
const heap = new Float32Array(data.memory ? data.memory.buffer : data.heap);
const kernel = (data.memory && simdKernel(data.memory)) || matmul;
const c = new Int32Array(data.ctrl);
const spin = c[Ctrl.SPIN]!;
let last = 0;
parentPort?.postMessage('ready');

for (;;) {
  let polls = spin;
  let go = Atomics.load(c, Ctrl.GO);
  while (go === last) {
    if (--polls < 0) Atomics.wait(c, Ctrl.GO, last);
    go = Atomics.load(c, Ctrl.GO);
  }
  if (go < 0) break;
  try {
    kernel(heap, c[Ctrl.X]!, c[Ctrl.ROWS]!, c[Ctrl.N]!, c[Ctrl.W]!, c[Ctrl.OUT]!, c[Ctrl.Y]!, c[Ctrl.O0]!, c[Ctrl.OUT]!);
  } catch (error) {
    parentPort?.postMessage({ error: String(error) });
    Atomics.store(c, Ctrl.FAILED, 1);
  }
  last = go;
  Atomics.store(c, Ctrl.DONE, go);
  Atomics.notify(c, Ctrl.DONE);
}
