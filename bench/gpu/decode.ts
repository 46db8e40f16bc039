/**
 * GPU benchmarks of the cuda backend, against the card's measured read bandwidth and against PyTorch on
 * the same card in the same run (bench/gpu/torch_baseline.py writes the PyTorch figures first):
 *
 *  - decode attention with probability capture (the Scissorhands tracker updated in the same pass), f16,
 *    head size 128: batch 1 x 32 heads x 4096 tokens, batch 8 x 32 heads x 4096, and grouped 32/8 heads
 *    x batch 16 x 8192 tokens; K+V bytes over time against the read bandwidth, and against PyTorch's
 *    attention that returns probabilities (matmul, softmax, matmul) and its fused SDPA (no probabilities);
 *    and against one launch that only reads the same K+V bytes (the floor under the decode);
 *  - compaction after dropping 20% (choice + in-place move) against torch top-k + gather;
 *  - host overhead of one call through the addon (decode alone; KVCache.attend and backend.attend, which
 *    append inside the decode kernels; append + decode as two calls). --overhead-only runs this alone.
 *
 * Bundled by scripts/device-bundle.sh; on the GPU machine:
 *   python3 bench/gpu/torch_baseline.py > torch.json && node .device/bench/decode.mjs --torch torch.json --out DIR
 * Device timings are CUDA-event medians; inputs rotate over several stores so L2 (50 MB on an H100) does
 * not hold them.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LayerStore } from '../../src/backend/backend.js';
import { type CudaBackend, createCudaBackend } from '../../src/backend/cuda.js';
import { DeviceTensor } from '../../src/backend/device-tensor.js';
import { KVCache } from '../../src/cache/kv-cache.js';
import { fullCache } from '../../src/policies/index.js';
import { Rng } from '../../src/testing/rng.js';
import type { ImportanceTracker } from '../../src/trackers/tracker.js';
import { scissorhands } from '../../src/trackers/index.js';
import { median } from '../timing.js';
import { gpuBench, randomF16 } from './setup.js';

const { args, cuda, stream, info, torch, iterations: ITER, results, deviceTime } = gpuBench();
const ev0 = cuda.cudaEventCreate();
const ev1 = cuda.cudaEventCreate();

/** Read bandwidth: one pass over 1 GiB. */
function readBandwidth(): number {
  const bytes = 1 << 30;
  return bytes / (readTime(bytes, 1, 1) * 1e6);
}

interface DecodeCase {
  readonly name: string;
  readonly batch: number;
  readonly queryHeads: number;
  readonly kvHeads: number;
  readonly tokens: number;
}

function fill(backend: CudaBackend, stores: LayerStore[], c: DecodeCase, tracker: ReturnType<typeof scissorhands>, data: DeviceTensor): void {
  for (const store of stores) {
    for (let b = 0; b < c.batch; b++) backend.append(store, b, data as never, data as never, c.tokens, 0, tracker);
  }
  backend.synchronize();
}

function decodeCase(c: DecodeCase, rng: Rng): void {
  const d = 128;
  const backend = createCudaBackend({ stream });
  const tracker = scissorhands({ window: 400 });
  // The same tracker without its attention input: decode without probability capture.
  const free = { ...tracker, input: 'none' as const };
  const kvBytes = c.batch * c.kvHeads * c.tokens * d * 2 * 2;
  const sets = Math.max(2, Math.ceil((200 << 20) / kvBytes));
  const stores = Array.from({ length: sets }, (_, layer) => backend.allocate({
    layer, dtype: 'f16', maxSequences: c.batch, kvHeads: c.kvHeads, headDim: d, capacity: c.tokens, auxWords: tracker.auxWords, queryHeads: c.queryHeads,
  }));
  {
    using data = DeviceTensor.fromHost(randomF16(c.tokens * c.kvHeads * d, rng), 'f16');
    fill(backend, stores, c, tracker, data);
  }
  using q = DeviceTensor.fromHost(randomF16(c.batch * c.queryHeads * d, rng), 'f16');
  using out = DeviceTensor.alloc('f16', c.batch * c.queryHeads * d);
  const seqs = Int32Array.from({ length: c.batch }, (_, b) => b);
  const attention = { queryHeads: c.queryHeads, scale: 1 / Math.sqrt(d) };
  const inner = Math.max(1, Math.ceil(8 / sets)) * sets;
  const run = (t: ImportanceTracker) => (i: number) => backend.decodeBatch(stores[i % sets]!, seqs, q as never, out as never, attention, t);
  const ms = deviceTime(run(tracker), inner);
  const msFree = deviceTime(run(free), inner);
  const gbps = kvBytes / (ms * 1e6);
  results[`${c.name}.ms`] = ms;
  results[`${c.name}.gbps`] = gbps;
  results[`${c.name}.noTracker.ms`] = msFree;
  results[`${c.name}.kvBytes`] = kvBytes;
  results[`${c.name}.readMs`] = readTime(kvBytes, sets, inner);
  backend.dispose();
}

