/**
 * Every CUDA kernel against the CPU oracle (llama.cpp test-backend-ops style), on random shapes: every
 * dtype, head sizes 64/128/256, MHA and GQA groups (including one that does not fill a query batch),
 * every built-in tracker. Stored data, positions and evictions must agree bit for bit; attention outputs
 * and attention-fed scores within per-dtype tolerances (the GPU sums in another order and uses a fast
 * exp); Scissorhands bits may flip only for probabilities within rounding of the 1/n threshold.
 *
 *   node --test .device/tests/kernels.test.mjs        (SH_GPU_QUICK=1: a few cases, for compute-sanitizer)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AttentionSpec, LayerStore } from '../../src/backend/backend.js';
import { DeviceTensor } from '../../src/backend/device-tensor.js';
import { type DType, bytesPerElement } from '../../src/core/dtype.js';
import { KvError } from '../../src/core/errors.js';
import { loadCuda } from '../../src/native/loader.js';
import { h2o, keyNorm, random, scissorhands, streamingLLM, tova } from '../../src/trackers/index.js';
import type { ImportanceTracker } from '../../src/trackers/tracker.js';
import {
  OUT_TOL, Rng, copyStoreToDevice, copyStoreToHost, cpu, cuda, expectClose, expectCloseState, expectSameData, expectSameState,
  floats, hostArray, twins, values,
} from './helpers.js';

const QUICK = process.env['SH_GPU_QUICK'] === '1';
const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];
const DIMS = QUICK ? [128] : [64, 128, 256];
const GROUPS: readonly [number, number][] = QUICK ? [[8, 2]] : [[4, 4], [8, 2], [6, 2], [8, 1], [32, 2]];
const TRACKERS: readonly (() => ImportanceTracker)[] = [
  () => scissorhands({ window: 40 }), () => h2o(), () => tova(), () => keyNorm(), () => random({ seed: 7 }), () => streamingLLM(),
  () => h2o({ gqa: 'max' }), () => scissorhands({ window: 33, gqa: 'max' }),
];

interface Case {
  readonly dtype: DType;
  readonly headDim: number;
  readonly queryHeads: number;
  readonly kvHeads: number;
  readonly tracker: ImportanceTracker;
  readonly seed: number;
}

function runCase(c: Case): void {
  const rng = new Rng(c.seed);
  const { dtype, headDim: d, queryHeads, kvHeads, tracker } = c;
  const capacity = 200 + Math.floor(rng.float() * 300);
  const spec = { layer: 3, dtype, maxSequences: 2, kvHeads, headDim: d, capacity, auxWords: tracker.auxWords, queryHeads };
  const { host, device } = twins(spec);
  const attention: AttentionSpec = { queryHeads, scale: 1 / Math.sqrt(d) };
  const bits = dtype !== 'f32' && rng.float() < 0.5;
  const seq = 1;
  const kvRow = kvHeads * d;
  const qRow = queryHeads * d;
  const sync = (): void => copyStoreToDevice(cuda, host, device);
  const state = (): LayerStore => copyStoreToHost(cuda, device);
  const [rtol, atol] = OUT_TOL[dtype];

  // append: the stored bits and the append rules are exact.
  const count = 40 + Math.floor(rng.float() * (capacity / 2));
  const k = hostArray(floats(count * kvRow, rng), dtype, bits);
  const v = hostArray(floats(count * kvRow, rng), dtype, bits);
  cpu.append(host, seq, k, v, count, 5, tracker);
  cuda.append(device, seq, k, v, count, 5, tracker);
  let got = state();
  expectSameData(got, host, 'append');
  expectSameState(got, host, 'append');

  // prefill: rows appended first, as the cache does.
  const rows = 1 + Math.floor(rng.float() * 40);
  const kp = hostArray(floats(rows * kvRow, rng), dtype, bits);
  const vp = hostArray(floats(rows * kvRow, rng), dtype, bits);
  cpu.append(host, seq, kp, vp, rows, 5 + count, tracker);
  cuda.append(device, seq, kp, vp, rows, 5 + count, tracker);
  const q = hostArray(floats(rows * qRow, rng, 2), dtype, bits);
  const outHost = bits ? new Uint16Array(rows * qRow) : new Float32Array(rows * qRow);
  const outDevice = bits ? new Uint16Array(rows * qRow) : new Float32Array(rows * qRow);
  cpu.prefill(host, seq, q, rows, outHost, attention, tracker);
  cuda.prefill(device, seq, q, rows, outDevice, attention, tracker);
  expectClose(values(outDevice, dtype), values(outHost, dtype), rtol, atol, 'prefill output');
  got = state();
  expectSameData(got, host, 'prefill');
  expectCloseState(got, host, tracker, 'prefill');
  sync();

  // decode steps, one of them from device tensors.
  for (let step = 0; step < 3; step++) {
    const k1 = hostArray(floats(kvRow, rng), dtype, bits);
    const v1 = hostArray(floats(kvRow, rng), dtype, bits);
    const at = host.lengths[seq * kvHeads]!;
    cpu.append(host, seq, k1, v1, 1, 1000 + step, tracker);
    const q1 = hostArray(floats(qRow, rng, 2), dtype, bits);
    const o1 = bits ? new Uint16Array(qRow) : new Float32Array(qRow);
    cpu.decode(host, seq, q1, o1, attention, tracker);
    let o2: Float32Array | Uint16Array;
    if (step === 1) {
      const tensorType: DType = bits ? dtype : 'f32';
      using kt = DeviceTensor.fromHost(k1, tensorType);
      using vt = DeviceTensor.fromHost(v1, tensorType);
      using qt = DeviceTensor.fromHost(q1, tensorType);
      using ot = DeviceTensor.alloc(tensorType, qRow);
      cuda.append(device, seq, kt as never, vt as never, 1, 1000 + step, tracker);
      cuda.decode(device, seq, qt as never, ot as never, attention, tracker);
      o2 = ot.toHost(undefined, cuda.stream);
    } else {
      cuda.append(device, seq, k1, v1, 1, 1000 + step, tracker);
      o2 = bits ? new Uint16Array(qRow) : new Float32Array(qRow);
      cuda.decode(device, seq, q1, o2, attention, tracker);
    }
    expectClose(values(o2, dtype), values(o1, dtype), rtol, atol, `decode ${step} output (length ${at + 1})`);
    got = state();
    expectSameData(got, host, `decode ${step}`);
    expectCloseState(got, host, tracker, `decode ${step}`);
    sync();
  }

  // observe: probabilities given, so the rule is exact.
  const n = host.lengths[seq * kvHeads]!;
  const stride = n + 3;
  const probs = Float32Array.from({ length: queryHeads * stride }, () => rng.float() * 2 / n);
  cpu.observe(host, seq, probs, stride, queryHeads, tracker);
  cuda.observe(device, seq, probs, stride, queryHeads, tracker);
  got = state();
  expectSameData(got, host, 'observe');
  expectSameState(got, host, 'observe');

  // evict, per head and per layer: exact choice (lowest score, ties to the lower slot) and compaction.
  for (const scope of ['head', 'layer'] as const) {
    sync();
    const length = host.lengths[seq * kvHeads]!;
    const sinks = Math.floor(rng.float() * 5);
    const recent = Math.floor(rng.float() * 10);
    const drop = Math.max(1, Math.floor((length - sinks - recent) * 0.2));
    cpu.evict(host, seq, drop, sinks, recent, scope);
    cuda.evict(device, seq, drop, sinks, recent, scope);
    got = state();
    expectSameData(got, host, `evict ${scope}`);
    expectSameState(got, host, `evict ${scope}`);
  }
  assert.equal(cuda.errors(device), 0, 'device error flags');
}

describe('cuda kernels against the cpu oracle', () => {
  let index = 0;
  for (const dtype of DTYPES) {
    for (const headDim of DIMS) {
      for (const [queryHeads, kvHeads] of GROUPS) {
        const make = TRACKERS[index % TRACKERS.length]!;
        const seed = 1000 + index++;
        const tracker = make();
        it(`${dtype} d${headDim} ${queryHeads}/${kvHeads} ${tracker.name}${tracker.gqa === 'max' ? ' (max)' : ''} seed ${seed}`, () => {
          runCase({ dtype, headDim, queryHeads, kvHeads, tracker, seed });
        });
      }
    }
  }
});

describe('cuda kernels at scale', () => {
  it('split-K decode and batched decode over long sequences, many compaction chunks', () => {
    const rng = new Rng(77);
    const dtype: DType = 'f16';
    const [queryHeads, kvHeads, d] = [16, 4, 128];
    const capacity = QUICK ? 1200 : 6000;
    const tracker = scissorhands({ window: 64 });
    const spec = { layer: 0, dtype, maxSequences: 5, kvHeads, headDim: d, capacity, auxWords: tracker.auxWords, queryHeads };
    const { host, device } = twins(spec);
    const attention = { queryHeads, scale: 1 / Math.sqrt(d) };
    const seqs = Int32Array.from([4, 0, 2]);
    for (const seq of seqs) {
      const count = capacity - 10 - seq * 7;
      const k = floats(count * kvHeads * d, rng);
      const v = floats(count * kvHeads * d, rng);
      cpu.append(host, seq, k, v, count, 0, tracker);
      cuda.append(device, seq, k, v, count, 0, tracker);
    }
    const q = floats(seqs.length * queryHeads * d, rng, 3);
    const expected = new Float32Array(q.length);
    for (let b = 0; b < seqs.length; b++) {
      const row = queryHeads * d;
      cpu.decode(host, seqs[b]!, q.subarray(b * row, (b + 1) * row), expected.subarray(b * row, (b + 1) * row), attention, tracker);
    }
    const out = new Float32Array(q.length);
    cuda.decodeBatch(device, seqs, q, out, attention, tracker);
    expectClose(out, expected, ...OUT_TOL.f32, 'batched decode output');
    const got = copyStoreToHost(cuda, device);
    expectSameData(got, host, 'batched decode');
    expectCloseState(got, host, tracker, 'batched decode');
    copyStoreToDevice(cuda, host, device);
    const drop = Math.floor(Math.min(...Array.from(seqs, (seq) => host.lengths[seq * kvHeads]!)) * 0.2);
    for (const seq of seqs) cpu.evict(host, seq, drop, 4, 32, 'head');
    cuda.evictBatch(device, seqs, drop, 4, 32, 'head');
    const after = copyStoreToHost(cuda, device);
    expectSameData(after, host, 'evict 20%');
    expectSameState(after, host, 'evict 20%');
  });

  it('ties and NaN scores: the lowest (score, slot) go, exactly as on the cpu', () => {
    const rng = new Rng(5);
    const tracker = h2o();
    const spec = { layer: 0, dtype: 'bf16' as DType, maxSequences: 1, kvHeads: 3, headDim: 64, capacity: 900, auxWords: 0, queryHeads: 6 };
    const { host, device } = twins(spec);
    const count = 880;
    const k = floats(count * 3 * 64, rng);
    cpu.append(host, 0, k, k, count, 0, tracker);
    for (let i = 0; i < host.scores.length; i++) host.scores[i] = [0, -0, 1, Number.NaN, 0.5, -Infinity][Math.floor(rng.float() * 6)]!;
    for (const scope of ['head', 'layer'] as const) {
      copyStoreToDevice(cuda, host, device);
      const before = Float32Array.from(host.scores);
      cpu.evict(host, 0, 300, 3, 20, scope);
      cuda.evictBatch(device, Int32Array.of(0), 300, 3, 20, scope);
      const got = copyStoreToHost(cuda, device);
      expectSameData(got, host, `ties ${scope}`);
      expectSameState(got, host, `ties ${scope}`);
      host.scores.set(before);
      host.lengths.fill(count);
    }
  });
});

interface AttendCase extends Case {
  /** Tokens kept before the steps: the new slots fall in the first split block, or in a middle or the last one. */
  readonly length: number;
  /** k and v as slices of a fused QKV row (row stride beyond the row), in the store's dtype; else f32. */
  readonly strided: boolean;
}

