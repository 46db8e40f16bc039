/**
 * Packed storage on the GPU against the CPU oracle (docs/packing.md): the standalone packer bit for bit
 * (codes, scales, zero points) and its unpacking; packed stores through append (window packing, run
 * merges), decode, prefill and eviction (run compaction), with every packed array bit for bit over what
 * each head holds and attention outputs within the dtype's tolerance; and a packed KVCache on cuda against
 * one on cpu (kept positions, outputs, and the exact byte counts of stats() from the device ledger).
 *
 *   node --test .device/tests/packed.test.mjs        (SH_GPU_QUICK=1: a few cases, for compute-sanitizer)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AttentionSpec, LayerStore, PackedStore } from '../../src/backend/backend.js';
import { DeviceTensor } from '../../src/backend/device-tensor.js';
import { KVCache } from '../../src/cache/kv-cache.js';
import { type DType, type HostArray, encodeElement } from '../../src/core/dtype.js';
import { KvError } from '../../src/core/errors.js';
import { loadCuda } from '../../src/native/loader.js';
import { createNativePacker } from '../../src/quant/native.js';
import { type PackedStorage, type PackedStorageOptions, resolveStorage, storeBytesPerSequence } from '../../src/quant/storage.js';
import { byteBudget, fixedBudget } from '../../src/policies/index.js';
import { h2o, keyNorm, random, scissorhands, streamingLLM } from '../../src/trackers/index.js';
import type { ImportanceTracker } from '../../src/trackers/tracker.js';
import { OUT_TOL, Rng, copyStoreToDevice, copyStoreToHost, cpu, cuda, expectClose, expectSameState, floats, hostArray, twins, values } from './helpers.js';

const QUICK = process.env['SH_GPU_QUICK'] === '1';
const FORMATS = [['int2', 2], ['int4', 4], ['int8', 8]] as const;
const native = createNativePacker();
const raw = loadCuda();

function same(a: ArrayBufferView, b: ArrayBufferView, what: string): void {
  const x = Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  const y = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (Buffer.compare(x, y) === 0) return;
  let i = 0;
  while (x[i] === y[i]) i++;
  assert.fail(`${what}: byte ${i} of ${x.length} is ${x[i]}, expected ${y[i]}`);
}

describe('cuda packer against the cpu packer', () => {
  const rng = new Rng(5);
  const dtypes: readonly DType[] = ['f32', 'f16', 'bf16'];
  for (const [format, bits] of FORMATS) {
    for (const dtype of dtypes) {
      for (const axis of [0, 1] as const) {
        it(`${format} ${dtype} axis ${axis}`, () => {
          for (let trial = 0; trial < (QUICK ? 1 : 4); trial++) {
            // Powers of two take the lane-per-8-elements kernel on axis 1; 24 the thread-per-group one. On axis 0,
            // 16-bit inputs with groups of 8, 16 or 32 and a multiple of 4 columns take the 4-column kernel; odd
            // trials give int4 and int8 two more columns, so that the thread-per-byte-column one runs too.
            const groupSize = [8, 16, 24, 32, 64, 128][Math.floor(rng.float() * 6)]!;
            const rows = axis === 0 ? groupSize * (1 + Math.floor(rng.float() * 6)) : 1 + Math.floor(rng.float() * 40);
            const cols = axis === 1 ? groupSize * (1 + Math.floor(rng.float() * 6)) : 8 * (1 + Math.floor(rng.float() * 24)) + (bits !== 2 && trial % 2 === 1 ? 2 : 0);
            const scale = [1e-3, 1, 300][trial % 3]!;
            const x = floats(rows * cols, rng, scale);
            // A constant group, exact zeros of both signs, and a group of exact ties (axis 1: the second group of
            // row 0; axis 0: the first group of column 1): range [0, 15] so that int4's scale is 1 and k + 0.5
            // lies exactly between two codes.
            const tie = (j: number) => (j === 0 ? 0 : j === 1 ? 15 : (j % 15) + 0.5);
            if (axis === 1) {
              x.fill(0.75, 0, Math.min(x.length, groupSize));
              if (x.length >= 2 * groupSize) for (let j = 0; j < groupSize; j++) x[groupSize + j] = tie(j);
            } else {
              for (let j = 0; j < groupSize; j++) {
                x[j * cols] = 0.75;
                x[j * cols + 1] = tie(j);
              }
            }
            if (x.length > 3) x[3] = -0;
            const input = hostArray(x, dtype, true);
            const options = { format, shape: [rows, cols] as [number, number], axis, groupSize, dtype };
            const expected = native.pack(input, options);
            const got = cuda.pack(input, options);
            same(got.codes, expected.codes, 'codes');
            same(got.scales, expected.scales, 'scales');
            same(got.zeros, expected.zeros, 'zeros');
            // Unpacking on the device gives the CPU's floats bit for bit.
            const codes = raw.cudaMalloc(expected.codes.byteLength);
            raw.cudaUpload(codes, expected.codes, cuda.stream);
            using scales = DeviceTensor.fromHost(expected.scales, 'f16');
            using zeros = DeviceTensor.fromHost(expected.zeros, 'f16');
            using out = DeviceTensor.alloc('f32', rows * cols);
            cuda.unpackDevice({ codes, scales: scales.ptr, zeros: zeros.ptr }, options, out);
            same(out.toHost(undefined, cuda.stream), native.unpack(expected) as Float32Array, 'unpacked');
            raw.cudaFree(codes);
          }
        });
      }
    }
  }
  it('refuses unpackable elements and unsupported group shapes with typed errors', () => {
    const x = new Float32Array(64);
    x[5] = Number.NaN;
    assert.throws(() => cuda.pack(x, { format: 'int4', shape: [2, 32] }), (e: unknown) => e instanceof KvError && e.code === 'KV_ARGUMENT');
    assert.throws(() => cuda.pack(new Float32Array(9), { format: 'int2', shape: [3, 3], axis: 1, groupSize: 3 }),
      (e: unknown) => e instanceof KvError && e.code === 'KV_ARGUMENT');
  });
  it('refuses NaN, infinite and out-of-range 16-bit elements in every kernel', () => {
    // 16-bit inputs find these from the range of a group (NaN-propagating min and max), not element by element.
    const bad = { f16: [0x7e00, 0x7c00, 0xfc00], bf16: [0x7fc0, 0x7f80, 0xff80, 0x4780, 0xc780] } as const;
    const kernels = [
      { axis: 1, groupSize: 32, cols: 64 }, // lanes
      { axis: 1, groupSize: 24, cols: 48 }, // thread per group
      { axis: 0, groupSize: 32, cols: 8 }, // 4 columns a thread
      { axis: 0, groupSize: 24, cols: 8 }, // thread per byte column
    ] as const;
    for (const [dtype, values] of Object.entries(bad) as ['f16' | 'bf16', readonly number[]][]) {
      for (const k of kernels) {
        for (const value of values) {
          const rows = k.axis === 0 ? 2 * k.groupSize : 2;
          const input = new Uint16Array(rows * k.cols).fill(dtype === 'f16' ? 0x3c00 : 0x3f80);
          input[input.length - 3] = value;
          const options = { format: 'int4', shape: [rows, k.cols] as [number, number], axis: k.axis, groupSize: k.groupSize, dtype } as const;
          assert.throws(() => cuda.pack(input, options), (e: unknown) => e instanceof KvError && e.code === 'KV_ARGUMENT',
            `${dtype} 0x${value.toString(16)} axis ${k.axis} group ${k.groupSize}`);
        }
      }
    }
  });
});

/** Every packed array of what each (sequence, head) holds, bit for bit; per-slot state as for dense stores. */
function expectSamePacked(device: LayerStore, host: LayerStore, what: string): void {
  assert.deepEqual(Array.from(device.lengths), Array.from(host.lengths), `${what}: lengths`);
  const a = device.packed!;
  const b = host.packed!;
  const d = host.headDim;
  const codeBytes = (d * b.bits) / 8;
  const groups = d / b.groupSize;
  const row = host.dtype === 'f32' ? 4 * d : 2 * d;
  for (let i = 0; i < host.maxSequences * host.kvHeads; i++) {
    const packed = b.packed[i]!;
    const runs = b.runs[i]!;
    const at = `${what}: head ${i}`;
    assert.equal(a.packed[i], packed, `${at} packed`);
    assert.equal(a.runs[i], runs, `${at} runs`);
    const sub = (x: PackedStore, key: keyof PackedStore, from: number, to: number): ArrayBufferView => (x[key] as Uint8Array).subarray(from, to);
    same(sub(a, 'runLengths', i * b.maxRuns, i * b.maxRuns + runs), sub(b, 'runLengths', i * b.maxRuns, i * b.maxRuns + runs), `${at} run lengths`);
    same(sub(a, 'runGenerations', i * b.maxRuns, i * b.maxRuns + runs), sub(b, 'runGenerations', i * b.maxRuns, i * b.maxRuns + runs), `${at} generations`);
    for (const key of ['keyScales', 'keyZeros'] as const) same(sub(a, key, i * b.maxRuns * d, (i * b.maxRuns + runs) * d), sub(b, key, i * b.maxRuns * d, (i * b.maxRuns + runs) * d), `${at} ${key}`);
    for (const key of ['keyCodes', 'valueCodes'] as const) {
      same(sub(a, key, i * b.packedSlots * codeBytes, (i * b.packedSlots + packed) * codeBytes), sub(b, key, i * b.packedSlots * codeBytes, (i * b.packedSlots + packed) * codeBytes), `${at} ${key}`);
    }
    for (const key of ['valueScales', 'valueZeros'] as const) {
      same(sub(a, key, i * b.packedSlots * groups, (i * b.packedSlots + packed) * groups), sub(b, key, i * b.packedSlots * groups, (i * b.packedSlots + packed) * groups), `${at} ${key}`);
    }
    const residual = host.lengths[i]! - packed;
    for (const key of ['residualKeys', 'residualValues'] as const) {
      same(sub(a, key, i * b.residualSlots * row, (i * b.residualSlots + residual) * row), sub(b, key, i * b.residualSlots * row, (i * b.residualSlots + residual) * row), `${at} ${key}`);
    }
    const base = i * host.capacity;
    assert.deepEqual(Array.from(device.positions.subarray(base, base + host.lengths[i]!)), Array.from(host.positions.subarray(base, base + host.lengths[i]!)), `${at} positions`);
  }
}