/**
 * The floor under a decode of `bytes`: one launch that only reads that many bytes, timed back to back
 * like the decode and rotating over `sets` buffers so L2 does not hold them.
 */
function readTime(bytes: number, sets: number, inner: number): number {
  const buffers = Array.from({ length: sets }, () => cuda.cudaMalloc(bytes));
  const sink = cuda.cudaMalloc(1 << 16);
  for (const b of buffers) cuda.cudaMemset(b, 0x3c, bytes, stream);
  const ms = deviceTime((i) => cuda.cudaReadBench(buffers[i % sets]!, bytes, sink, stream), inner);
  for (const b of buffers) cuda.cudaFree(b);
  cuda.cudaFree(sink);
  return ms;
}

function compactionCase(name: string, batch: number, tokens: number, rng: Rng): void {
  const [kvHeads, d] = [8, 128];
  const backend = createCudaBackend({ stream });
  const tracker = scissorhands({ window: 400 });
  const store = backend.allocate({ layer: 0, dtype: 'f16', maxSequences: batch, kvHeads, headDim: d, capacity: tokens, auxWords: tracker.auxWords, queryHeads: 32 });
  {
    using data = DeviceTensor.fromHost(randomF16(tokens * kvHeads * d, rng), 'f16');
    fill(backend, [store], { name, batch, queryHeads: 32, kvHeads, tokens }, tracker, data);
  }
  // Scores: random, as a tracker would leave them.
  const scores = Float32Array.from({ length: batch * kvHeads * tokens }, () => rng.float());
  const device = (store as unknown as { device: { info: { scores: bigint; lengths: bigint } } }).device;
  cuda.cudaUpload(device.info.scores, scores, stream);
  const full = new Int32Array(batch * kvHeads).fill(tokens);
  const drop = Math.floor(tokens * 0.2);
  const seqs = Int32Array.from({ length: batch }, (_, b) => b);
  const times: number[] = [];
  for (let s = 0; s < ITER + 5; s++) {
    cuda.cudaUpload(device.info.lengths, full, stream);
    store.lengths.set(full);
    cuda.cudaEventRecord(ev0, stream);
    backend.evictBatch(store, seqs, drop, 4, 32, 'head');
    cuda.cudaEventRecord(ev1, stream);
    const ms = cuda.cudaEventElapsed(ev0, ev1);
    if (s >= 5) times.push(ms);
  }
  results[`${name}.ms`] = median(times);
  results[`${name}.movedBytes`] = batch * kvHeads * (tokens - drop) * d * 2 * 2 * 2;
  backend.dispose();
}

/**
 * Host microseconds per call of `step` (`calls` back to back, no sync): the median of 10 rounds, after 20
 * untimed rounds so the JIT has optimised the JavaScript (an engine makes this call per layer and token).
 * `reset` runs after each round's sync.
 */
function hostTime(step: (i: number) => void, reset: () => void): number {
  const calls = 200;
  const samples: number[] = [];
  for (let round = 0; round < 30; round++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < calls; i++) step(i);
    if (round >= 20) samples.push(Number(process.hrtime.bigint() - t0) / 1e3 / calls);
    cuda.cudaSynchronize(stream);
    reset();
  }
  return median(samples);
}

