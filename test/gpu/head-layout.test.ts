/**
 * Per-head store layouts on the GPU against the CPU oracle (docs/semantics.md "Per-head layout" and
 * "Prompt compression"): on random layouts (heads of different capacities and lengths), append, decode,
 * prefill, observe, evict, evictHeads, relayout, poolScores, restartState and clear. Each starts from the
 * host state copied to the device; stored data, positions, layouts and non-attention state agree bit for
 * bit, attention outputs and attention-fed scores within the dtype's tolerances. Then KVCache with SnapKV
 * and Ada-KV prompt compression on the cuda backend keeps exactly the tokens it keeps on the cpu backend.
 *
 *   node --test .device/tests/head-layout.test.mjs        (SH_GPU_QUICK=1: a few cases, for compute-sanitizer)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AttentionSpec, LayerStore } from '../../src/backend/backend.js';
import { KVCache } from '../../src/cache/kv-cache.js';
import { type DType, bytesPerElement } from '../../src/core/dtype.js';
import { KvError } from '../../src/core/errors.js';
import { adaKV, fixedBudget, snapKV } from '../../src/policies/index.js';
import { h2o, keyNorm, random, scissorhands, snapKVScores, streamingLLM } from '../../src/trackers/index.js';
import type { ImportanceTracker } from '../../src/trackers/tracker.js';
import {
  OUT_TOL, Rng, copyStoreToDevice, copyStoreToHost, cpu, cuda, expectClose, expectCloseState, expectSameData, expectSameState,
  floats, hostArray, twins, values,
} from './helpers.js';

const QUICK = process.env['SH_GPU_QUICK'] === '1';
const DTYPES: readonly DType[] = QUICK ? ['f16'] : ['f32', 'f16', 'bf16'];
const DIMS = QUICK ? [64] : [64, 128];

/**
 * Twin stores with a random per-head layout and random contents: each head owns a random capacity (at
 * most the layer's), heads of a sequence packed in order from its first slot with random gaps, and keeps
 * a random number of tokens (at most `fill` of its capacity) with random keys, values, increasing positions, scores (with ties) and aux
 * words. The host store is the oracle; the device store gets a copy.
 */
function randomLayout(
  rng: Rng, dtype: DType, headDim: number, kvHeads: number, queryHeads: number, auxWords: number, fill = 1,
): { host: LayerStore; device: LayerStore } {
  const capacity = 40 + Math.floor(rng.float() * 120);
  const slots = kvHeads * Math.floor(capacity * (0.6 + rng.float() * 0.5));
  const spec = { layer: 2, dtype, maxSequences: 2, kvHeads, headDim, capacity, auxWords, queryHeads, slots };
  const { host, device } = twins(spec);
  const heads = host.heads!;
  const rowBytes = headDim * bytesPerElement(dtype);
  for (let s = 0; s < host.maxSequences; s++) {
    let next = s * slots;
    for (let h = 0; h < kvHeads; h++) {
      const left = (s + 1) * slots - next - (kvHeads - 1 - h);
      const cap = Math.max(1, Math.min(capacity, left, Math.floor(rng.float() * 2 * slots / kvHeads)));
      const i = s * kvHeads + h;
      heads.bases[i] = next;
      heads.capacities[i] = cap;
      const n = Math.floor(rng.float() * (Math.floor(cap * fill) + 1));
      host.lengths[i] = n;
      const k = hostArray(floats(n * headDim, rng), dtype, true);
      const v = hostArray(floats(n * headDim, rng), dtype, true);
      host.keys.set(new Uint8Array(k.buffer, k.byteOffset, k.byteLength), next * rowBytes);
      host.values.set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), next * rowBytes);
      let p = Math.floor(rng.float() * 5);
      for (let j = 0; j < n; j++) {
        host.positions[next + j] = p;
        p += 1 + Math.floor(rng.float() * 3);
        host.scores[next + j] = Math.round(rng.float() * 16) / 8;
        for (let w = 0; w < auxWords; w++) host.aux[(next + j) * auxWords + w] = Math.floor(rng.float() * 2 ** 32);
      }
      next += cap + Math.floor(rng.float() * Math.max(0, (s + 1) * slots - next - cap - (kvHeads - 1 - h)) * 0.2);
    }
    host.steps[s] = 7 + s;
  }
  copyStoreToDevice(cuda, host, device);
  return { host, device };
}

