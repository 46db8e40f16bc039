/**
 * Device timing shared by the GPU benchmarks: CUDA-event medians on the benchmark's stream.
 * @module
 */
import type { loadCuda } from '../../src/native/loader.js';
import { median } from '../timing.js';

/**
 * A timer of device milliseconds per call of `fn` on `stream`: `warm` calls, then the median of `samples`
 * samples, each the mean of `inner` back-to-back calls between two events. `fn` gets a running call index.
 */
export function deviceTimer(cuda: ReturnType<typeof loadCuda>, stream: bigint, defaultSamples: number) {
  const ev0 = cuda.cudaEventCreate();
  const ev1 = cuda.cudaEventCreate();
  return (fn: (i: number) => void, inner: number, samples = defaultSamples, warm = 5): number => {
    let i = 0;
    for (let w = 0; w < warm; w++) fn(i++);
    cuda.cudaSynchronize(stream);
    const times: number[] = [];
    for (let s = 0; s < samples; s++) {
      cuda.cudaEventRecord(ev0, stream);
      for (let r = 0; r < inner; r++) fn(i++);
      cuda.cudaEventRecord(ev1, stream);
      times.push(cuda.cudaEventElapsed(ev0, ev1) / inner);
    }
    return median(times);
  };
}