interface PackedCase {
  readonly dtype: DType;
  readonly headDim: number;
  readonly bits: 2 | 4 | 8;
  readonly groupSize: number;
  readonly queryHeads: number;
  readonly kvHeads: number;
  readonly tracker: ImportanceTracker;
  readonly seed: number;
}

function runPacked(c: PackedCase): void {
  const rng = new Rng(c.seed);
  const { dtype, headDim: d, queryHeads, kvHeads, tracker } = c;
  const format = c.bits === 2 ? 'int2' : c.bits === 4 ? 'int4' : 'int8';
  const storage: PackedStorage = { format, bits: c.bits, groupSize: c.groupSize, residual: 16 + Math.floor(rng.float() * 24) };
  // Small enough that the run table (2 entries per group of packed slots) fills, so that merges run once
  // evictions have thinned the runs and the window keeps packing new ones.
  const capacity = storage.residual + c.groupSize * (2 + Math.floor(rng.float() * 2));
  const spec = { layer: 2, dtype, maxSequences: 2, kvHeads, headDim: d, capacity, auxWords: tracker.auxWords, queryHeads, storage };
  const { host, device } = twins(spec);
  const attention: AttentionSpec = { queryHeads, scale: 1 / Math.sqrt(d) };
  const [rtol, atol] = OUT_TOL[dtype];
  const bitsInput = dtype !== 'f32' && rng.float() < 0.5;
  const seq = 1;
  const kvRow = kvHeads * d;
  const qRow = queryHeads * d;
  const exact = tracker.input !== 'attention';
  let position = 0;
  const state = (): LayerStore => copyStoreToHost(cuda, device);
  const sync = (): void => copyStoreToDevice(cuda, host, device);

  // A prompt (appended, then prefill over its last rows), then decode steps with evictions.
  const count = Math.min(capacity - 8, c.groupSize + storage.residual + Math.floor(rng.float() * c.groupSize));
  const k = hostArray(floats(count * kvRow, rng), dtype, bitsInput);
  const v = hostArray(floats(count * kvRow, rng), dtype, bitsInput);
  cpu.append(host, seq, k, v, count, position, tracker);
  cuda.append(device, seq, k, v, count, position, tracker);
  position += count;
  expectSamePacked(state(), host, 'append');
  const rows = 1 + Math.floor(rng.float() * 8);
  const q = hostArray(floats(rows * qRow, rng, 2), dtype, bitsInput);
  const o1 = bitsInput ? new Uint16Array(rows * qRow) : new Float32Array(rows * qRow);
  const o2 = bitsInput ? new Uint16Array(rows * qRow) : new Float32Array(rows * qRow);
  cpu.prefill(host, seq, q, rows, o1, attention, tracker);
  cuda.prefill(device, seq, q, rows, o2, attention, tracker);
  expectClose(values(o2, dtype), values(o1, dtype), rtol, atol, 'prefill output');
  if (exact) expectSameState(state(), host, 'prefill');
  sync();

  const steps = QUICK ? 3 * c.groupSize : 10 * c.groupSize;
  for (let step = 0; step < steps; step++) {
    const n = host.lengths[seq * kvHeads]!;
    if (n + 1 > capacity) {
      // One token a step once full, as a fixed budget does: thins runs until neighbours merge.
      const drop = 1 + Math.floor(rng.float() * 3);
      cpu.evict(host, seq, drop, 2, 4, step % 2 === 0 ? 'head' : 'layer');
      cuda.evict(device, seq, drop, 2, 4, step % 2 === 0 ? 'head' : 'layer');
      const got = state();
      expectSamePacked(got, host, `evict at step ${step}`);
      expectSameState(got, host, `evict at step ${step}`);
    }
    const k1 = hostArray(floats(kvRow, rng), dtype, bitsInput);
    const v1 = hostArray(floats(kvRow, rng), dtype, bitsInput);
    cpu.append(host, seq, k1, v1, 1, position, tracker);
    cuda.append(device, seq, k1, v1, 1, position, tracker);
    position += 1;
    const q1 = hostArray(floats(qRow, rng, 2), dtype, bitsInput);
    const a = bitsInput ? new Uint16Array(qRow) : new Float32Array(qRow);
    const b = bitsInput ? new Uint16Array(qRow) : new Float32Array(qRow);
    cpu.decode(host, seq, q1, a, attention, tracker);
    cuda.decode(device, seq, q1, b, attention, tracker);
    expectClose(values(b, dtype), values(a, dtype), rtol, atol, `decode ${step} output`);
    const got = state();
    expectSamePacked(got, host, `decode ${step}`);
    if (exact) expectSameState(got, host, `decode ${step}`);
    // Attention-fed scores agree within rounding: the device takes the oracle's state so evictions match.
    if (!exact) sync();
  }
  const p = host.packed!;
  for (let i = 0; i < host.maxSequences * host.kvHeads; i++) {
    for (let r = 0; r < p.runs[i]!; r++) if (p.runGenerations[i * p.maxRuns + r]! > 0) merged++;
  }
  // A cleared sequence starts again from an empty window and run table.
  cpu.clear(host, seq);
  cuda.clear(device, seq);
  const again = Math.min(capacity, storage.residual + c.groupSize + 3);
  const k2 = hostArray(floats(again * kvRow, rng), dtype, bitsInput);
  const v2 = hostArray(floats(again * kvRow, rng), dtype, bitsInput);
  cpu.append(host, seq, k2, v2, again, 0, tracker);
  cuda.append(device, seq, k2, v2, again, 0, tracker);
  expectSamePacked(state(), host, 'append after clear');
  assert.equal(cuda.errors(device), 0, 'device error flags');
}