function lengthsOf(store: LayerStore, seq: number): number[] {
  return Array.from(store.lengths.subarray(seq * store.kvHeads, (seq + 1) * store.kvHeads));
}

interface Case {
  readonly dtype: DType;
  readonly headDim: number;
  readonly queryHeads: number;
  readonly kvHeads: number;
  readonly seed: number;
}

function runCase(c: Case): void {
  const rng = new Rng(c.seed);
  const { dtype, headDim: d, queryHeads, kvHeads } = c;
  const [rtol, atol] = OUT_TOL[dtype];
  const attention: AttentionSpec = { queryHeads, scale: 1 / Math.sqrt(d) };
  const state = (device: LayerStore): LayerStore => copyStoreToHost(cuda, device);
  const seq = 1;

  // Tracker-state kernels with Scissorhands (aux words in the per-head plane layout) and exact rules.
  {
    const tracker = scissorhands({ window: 40 });
    const { host, device } = randomLayout(rng, dtype, d, kvHeads, queryHeads, tracker.auxWords);
    expectSameData(state(device), host, 'copy');
    expectSameState(state(device), host, 'copy');

    // evictHeads: a random count per head, with sinks and recent protected.
    const sinks = Math.floor(rng.float() * 3);
    const recent = Math.floor(rng.float() * 4);
    const counts = Int32Array.from(lengthsOf(host, seq), (n) => Math.floor(rng.float() * Math.max(0, n - sinks - recent + 1)));
    cpu.evictHeads!(host, seq, counts, sinks, recent);
    cuda.evictHeads!(device, seq, counts, sinks, recent);
    let got = state(device);
    expectSameData(got, host, 'evictHeads');
    expectSameState(got, host, 'evictHeads');

    // evict with one count: heads of different lengths, scope head.
    const least = Math.min(...lengthsOf(host, 0));
    if (least > 2) {
      cpu.evict(host, 0, 1, 1, 1, 'head');
      cuda.evict(device, 0, 1, 1, 1, 'head');
      got = state(device);
      expectSameData(got, host, 'evict');
      expectSameState(got, host, 'evict');
    }

    // relayout: new capacities between each length and the layer's capacity, moving heads both ways.
    for (let round = 0; round < 3; round++) {
      const lengths = lengthsOf(host, seq);
      const slack = host.heads!.slots - lengths.reduce((a, b) => a + b, 0);
      const caps = Int32Array.from(lengths, (n) => n);
      for (let spare = Math.floor(slack * rng.float()); spare > 0; spare--) {
        const h = Math.floor(rng.float() * kvHeads);
        if (caps[h]! < host.capacity) caps[h]! += 1;
      }
      cpu.relayout!(host, seq, caps);
      cuda.relayout!(device, seq, caps);
      got = state(device);
      expectSameData(got, host, `relayout ${round}`);
      expectSameState(got, host, `relayout ${round}`);
    }

    // poolScores, avg and max, random kernels and ends.
    for (const mode of ['avg', 'max'] as const) {
      const kernel = 1 + Math.floor(rng.float() * 8);
      const ends = Int32Array.from(lengthsOf(host, seq), (n) => Math.floor(rng.float() * (n + 1)));
      cpu.poolScores!(host, seq, kernel, mode, ends);
      cuda.poolScores!(device, seq, kernel, mode, ends);
      expectSameState(state(device), host, `poolScores ${mode} ${kernel}`);
    }

    cpu.restartState!(host, seq, tracker);
    cuda.restartState!(device, seq, tracker);
    expectSameState(state(device), host, 'restartState scissorhands');

    // observe: probabilities given, so the rule is exact.
    const longest = Math.max(...lengthsOf(host, seq), 1);
    const stride = longest + 2;
    const probs = Float32Array.from({ length: queryHeads * stride }, () => rng.float() * 2 / longest);
    cpu.observe(host, seq, probs, stride, queryHeads, tracker);
    cuda.observe(device, seq, probs, stride, queryHeads, tracker);
    got = state(device);
    expectSameData(got, host, 'observe');
    expectSameState(got, host, 'observe');

    // clear: the layout goes back to its even start.
    cpu.clear(host, seq);
    cuda.clear(device, seq);
    expectSameData(state(device), host, 'clear');
    assert.equal(cuda.errors(device), 0, 'device error flags');
  }

  // Attention kernels with H2O: append, prefill and decode over heads of different lengths and capacities.
  {
    const tracker = h2o();
    const { host, device } = randomLayout(rng, dtype, d, kvHeads, queryHeads, 0, 0.7);
    const sync = (): void => copyStoreToDevice(cuda, host, device);
    const room = Math.min(...Array.from({ length: kvHeads }, (_, h) => host.heads!.capacities[seq * kvHeads + h]! - host.lengths[seq * kvHeads + h]!));
    const rows = Math.max(1, Math.min(room, 1 + Math.floor(rng.float() * 12)));
    if (room >= rows) {
      const k = hostArray(floats(rows * kvHeads * d, rng), dtype, true);
      const v = hostArray(floats(rows * kvHeads * d, rng), dtype, true);
      cpu.append(host, seq, k, v, rows, 100, tracker);
      cuda.append(device, seq, k, v, rows, 100, tracker);
      let got = state(device);
      expectSameData(got, host, 'append');
      expectSameState(got, host, 'append');

      const q = hostArray(floats(rows * queryHeads * d, rng, 2), dtype, true);
      const outHost = dtype === 'f32' ? new Float32Array(q.length) : new Uint16Array(q.length);
      const outDevice = dtype === 'f32' ? new Float32Array(q.length) : new Uint16Array(q.length);
      cpu.prefill(host, seq, q, rows, outHost, attention, tracker);
      cuda.prefill(device, seq, q, rows, outDevice, attention, tracker);
      expectClose(values(outDevice, dtype), values(outHost, dtype), rtol, atol, 'prefill output');
      got = state(device);
      expectSameData(got, host, 'prefill');
      expectCloseState(got, host, tracker, 'prefill');
      sync();

      // decode: the query token appended first (every head has room for it after the rows above or not).
      const q1 = hostArray(floats(queryHeads * d, rng, 2), dtype, true);
      const o1 = dtype === 'f32' ? new Float32Array(q1.length) : new Uint16Array(q1.length);
      const o2 = dtype === 'f32' ? new Float32Array(q1.length) : new Uint16Array(q1.length);
      cpu.decode(host, seq, q1, o1, attention, tracker);
      cuda.decode(device, seq, q1, o2, attention, tracker);
      expectClose(values(o2, dtype), values(o1, dtype), rtol, atol, 'decode output');
      got = state(device);
      expectSameData(got, host, 'decode');
      expectCloseState(got, host, tracker, 'decode');
      sync();

      // restartState with each append rule of a tracker without aux words.
      for (const next of [keyNorm(), random({ seed: 11 }), streamingLLM(), tracker] as ImportanceTracker[]) {
        cpu.restartState!(host, seq, next);
        cuda.restartState!(device, seq, next);
        expectSameState(state(device), host, `restartState ${next.name}`);
      }
    }
    // An append beyond a head's own capacity is a budget error, as on the cpu.
    const full = host.heads!.capacities[seq * kvHeads]! - host.lengths[seq * kvHeads]! + 1;
    if (full <= host.capacity) {
      const k = new Float32Array(full * kvHeads * d);
      assert.throws(() => cuda.append(device, seq, k, k, full, 0, tracker), (e: unknown) => e instanceof KvError && e.code === 'KV_BUDGET');
    }
    assert.equal(cuda.errors(device), 0, 'device error flags');
  }
}

