/**
 * What every GPU benchmark starts with: its command line (`--torch FILE --out DIR --quick --decode-only
 * --overhead-only --pack-only --case NAME`), the addon and a stream, the PyTorch figures of the same run, a
 * results record, the CUDA-event timer, and random f16 inputs.
 * @module
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { backendInfo } from '../../src/backend/select.js';
import { f32ToF16Bits } from '../../src/core/dtype.js';
import { loadCuda } from '../../src/native/loader.js';
import type { Rng } from '../../src/testing/rng.js';
import { deviceTimer } from './timing.js';

/** Parses the command line and sets up the addon, a stream and the timer (samples: 5 with --quick, else 30). */
export function gpuBench() {
  const { values: args } = parseArgs({
    options: {
      torch: { type: 'string' }, out: { type: 'string', default: '.' }, quick: { type: 'boolean', default: false },
      'decode-only': { type: 'boolean', default: false }, 'overhead-only': { type: 'boolean', default: false },
      'pack-only': { type: 'boolean', default: false }, case: { type: 'string' },
    },
  });
  const cuda = loadCuda();
  const stream = cuda.cudaStreamCreate();
  const iterations = args.quick ? 5 : 30;
  return {
    args,
    cuda,
    stream,
    info: backendInfo().cuda,
    torch: args.torch === undefined ? {} : (JSON.parse(readFileSync(args.torch, 'utf8')) as Record<string, number>),
    iterations,
    results: {} as Record<string, number | string>,
    deviceTime: deviceTimer(cuda, stream, iterations),
  };
}

/** Random f16 bits (values in [-1, 1)). */
export function randomF16(n: number, rng: Rng): Uint16Array {
  const table = Uint16Array.from({ length: 4096 }, () => f32ToF16Bits(rng.range(-1, 1)));
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = table[(rng.uint32() >>> 20)]!;
  return out;
}