/** Runs re-quantised by a merge, over every case (the suite checks that merges were exercised). */
let merged = 0;

describe('packed stores on cuda against the cpu oracle', () => {
  const trackers: readonly (() => ImportanceTracker)[] = [
    () => streamingLLM(), () => random({ seed: 3 }), () => keyNorm(), () => h2o(), () => scissorhands({ window: 24 }),
  ];
  const dims = QUICK ? [128] : [64, 128, 256];
  const dtypes: readonly DType[] = QUICK ? ['f16'] : ['f32', 'f16', 'bf16'];
  let index = 0;
  for (const dtype of dtypes) {
    for (const headDim of dims) {
      for (const [, bits] of FORMATS) {
        if (QUICK && bits !== 4) continue;
        const groupSize = [8, 16, 32][index % 3]!;
        const [queryHeads, kvHeads] = ([[4, 2], [8, 2], [6, 3], [2, 2]] as const)[index % 4]!;
        const tracker = trackers[index % trackers.length]!();
        const seed = 500 + index++;
        it(`${dtype} d${headDim} int${bits} g${groupSize} ${queryHeads}/${kvHeads} ${tracker.name} seed ${seed}`, () => {
          runPacked({ dtype, headDim, bits, groupSize, queryHeads, kvHeads, tracker, seed });
        });
      }
    }
  }

  it('exercised run merges', { skip: QUICK }, () => {
    assert.ok(merged > 0, 'no case merged two runs');
  });

  it('refuses an unpackable device input without writing (error flag 8)', () => {
    const storage: PackedStorage = { format: 'int4', bits: 4, groupSize: 32, residual: 32 };
    const tracker = streamingLLM();
    const device = cuda.allocate({ layer: 0, dtype: 'f16', maxSequences: 1, kvHeads: 2, headDim: 64, capacity: 128, auxWords: 0, queryHeads: 2, storage });
    const bad = new Uint16Array(128).fill(encodeElement('f16', 1));
    bad[70] = 0x7c00; // +infinity in f16
    using k = DeviceTensor.fromHost(bad, 'f16');
    using v = DeviceTensor.fromHost(new Uint16Array(128), 'f16');
    cuda.append(device, 0, k as never, v as never, 1, 0, tracker);
    assert.equal(cuda.errors(device), 8);
    assert.equal(copyStoreToHost(cuda, device).lengths[0], 0);
    assert.throws(() => cuda.append(device, 0, bad, new Uint16Array(128), 1, 0, tracker), (e: unknown) => e instanceof KvError && e.code === 'KV_ARGUMENT');
  });
});

