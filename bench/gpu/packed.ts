/**
 * GPU benchmarks of packed storage (docs/packing.md) on the cuda backend, against PyTorch on the same card
 * in the same run (bench/gpu/torch_baseline.py writes the PyTorch figures first):
 *
 *  - packing throughput: 1 GiB of f16 quantised to int4 (and int2/int8) in groups of 32, values-style
 *    (axis 1: groups along a row) and keys-style (axis 0: groups down a column), in GB/s of f16 input,
 *    against the same quantisation written as PyTorch ops;
 *  - packed int4 decode attention with probability capture (Scissorhands tracker in the same pass) over
 *    the same tokens as PyTorch's f16 fused SDPA (no probabilities): the time ratio (target <= 0.4x), and
 *    the dense f16 decode of this backend for reference;
 *  - causal prefill of a 2048-token prompt (32 heads, tracker fed) over an int4 store and a dense f16 one.
 *
 * Bundled by scripts/device-bundle.sh; on the GPU machine:
 *   python3 bench/gpu/torch_baseline.py > torch.json && node .device/bench/packed.mjs --torch torch.json --out DIR
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LayerStore } from '../../src/backend/backend.js';
import { type CudaBackend, createCudaBackend } from '../../src/backend/cuda.js';
import { DeviceTensor } from '../../src/backend/device-tensor.js';
import type { PackedStorage } from '../../src/quant/storage.js';
import { Rng } from '../../src/testing/rng.js';
import { scissorhands } from '../../src/trackers/index.js';
import { gpuBench, randomF16 } from './setup.js';

const { args, cuda, stream, info, torch, results, deviceTime } = gpuBench();

function packing(rng: Rng): void {
  const backend = createCudaBackend({ stream });
  const cols = 128;
  const rows = (args.quick ? 1 << 26 : 1 << 29) / cols;
  const bytes = rows * cols * 2;
  // 1 GiB of f16 from a 64 MiB random block repeated (the kernels' speed does not depend on the values' order).
  using input = DeviceTensor.alloc('f16', rows * cols);
  {
    const block = randomF16(1 << 25, rng);
    for (let at = 0; at < rows * cols; at += block.length) input.subarray(at, at + block.length).upload(block, stream);
  }
  for (const [format, bits] of [['int4', 4], ['int2', 2], ['int8', 8]] as const) {
    const codes = cuda.cudaMalloc((rows * cols * bits) / 8);
    const scales = cuda.cudaMalloc((rows * cols) / 32 * 2);
    const zeros = cuda.cudaMalloc((rows * cols) / 32 * 2);
    for (const axis of [1, 0] as const) {
      const options = { format, shape: [rows, cols] as [number, number], axis, groupSize: 32 };
      const ms = deviceTime(() => backend.packDevice(input, options, { codes, scales, zeros }), 1, args.quick ? 5 : 15, 2);
      results[`pack.${format}.axis${axis}.ms`] = ms;
      results[`pack.${format}.axis${axis}.gbps`] = bytes / (ms * 1e6);
      console.error(`pack ${format} axis ${axis}: ${ms.toFixed(3)} ms, ${(bytes / (ms * 1e6)).toFixed(0)} GB/s of f16 input`);
    }
    cuda.cudaFree(codes);
    cuda.cudaFree(scales);
    cuda.cudaFree(zeros);
  }
  results['pack.inputBytes'] = bytes;
  backend.dispose();
}

interface DecodeCase {
  readonly name: string;
  readonly batch: number;
  readonly queryHeads: number;
  readonly kvHeads: number;
  readonly tokens: number;
}

function decodeCase(c: DecodeCase, rng: Rng, storage: PackedStorage | undefined, label: string): void {
  const d = 128;
  const backend: CudaBackend = createCudaBackend({ stream });
  const tracker = scissorhands({ window: 400 });
  const spec = { dtype: 'f16' as const, maxSequences: c.batch, kvHeads: c.kvHeads, headDim: d, capacity: c.tokens, auxWords: tracker.auxWords, queryHeads: c.queryHeads, ...(storage === undefined ? {} : { storage }) };
  const probe = backend.allocate({ layer: 0, ...spec });
  const storeBytes = backend.bytes(probe);
  const sets = Math.max(2, Math.ceil((200 << 20) / storeBytes));
  const stores: LayerStore[] = [probe, ...Array.from({ length: sets - 1 }, (_, i) => backend.allocate({ layer: i + 1, ...spec }))];
  {
    using data = DeviceTensor.fromHost(randomF16(c.tokens * c.kvHeads * d, rng), 'f16');
    for (const store of stores) for (let b = 0; b < c.batch; b++) backend.append(store, b, data as never, data as never, c.tokens, 0, tracker);
    backend.synchronize();
  }
  if (backend.errors(stores[0]!) !== 0) throw new Error(`${c.name} ${label}: device error flags after filling`);
  using q = DeviceTensor.fromHost(randomF16(c.batch * c.queryHeads * d, rng), 'f16');
  using out = DeviceTensor.alloc('f16', c.batch * c.queryHeads * d);
  const seqs = Int32Array.from({ length: c.batch }, (_, b) => b);
  const attention = { queryHeads: c.queryHeads, scale: 1 / Math.sqrt(d) };
  const inner = Math.max(1, Math.ceil(8 / sets)) * sets;
  const ms = deviceTime((i) => backend.decodeBatch(stores[i % sets]!, seqs, q as never, out as never, attention, tracker), inner);
  results[`${c.name}.${label}.ms`] = ms;
  results[`${c.name}.${label}.storeBytes`] = storeBytes;
  console.error(`${c.name} ${label}: ${ms.toFixed(4)} ms (${(storeBytes / 2 ** 20).toFixed(0)} MiB a store)`);
  backend.dispose();
}

// A prompt's causal prefill over the store it was appended to: 32 heads, `rows` rows, the tracker fed.
function prefillCase(rows: number, rng: Rng, storage: PackedStorage | undefined, label: string): void {
  const d = 128;
  const heads = 32;
  const backend: CudaBackend = createCudaBackend({ stream });
  const tracker = scissorhands({ window: 400 });
  const store = backend.allocate({
    layer: 0, dtype: 'f16', maxSequences: 1, kvHeads: heads, headDim: d, capacity: rows, auxWords: tracker.auxWords,
    queryHeads: heads, ...(storage === undefined ? {} : { storage }),
  });
  {
    using data = DeviceTensor.fromHost(randomF16(rows * heads * d, rng), 'f16');
    backend.append(store, 0, data as never, data as never, rows, 0, tracker);
  }
  using q = DeviceTensor.fromHost(randomF16(rows * heads * d, rng), 'f16');
  using out = DeviceTensor.alloc('f16', rows * heads * d);
  const attention = { queryHeads: heads, scale: 1 / Math.sqrt(d) };
  const ms = deviceTime(() => backend.prefill(store, 0, q as never, rows, out as never, attention, tracker), 1, args.quick ? 3 : 9, 1);
  if (backend.errors(store) !== 0) throw new Error(`prefill ${label}: device error flags`);
  results[`prefill.h32.n${rows}.${label}.ms`] = ms;
  console.error(`prefill ${rows} rows ${label}: ${ms.toFixed(3)} ms`);
  backend.dispose();
}

const rng = new Rng(7);
results['card'] = info.device?.name ?? 'unknown';
results['date'] = new Date().toISOString();
if (!args['decode-only']) packing(rng);
const cases: DecodeCase[] = [
  { name: 'decode.b1.h32.n4096', batch: 1, queryHeads: 32, kvHeads: 32, tokens: 4096 },
  { name: 'decode.b8.h32.n4096', batch: 8, queryHeads: 32, kvHeads: 32, tokens: 4096 },
  { name: 'decode.gqa32x8.b16.n8192', batch: 16, queryHeads: 32, kvHeads: 8, tokens: 8192 },
];
const int4: PackedStorage = { format: 'int4', bits: 4, groupSize: 32, residual: 32 };
// --case NAME runs one int4 case alone (for a profiler); --pack-only skips decode.
const only = args.case;
for (const c of args['pack-only'] ? [] : cases) {
  if (only !== undefined && c.name !== only) continue;
  decodeCase(c, rng, int4, 'int4');
  if (only === undefined) decodeCase(c, rng, undefined, 'f16');
}
if (only !== undefined) process.exit(0);
const prefillRows = 2048;
if (!args['pack-only']) for (const [storage, label] of [[int4, 'int4'], [undefined, 'f16']] as const) prefillCase(prefillRows, rng, storage, label);

const lines = [
  `# Packed storage on the GPU: ${results['card']} (${results['date']})`,
  '',
  'Command: `python3 bench/gpu/torch_baseline.py > torch.json && node .device/bench/packed.mjs --torch torch.json` '
    + `(bundled by scripts/device-bundle.sh). CUDA-event medians; PyTorch ${torch['torch_version'] ?? '?'} in the same run.`,
  '',
  '| packing 1 GiB of f16, groups of 32 | ms | GB/s of f16 input | target | torch ops GB/s |',
  '|---|---|---|---|---|',
];
for (const key of args['decode-only'] ? [] : ['int4.axis1', 'int4.axis0', 'int2.axis1', 'int2.axis0', 'int8.axis1', 'int8.axis0']) {
  const [format, axis] = key.split('.');
  const tk = torch[`pack.${key}.gbps`] ?? NaN;
  lines.push(`| ${format}, ${axis === 'axis1' ? 'values (axis 1)' : 'keys (axis 0)'} | ${(results[`pack.${key}.ms`] as number).toFixed(3)} | ${(results[`pack.${key}.gbps`] as number).toFixed(0)} | >= 1500 | ${tk.toFixed(0)} |`);
}
if (!args['pack-only']) lines.push('', '| decode with probability capture, head size 128 | int4 ms | dense f16 ms (ours) | torch f16 SDPA ms | int4 / SDPA | target |', '|---|---|---|---|---|---|');
for (const c of args['pack-only'] ? [] : cases) {
  const p = results[`${c.name}.int4.ms`] as number;
  const f = results[`${c.name}.f16.ms`] as number;
  const s = torch[`${c.name}.sdpa_ms`] ?? NaN;
  lines.push(`| ${c.name} | ${p.toFixed(4)} | ${f.toFixed(4)} | ${s.toFixed(4)} | ${(p / s).toFixed(2)}x | <= 0.4x |`);
}
if (!args['pack-only']) {
  const p = results[`prefill.h32.n${prefillRows}.int4.ms`] as number;
  const f = results[`prefill.h32.n${prefillRows}.f16.ms`] as number;
  lines.push('', `| causal prefill, ${prefillRows} rows x 32 heads, tracker fed | int4 ms | dense f16 ms (ours) | int4 / f16 |`, '|---|---|---|---|');
  lines.push(`| prefill.h32.n${prefillRows} | ${p.toFixed(3)} | ${f.toFixed(3)} | ${(p / f).toFixed(2)}x |`);
}
const report = lines.join('\n') + '\n';
writeFileSync(join(args.out, 'gpu-packed.md'), report);
writeFileSync(join(args.out, 'gpu-packed.json'), JSON.stringify({ ours: results, torch }, null, 2));
console.log(report);