function overhead(): void {
  const geometry = { layers: 1, queryHeads: 4, kvHeads: 1, headDim: 64 };
  using cache = KVCache.create({ geometry, dtype: 'f16', backend: 'cuda', tracker: scissorhands({ window: 64 }), policy: fullCache({ maxTokens: 4096 }) });
  cache.setStream(stream);
  const seq = cache.open();
  using q = DeviceTensor.fromHost(new Uint16Array(4 * 64).fill(0x3c00), 'f16');
  using k = DeviceTensor.fromHost(new Uint16Array(64).fill(0x3c00), 'f16');
  using out = DeviceTensor.alloc('f16', 4 * 64);
  results['overhead.attend.us'] = hostTime(() => cache.attend(seq, 0, q, k, k, out), () => cache.reset(seq));
  const backend = createCudaBackend({ stream });
  const tracker = scissorhands({ window: 64 });
  const store = backend.allocate({ layer: 0, dtype: 'f16', maxSequences: 1, kvHeads: 1, headDim: 64, capacity: 4096, auxWords: tracker.auxWords, queryHeads: 4 });
  const attention = { queryHeads: 4, scale: 0.125 };
  const clear = (): void => backend.clear(store, 0);
  // The step through the backend: attend (one addon call, one launch) and, as before it, append + decode
  // (two calls, two launches).
  results['overhead.backendAttend.us'] = hostTime((i) => backend.attend(store, 0, k, k, i, q, out, attention, tracker), clear);
  results['overhead.appendDecode.us'] = hostTime((i) => {
    backend.append(store, 0, k as never, k as never, 1, i, tracker);
    backend.decode(store, 0, q as never, out as never, attention, tracker);
  }, clear);
  // decode alone through the backend and through the raw addon (one call, one launch)
  backend.append(store, 0, k as never, k as never, 1, 0, tracker);
  results['overhead.decode.us'] = hostTime(() => backend.decode(store, 0, q as never, out as never, attention, tracker), () => {});
  const handle = (store as unknown as { device: { native: never } }).device.native;
  const seqs = Int32Array.of(0);
  const [qp, op] = [q.ptr, out.ptr];
  results['overhead.rawDecode.us'] = hostTime(() => cuda.cudaDecode(handle, seqs, 1, qp, 1, 256, op, 1, 256, 4, 0.125, 1 | 0x200, 64, 0, stream), () => {});
  // One cheap asynchronous CUDA call through the addon, for scale.
  results['overhead.eventRecord.us'] = hostTime(() => cuda.cudaEventRecord(ev0, stream), () => {});
  backend.dispose();
}

const rng = new Rng(2024);
// Compactions: name, batch, tokens.
const compactions = [['compact.b1.n4096', 1, 4096], ['compact.b32.n2048', 32, 2048]] as const;
const cases: DecodeCase[] = [
  { name: 'decode.b1.h32.n4096', batch: 1, queryHeads: 32, kvHeads: 32, tokens: 4096 },
  { name: 'decode.b8.h32.n4096', batch: 8, queryHeads: 32, kvHeads: 32, tokens: 4096 },
  { name: 'decode.gqa32x8.b16.n8192', batch: 16, queryHeads: 32, kvHeads: 8, tokens: 8192 },
];
// --case NAME runs that decode or compaction alone (for a profiler).
if (args.case !== undefined) {
  const decode = cases.find((c) => c.name === args.case);
  const found = compactions.find(([name]) => name === args.case);
  if (decode !== undefined) decodeCase(decode, rng);
  else if (found !== undefined) compactionCase(found[0], found[1], found[2], rng);
  else throw new Error(`--case: expected one of ${[...cases.map((c) => c.name), ...compactions.map(([name]) => name)].join(', ')}`);
  console.error(`${args.case}: ${(results[`${args.case}.ms`] as number).toFixed(4)} ms`);
  process.exit(0);
}
if (args['overhead-only']) {
  overhead();
  for (const [key, value] of Object.entries(results)) if (key.startsWith('overhead.')) console.log(`${key} ${(value as number).toFixed(2)}`);
  process.exit(0);
}
results['card'] = info.device?.name ?? 'unknown';
results['date'] = new Date().toISOString();
results['readGBps'] = readBandwidth();
console.error(`read bandwidth ${(results['readGBps'] as number).toFixed(0)} GB/s`);
for (const c of cases) {
  decodeCase(c, rng);
  console.error(`${c.name}: ${(results[`${c.name}.ms`] as number).toFixed(4)} ms`);
}
if (!args['decode-only']) {
  for (const [name, batch, tokens] of compactions) compactionCase(name, batch, tokens, rng);
  overhead();
}
results['decodeWaves'] = process.env['SCISSORHANDS_DECODE_WAVES'] ?? '1';
results['decodeImpl'] = process.env['SCISSORHANDS_DECODE_IMPL'] ?? 'stream';
results['evictImpl'] = process.env['SCISSORHANDS_EVICT_IMPL'] ?? 'ordered';