interface CacheCase {
  readonly name: string;
  readonly dtype: DType;
  readonly headDim: number;
  readonly storage: Required<PackedStorageOptions>;
  readonly tracker: () => ImportanceTracker;
  /** Tokens per head the policy keeps: a fixed budget of them, or a byte budget that pays for exactly them. */
  readonly tokens: number;
  readonly budget: 'tokens' | 'bytes';
  readonly seed: number;
}

/**
 * A packed KVCache on cuda and one on cpu, fed the same prefills, attends, resets and reopenings: after
 * every call the same kept positions, outputs within the dtype's tolerance and the same byte counts (the
 * device ledger against the host's count over its packed arrays).
 */
function runCache(c: CacheCase): void {
  const rng = new Rng(c.seed);
  const geometry = { layers: 2, queryHeads: 4, kvHeads: 2, headDim: c.headDim };
  const { dtype } = c;
  const layout = { dtype, storage: resolveStorage(c.storage, c.headDim), auxWords: c.tracker().auxWords };
  const make = (backend: 'cpu' | 'cuda'): KVCache => KVCache.create({
    geometry, dtype, backend, maxSequences: 2, storage: c.storage, tracker: c.tracker(),
    policy: c.budget === 'tokens'
      ? fixedBudget({ tokens: c.tokens, sinks: 2, recent: 4 })
      : byteBudget({ bytes: geometry.layers * storeBytesPerSequence(layout, geometry.kvHeads, c.headDim, c.tokens), sinks: 2, recent: 4 }),
  });
  using onGpu = make('cuda');
  using onCpu = make('cpu');
  const [rtol, atol] = OUT_TOL[dtype];
  const bitsInput = dtype !== 'f32';
  const qRow = geometry.queryHeads * c.headDim;
  const kvRow = geometry.kvHeads * c.headDim;
  const seqs = [onGpu.open(), onGpu.open()];
  assert.deepEqual([onCpu.open(), onCpu.open()], seqs);
  const expectSame = (what: string): void => {
    const a = onGpu.stats();
    const b = onCpu.stats();
    for (const key of ['bytesKV', 'bytesUsed', 'peakBytesUsed', 'compressionVsF16', 'tokensKept', 'peakTokensKept', 'evictions', 'bytesPerSequence'] as const) {
      assert.equal(a[key], b[key], `${what}: stats().${key}`);
    }
    for (const seq of seqs.filter((s) => onCpu.isOpen(s))) {
      for (let layer = 0; layer < geometry.layers; layer++) {
        for (let h = 0; h < geometry.kvHeads; h++) {
          assert.deepEqual(Array.from(onGpu.inspect(seq, layer, h).positions), Array.from(onCpu.inspect(seq, layer, h).positions), `${what}: positions of (${seq}, ${layer}, ${h})`);
        }
      }
    }
  };
  const call = (what: string, rows: number, run: (cache: KVCache, q: HostArray, k: HostArray, v: HostArray) => HostArray): void => {
    const q = hostArray(floats(rows * qRow, rng, 2), dtype, bitsInput);
    const k = hostArray(floats(rows * kvRow, rng), dtype, bitsInput);
    const v = hostArray(floats(rows * kvRow, rng), dtype, bitsInput);
    expectClose(values(run(onGpu, q, k, v), dtype), values(run(onCpu, q, k, v), dtype), rtol, atol, `${what} output`);
  };
  const prompt = (seq: number, rows: number): void => {
    for (let layer = 0; layer < geometry.layers; layer++) call(`prefill (${seq}, ${layer})`, rows, (cache, q, k, v) => cache.prefill(seq, layer, q, k, v));
    expectSame(`prefill of ${rows} rows into ${seq}`);
  };
  prompt(seqs[0]!, 20 + Math.floor(rng.float() * 40));
  const steps = (QUICK ? 2 : 4) * c.tokens;
  for (let step = 0; step < steps; step++) {
    for (const seq of seqs) {
      for (let layer = 0; layer < geometry.layers; layer++) call(`step ${step} (${seq}, ${layer})`, 1, (cache, q, k, v) => cache.attend(seq, layer, q, k, v));
    }
    expectSame(`step ${step}`);
    // A sequence emptied (the ledger counts it down) and one closed and opened again, with a new prompt.
    if (step === Math.floor(steps / 3)) {
      onGpu.reset(seqs[1]!);
      onCpu.reset(seqs[1]!);
      expectSame('reset');
      assert.ok(onGpu.stats().peakBytesUsed > onGpu.stats().bytesUsed, 'a reset leaves the peak above what is held');
    }
    if (step === Math.floor((2 * steps) / 3)) {
      onGpu.close(seqs[0]!);
      onCpu.close(seqs[0]!);
      expectSame('close');
      assert.equal(onGpu.open(), seqs[0]);
      assert.equal(onCpu.open(), seqs[0]);
      prompt(seqs[0]!, 1 + Math.floor(rng.float() * 30));
    }
  }
  assert.ok(onCpu.stats().evictions > 0, 'the budget evicted');
  assert.ok(onGpu.view(seqs[1]!, 1, 1).packed! > 0, 'the window packed');
}