/** cuda.attend (the append inside the decode kernels) against cpu.append + cpu.decode, three steps. */
function runAttend(c: AttendCase): void {
  const rng = new Rng(c.seed);
  const { dtype, headDim: d, queryHeads, kvHeads, tracker } = c;
  const spec = { layer: 2, dtype, maxSequences: 2, kvHeads, headDim: d, capacity: c.length + 5, auxWords: tracker.auxWords, queryHeads };
  const { host, device } = twins(spec);
  const attention: AttentionSpec = { queryHeads, scale: 1 / Math.sqrt(d) };
  const seq = 1;
  const kvRow = kvHeads * d;
  const qRow = queryHeads * d;
  const k0 = floats(c.length * kvRow, rng);
  const v0 = floats(c.length * kvRow, rng);
  cpu.append(host, seq, k0, v0, c.length, 0, tracker);
  copyStoreToDevice(cuda, host, device);
  const bits = c.strided && dtype !== 'f32';
  const type: DType = bits ? dtype : 'f32';
  const width = qRow + 2 * kvRow;
  const [rtol, atol] = OUT_TOL[dtype];
  for (let step = 0; step < 3; step++) {
    const row = hostArray(floats(width, rng), dtype, bits);
    const q1 = row.subarray(0, qRow);
    const k1 = row.subarray(qRow, qRow + kvRow);
    const v1 = row.subarray(qRow + kvRow);
    const expected = bits ? new Uint16Array(qRow) : new Float32Array(qRow);
    cpu.append(host, seq, k1, v1, 1, c.length + step, tracker);
    cpu.decode(host, seq, q1, expected, attention, tracker);
    using fused = DeviceTensor.fromHost(row, type);
    using out = DeviceTensor.alloc(type, qRow);
    const at = (offset: number): bigint => fused.ptr + BigInt(offset * bytesPerElement(type));
    const q = fused.subarray(0, qRow);
    const k = c.strided ? DeviceTensor.wrap(at(qRow), type, kvRow, { rowLength: kvRow, rowStride: width }) : fused.subarray(qRow, qRow + kvRow);
    const v = c.strided ? DeviceTensor.wrap(at(qRow + kvRow), type, kvRow, { rowLength: kvRow, rowStride: width }) : fused.subarray(qRow + kvRow);
    cuda.attend(device, seq, k, v, c.length + step, q, out, attention, tracker);
    expectClose(values(out.toHost(undefined, cuda.stream), dtype), values(expected, dtype), rtol, atol, `attend ${step} output`);
    const got = copyStoreToHost(cuda, device);
    expectSameData(got, host, `attend ${step}`);
    expectCloseState(got, host, tracker, `attend ${step}`);
    assert.deepEqual(Array.from(device.lengths), Array.from(host.lengths), `attend ${step}: host mirror of the lengths`);
    copyStoreToDevice(cuda, host, device);
  }
  assert.equal(cuda.errors(device), 0, 'device error flags');
}