// The report.
const read = results['readGBps'] as number;
const lines = [
  `# GPU benchmarks: ${results['card']} (${results['date']})`,
  '',
  `Command: \`python3 bench/gpu/torch_baseline.py > torch.json && node .device/bench/decode.mjs --torch torch.json\` (bundled by scripts/device-bundle.sh). `
    + `CUDA-event medians of ${ITER} samples; PyTorch ${torch['torch_version'] ?? '?'} in the same run. f16, head size 128. `
    + `Kernels: decode ${results['decodeImpl']}, evict ${results['evictImpl']}, decode waves ${results['decodeWaves']}.`,
  '',
  `Read bandwidth (one pass over 1 GiB): ${read.toFixed(0)} GB/s (PyTorch 1 GiB f16 sum: ${(torch['read_gbps'] ?? NaN).toFixed(0)} GB/s; device copy r+w: ${(torch['copy_gbps'] ?? NaN).toFixed(0)} GB/s).`,
  '',
  '| decode with probability capture | ours ms | GB/s of K+V | % of read bw | no capture ms | read of the K+V bytes, one launch ms | torch probs (repeat KV) ms | torch probs (grouped) ms | torch SDPA ms | x torch repeat | x torch grouped | x SDPA |',
  '|---|---|---|---|---|---|---|---|---|---|---|---|',
];
for (const c of cases) {
  const ms = results[`${c.name}.ms`] as number;
  const gbps = results[`${c.name}.gbps`] as number;
  const tr = torch[`${c.name}.probs_repeat_ms`] ?? NaN;
  const tp = torch[`${c.name}.probs_ms`] ?? NaN;
  const ts = torch[`${c.name}.sdpa_ms`] ?? NaN;
  lines.push(`| ${c.name} | ${ms.toFixed(4)} | ${gbps.toFixed(0)} | ${((100 * gbps) / read).toFixed(1)}% | ${(results[`${c.name}.noTracker.ms`] as number).toFixed(4)} | ${(results[`${c.name}.readMs`] as number).toFixed(4)} | ${tr.toFixed(4)} | ${tp.toFixed(4)} | ${ts.toFixed(4)} | ${(tr / ms).toFixed(1)} | ${(tp / ms).toFixed(1)} | ${(ts / ms).toFixed(2)} |`);
}
if (!args['decode-only']) {
lines.push('', '| compaction, drop 20% (8 KV heads) | ours ms | torch top-k + gather ms | x torch |', '|---|---|---|---|');
for (const [name] of compactions) {
  const ms = results[`${name}.ms`] as number;
  const t = torch[`${name}.ms`] ?? NaN;
  lines.push(`| ${name} | ${ms.toFixed(4)} | ${t.toFixed(4)} | ${(t / ms).toFixed(1)} |`);
}
lines.push('', '| host overhead per call | us |', '|---|---|',
  `| KVCache.attend (device tensors: one addon call, one launch) | ${(results['overhead.attend.us'] as number).toFixed(2)} |`,
  `| backend.attend (the same, without the cache's planning) | ${(results['overhead.backendAttend.us'] as number).toFixed(2)} |`,
  `| backend.append + backend.decode (two calls, two launches: attend before) | ${(results['overhead.appendDecode.us'] as number).toFixed(2)} |`,
  `| backend.decode (one addon call, one launch) | ${(results['overhead.decode.us'] as number).toFixed(2)} |`,
  `| raw addon cudaDecode | ${(results['overhead.rawDecode.us'] as number).toFixed(2)} |`,
  `| addon cudaEventRecord (one cheap CUDA call, for scale) | ${(results['overhead.eventRecord.us'] as number).toFixed(2)} |`);
}
const report = lines.join('\n') + '\n';
writeFileSync(join(args.out, 'gpu-bench.md'), report);
writeFileSync(join(args.out, 'gpu-bench.json'), JSON.stringify({ ours: results, torch }, null, 2));
console.log(report);