describe('KVCache with packed storage on cuda against the cpu backend', () => {
  const cases: readonly CacheCase[] = [
    { name: 'streamingLLM', dtype: 'f16', headDim: 128, storage: { format: 'int4', groupSize: 16, residual: 8 }, tracker: () => streamingLLM(), tokens: 48, budget: 'tokens', seed: 71 },
    { name: 'h2o', dtype: 'bf16', headDim: 64, storage: { format: 'int2', groupSize: 16, residual: 8 }, tracker: () => h2o(), tokens: 40, budget: 'bytes', seed: 72 },
    { name: 'scissorhands', dtype: 'f32', headDim: 256, storage: { format: 'int8', groupSize: 8, residual: 3 }, tracker: () => scissorhands({ window: 24 }), tokens: 64, budget: 'tokens', seed: 73 },
    { name: 'scissorhands', dtype: 'f16', headDim: 128, storage: { format: 'int4', groupSize: 16, residual: 0 }, tracker: () => scissorhands({ window: 40 }), tokens: 80, budget: 'bytes', seed: 74 },
    { name: 'h2o', dtype: 'f16', headDim: 128, storage: { format: 'int4', groupSize: 32, residual: 32 }, tracker: () => h2o(), tokens: 100, budget: 'tokens', seed: 75 },
    { name: 'streamingLLM', dtype: 'bf16', headDim: 64, storage: { format: 'int8', groupSize: 32, residual: 5 }, tracker: () => streamingLLM(), tokens: 48, budget: 'bytes', seed: 76 },
  ];
  for (const c of QUICK ? cases.slice(0, 2) : cases) {
    it(`${c.name} ${c.dtype} d${c.headDim} ${c.storage.format} g${c.storage.groupSize} r${c.storage.residual}, ${c.budget === 'tokens' ? 'fixed budget' : 'byte budget'} of ${c.tokens} tokens`, () => {
      runCache(c);
    });
  }
});