describe('attend: the append inside the decode kernels, against the cpu append + decode', () => {
  // 1 token: the only split block appends; 700 and 3000: several splits, the new slot in the last one or,
  // with the split count rounded, in a middle one; 32/2 runs two query batches per KV head (both read
  // the new slot); 16/16 and 6/2 the streaming kernel, 8/2 and 32/2 the tiled one.
  const cases: AttendCase[] = QUICK
    ? [{ dtype: 'f16', headDim: 128, queryHeads: 8, kvHeads: 2, tracker: scissorhands({ window: 40 }), length: 700, strided: true, seed: 1 }]
    : [
      { dtype: 'f16', headDim: 128, queryHeads: 8, kvHeads: 2, tracker: scissorhands({ window: 40 }), length: 700, strided: true, seed: 1 },
      { dtype: 'f32', headDim: 64, queryHeads: 16, kvHeads: 16, tracker: h2o(), length: 1, strided: false, seed: 2 },
      { dtype: 'bf16', headDim: 256, queryHeads: 32, kvHeads: 2, tracker: tova(), length: 3000, strided: true, seed: 3 },
      { dtype: 'f16', headDim: 64, queryHeads: 6, kvHeads: 2, tracker: keyNorm(), length: 257, strided: false, seed: 4 },
      { dtype: 'bf16', headDim: 128, queryHeads: 4, kvHeads: 4, tracker: random({ seed: 3 }), length: 3000, strided: false, seed: 5 },
      { dtype: 'f16', headDim: 256, queryHeads: 32, kvHeads: 2, tracker: h2o({ gqa: 'max' }), length: 64, strided: true, seed: 6 },
      { dtype: 'f32', headDim: 128, queryHeads: 8, kvHeads: 1, tracker: streamingLLM(), length: 1500, strided: true, seed: 7 },
    ];
  for (const c of cases) {
    it(`${c.dtype} d${c.headDim} ${c.queryHeads}/${c.kvHeads} ${c.tracker.name}, ${c.length} kept, ${c.strided ? 'strided' : 'f32'} inputs`, () => runAttend(c));
  }

  it('a head without room: the device leaves the store as it was and sets error flag 1, as append does', () => {
    const tracker = h2o();
    const spec = { layer: 0, dtype: 'f16' as DType, maxSequences: 1, kvHeads: 2, headDim: 64, capacity: 6, auxWords: 0, queryHeads: 4 };
    const store = cuda.allocate(spec);
    using k = DeviceTensor.fromHost(floats(6 * 128, new Rng(1)), 'f32');
    cuda.append(store, 0, k as never, k as never, 6, 0, tracker);
    using q = DeviceTensor.alloc('f32', 256);
    q.upload(new Float32Array(256).fill(0.5));
    using out = DeviceTensor.alloc('f32', 256);
    assert.throws(() => cuda.attend(store, 0, k.subarray(0, 128), k.subarray(0, 128), 6, q, out, { queryHeads: 4, scale: 0.125 }, tracker),
      (e: unknown) => e instanceof KvError && e.code === 'KV_BUDGET');
    // The raw call, as a graph replay past the capacity would make it.
    const before = copyStoreToHost(cuda, store);
    const numbers = Float64Array.from([0, 6, 6, 0, 128, 0, 128, 0, 256, 0, 256, 4, 0.125, tracker.kernel!.kind, 0, 0]);
    const pointers = BigUint64Array.from([k.ptr, k.ptr, q.ptr, out.ptr, cuda.stream]);
    loadCuda().cudaAttend((store as unknown as { device: { native: never } }).device.native, numbers, pointers);
    assert.equal(cuda.errors(store), 1, 'no room');
    const after = copyStoreToHost(cuda, store);
    before.steps[0]! += 1; // the decode still ran, over the tokens kept
    expectSameData(after, before, 'a refused attend');
    assert.deepEqual(Array.from(after.lengths), [6, 6]);
  });
});