describe('per-head layouts: cuda kernels against the cpu oracle', () => {
  let seed = 1;
  for (const dtype of DTYPES) {
    for (const headDim of DIMS) {
      for (const [queryHeads, kvHeads] of (QUICK ? [[8, 4]] : [[8, 4], [8, 2], [6, 3]]) as [number, number][]) {
        const s = seed++;
        it(`${dtype} d${headDim} ${queryHeads}/${kvHeads} seed ${s}`, () => runCase({ dtype, headDim, queryHeads, kvHeads, seed: s }));
      }
    }
  }

  it('packed storage with a per-head layout is a typed error', () => {
    assert.throws(
      () => cuda.allocate({ layer: 0, dtype: 'f16', maxSequences: 1, kvHeads: 2, headDim: 64, capacity: 64, auxWords: 0, slots: 96, storage: { format: 'int4', groupSize: 32, residual: 32 } as never }),
      (e: unknown) => e instanceof KvError && e.code === 'KV_ARGUMENT',
    );
  });
});

describe('prompt compression on the cuda backend', () => {
  const geometry = { layers: 2, queryHeads: 8, kvHeads: 2, headDim: 64 };
  const policies = [
    ['snapKV', () => snapKV({ tokens: 48, window: 8 })],
    ['adaKV', () => adaKV({ tokens: 48, window: 8, chunk: 16 })],
  ] as const;
  for (const [name, policy] of policies) {
    it(`${name}: the same kept tokens per head and bytes as on the cpu`, () => {
      const make = (backend: 'cpu' | 'cuda'): KVCache => KVCache.create({
        geometry, dtype: 'f16', backend, tracker: h2o(), policy: fixedBudget({ tokens: 64, recent: 4 }),
        prompt: { tracker: snapKVScores(), policy: policy() },
      });
      using onDevice = make('cuda');
      using onHost = make('cpu');
      const a = onDevice.open();
      const b = onHost.open();
      const rng = new Rng(name === 'snapKV' ? 21 : 22);
      const qRow = geometry.queryHeads * geometry.headDim;
      const kvRow = geometry.kvHeads * geometry.headDim;
      const prompt = QUICK ? 90 : 150;
      for (let layer = 0; layer < geometry.layers; layer++) {
        const q = floats(prompt * qRow, rng, 2);
        const k = floats(prompt * kvRow, rng, 2);
        const v = floats(prompt * kvRow, rng);
        const outA = onDevice.prefill(a, layer, q, k, v);
        const outB = onHost.prefill(b, layer, q, k, v);
        expectClose(values(outA as Float32Array, 'f32'), values(outB as Float32Array, 'f32'), ...OUT_TOL.f16, `${name} prefill layer ${layer}`);
      }
      for (let layer = 0; layer < geometry.layers; layer++) {
        for (let h = 0; h < geometry.kvHeads; h++) {
          const x = onDevice.inspect(a, layer, h);
          const y = onHost.inspect(b, layer, h);
          assert.deepEqual(Array.from(x.positions), Array.from(y.positions), `${name}: kept positions of layer ${layer} head ${h}`);
          expectClose(x.scores, y.scores, 2e-3, 2e-6, `${name}: scores of layer ${layer} head ${h}`);
        }
      }
      assert.equal(onDevice.stats().bytesKV, onHost.stats().bytesKV, `${name}: bytesKV`);
      // Decoding goes on over the heads' own lengths.
      for (let step = 0; step < 3; step++) {
        for (let layer = 0; layer < geometry.layers; layer++) {
          const q = floats(qRow, rng, 2);
          const k = floats(kvRow, rng);
          const v = floats(kvRow, rng);
          const outA = onDevice.attend(a, layer, q, k, v);
          const outB = onHost.attend(b, layer, q, k, v);
          expectClose(values(outA as Float32Array, 'f32'), values(outB as Float32Array, 'f32'), ...OUT_TOL.f16, `${name} decode ${step}`);
        }
      }
      assert.equal(onDevice.stats().bytesKV, onHost.stats().bytesKV, `${name}: bytesKV after decoding`);
    });
  }
});