describe('cuda errors', () => {
  it('an unsupported head size is a typed error at allocation', () => {
    assert.throws(() => cuda.allocate({ layer: 0, dtype: 'f16', maxSequences: 1, kvHeads: 1, headDim: 80, capacity: 8, auxWords: 0 }),
      (e: unknown) => e instanceof KvError && e.code === 'KV_ARGUMENT' && e.argument === 'headDim');
  });

  it('custom trackers and packed storage are refused with typed errors', () => {
    const store = cuda.allocate({ layer: 0, dtype: 'f16', maxSequences: 1, kvHeads: 1, headDim: 64, capacity: 8, auxWords: 0 });
    const custom: ImportanceTracker = {
      name: 'mine', input: 'attention', scope: 'head', auxWords: 0, gqa: 'mean', onAppend() {}, onObserve() {},
    };
    assert.throws(() => cuda.append(store, 0, new Float32Array(64), new Float32Array(64), 1, 0, custom),
      (e: unknown) => e instanceof KvError && e.code === 'KV_BACKEND' && e.argument === 'tracker');
  });

  it('bad device tensors are typed errors, never crashes', () => {
    const tracker = h2o();
    const store = cuda.allocate({ layer: 0, dtype: 'f16', maxSequences: 1, kvHeads: 2, headDim: 64, capacity: 8, auxWords: 0, queryHeads: 4 });
    using wrong = DeviceTensor.alloc('bf16', 128);
    assert.throws(() => cuda.append(store, 0, wrong as never, wrong as never, 1, 0, tracker), (e: unknown) => e instanceof KvError && e.code === 'KV_DTYPE');
    using short = DeviceTensor.alloc('f16', 64);
    assert.throws(() => cuda.append(store, 0, short as never, short as never, 1, 0, tracker), (e: unknown) => e instanceof KvError && e.code === 'KV_SHAPE');
    const gone = DeviceTensor.alloc('f16', 128);
    gone.dispose();
    assert.throws(() => cuda.append(store, 0, gone as never, gone as never, 1, 0, tracker), (e: unknown) => e instanceof KvError && e.code === 'KV_DISPOSED');
    assert.throws(() => loadCuda().cudaMalloc(-1), (e: unknown) => e instanceof KvError && e.code === 'KV_ARGUMENT');
    assert.throws(() => cuda.decode(store, 0, new Float32Array(256), new Float32Array(256), { queryHeads: 4, scale: 1 }, tracker),
      (e: unknown) => e instanceof KvError && e.argument === 'rows');
  });

  it('strided device inputs (a K slice of a fused QKV buffer) append like contiguous ones', () => {
    const rng = new Rng(9);
    const [qh, kvh, d, rows] = [8, 2, 128, 7];
    const tracker = keyNorm();
    const spec = { layer: 0, dtype: 'f16' as DType, maxSequences: 1, kvHeads: kvh, headDim: d, capacity: 16, auxWords: 0, queryHeads: qh };
    const { host, device } = twins(spec);
    const width = (qh + 2 * kvh) * d;
    const qkv = hostArray(floats(rows * width, rng), 'f16', true) as Uint16Array;
    using fused = DeviceTensor.fromHost(qkv, 'f16');
    const elem = BigInt(bytesPerElement('f16'));
    const k = DeviceTensor.wrap(fused.ptr + BigInt(qh * d) * elem, 'f16', rows * kvh * d, { rowLength: kvh * d, rowStride: width, keepAlive: fused });
    const v = DeviceTensor.wrap(fused.ptr + BigInt((qh + kvh) * d) * elem, 'f16', rows * kvh * d, { rowLength: kvh * d, rowStride: width });
    cuda.append(device, 0, k as never, v as never, rows, 0, tracker);
    const kh = new Uint16Array(rows * kvh * d);
    const vh = new Uint16Array(rows * kvh * d);
    for (let r = 0; r < rows; r++) {
      kh.set(qkv.subarray(r * width + qh * d, r * width + (qh + kvh) * d), r * kvh * d);
      vh.set(qkv.subarray(r * width + (qh + kvh) * d, (r + 1) * width), r * kvh * d);
    }
    cpu.append(host, 0, kh, vh, rows, 0, tracker);
    const got = copyStoreToHost(cuda, device);
    expectSameData(got, host, 'strided append');
    expectSameState(got, host, 'strided append');
  });
});
