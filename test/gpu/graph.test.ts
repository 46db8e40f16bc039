/**
 * An engine can capture its decode step in a CUDA graph: `append` and `decode` with device tensors on the
 * backend's stream are captured in global mode (where any call that synchronises or allocates, from any
 * thread, fails the capture), and replaying the graph step after step gives what the same calls made
 * eagerly give, on dense and packed stores (whose window packs a group during the replays); so does `attend`
 * on a dense store, where the append runs inside the decode kernels. Lengths and
 * clocks live on the device, so replays advance them; the host mirror and the captured position do not
 * (an engine that replays owns the planning of evictions, and positions are what it captured).
 * Through a packed KVCache, `attend` on every layer is captured the same way, its byte ledger update
 * included: the replays keep the ledger exact, so stats() reports the bytes the eager twin reports.
 *
 *   node --test .device/tests/graph.test.mjs
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { LayerStore } from '../../src/backend/backend.js';
import { copyStoreToHost, createCudaBackend } from '../../src/backend/cuda.js';
import { DeviceTensor } from '../../src/backend/device-tensor.js';
import { KVCache } from '../../src/cache/kv-cache.js';
import { f32ToF16Bits } from '../../src/core/dtype.js';
import { loadCuda } from '../../src/native/loader.js';
import { fixedBudget } from '../../src/policies/index.js';
import type { PackedStorage } from '../../src/quant/storage.js';
import { h2o } from '../../src/trackers/index.js';
import { OUT_TOL, Rng, expectClose, values } from './helpers.js';

const raw = loadCuda();

function f16(n: number, rng: Rng): Uint16Array {
  return Uint16Array.from({ length: n }, () => f32ToF16Bits(rng.range(-1, 1)));
}

function sameBytes(a: ArrayBufferView, b: ArrayBufferView, what: string): void {
  assert.equal(Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)), 0, what);
}

describe('the decode step in a CUDA graph', () => {
  const int4: PackedStorage = { format: 'int4', bits: 4, groupSize: 32, residual: 32 };
  // fused: the graph captures `attend` (on a dense store, the append inside the decode kernels) and the
  // eager twin still runs append + decode.
  for (const [storage, fused] of [[undefined, false], [int4, false], [undefined, true]] as const) {
    const name = fused ? 'attend' : 'append + decode';
    it(`${name} captured and replayed, ${storage === undefined ? 'dense f16' : 'packed int4'}`, () => {
      const stream = raw.cudaStreamCreate();
      const backend = createCudaBackend({ stream });
      try {
        const rng = new Rng(11);
        const tracker = h2o();
        const [queryHeads, kvHeads, d] = [8, 2, 128];
        const spec = { layer: 0, dtype: 'f16' as const, maxSequences: 2, kvHeads, headDim: d, capacity: 512, auxWords: tracker.auxWords, queryHeads, ...(storage === undefined ? {} : { storage }) };
        const graphed = backend.allocate(spec);
        const eager = backend.allocate(spec);
        const seq = 1;
        const prompt = 90;
        const k0 = f16(prompt * kvHeads * d, rng);
        const v0 = f16(prompt * kvHeads * d, rng);
        for (const store of [graphed, eager]) backend.append(store, seq, k0, v0, prompt, 0, tracker);
        using k = DeviceTensor.alloc('f16', kvHeads * d);
        using v = DeviceTensor.alloc('f16', kvHeads * d);
        using q = DeviceTensor.alloc('f16', queryHeads * d);
        using outGraph = DeviceTensor.alloc('f16', queryHeads * d);
        using outEager = DeviceTensor.alloc('f16', queryHeads * d);
        const attention = { queryHeads, scale: 1 / Math.sqrt(d) };
        const position = 1000;
        const step = (store: LayerStore, out: DeviceTensor): void => {
          backend.append(store, seq, k as never, v as never, 1, position, tracker);
          backend.decode(store, seq, q as never, out as never, attention, tracker);
        };
        const captured = (store: LayerStore, out: DeviceTensor): void => {
          if (fused) backend.attend(store, seq, k as never, v as never, position, q as never, out as never, attention, tracker);
          else step(store, out);
        };
        const upload = (): void => {
          k.upload(f16(kvHeads * d, rng), stream);
          v.upload(f16(kvHeads * d, rng), stream);
          q.upload(f16(queryHeads * d, rng), stream);
        };
        // One eager step on both first (kernel attributes and occupancy are queried once per process).
        upload();
        captured(graphed, outGraph);
        step(eager, outEager);
        backend.synchronize();

        raw.cudaGraphCaptureBegin(stream);
        let exec = 0n;
        try {
          captured(graphed, outGraph);
        } finally {
          exec = raw.cudaGraphCaptureEnd(stream);
        }
        assert.notEqual(exec, 0n);
        try {
          for (let i = 0; i < 40; i++) {
            upload();
            raw.cudaGraphLaunch(exec, stream);
            step(eager, outEager);
            backend.synchronize();
            const [rtol, atol] = OUT_TOL.f16;
            expectClose(values(outGraph.toHost(undefined, stream), 'f16'), values(outEager.toHost(undefined, stream), 'f16'), rtol, atol, `replay ${i}`);
          }
        } finally {
          raw.cudaGraphDestroy(exec);
        }
        const a = copyStoreToHost(backend, graphed);
        const b = copyStoreToHost(backend, eager);
        assert.deepEqual(Array.from(a.lengths), Array.from(b.lengths), 'lengths');
        assert.equal(a.lengths[seq * kvHeads], prompt + 41, 'the replays advanced the device lengths');
        assert.deepEqual(Array.from(a.steps), Array.from(b.steps), 'clocks');
        sameBytes(a.positions, b.positions, 'positions');
        sameBytes(a.keys, b.keys, 'keys');
        sameBytes(a.values, b.values, 'values');
        if (storage !== undefined) {
          for (const key of ['keyCodes', 'valueCodes', 'keyScales', 'keyZeros', 'valueScales', 'valueZeros', 'runLengths', 'runs', 'packed', 'residualKeys', 'residualValues'] as const) {
            sameBytes(a.packed![key], b.packed![key], key);
          }
          assert.equal(a.packed!.packed[seq * kvHeads], 96, 'the window packed groups during the replays');
        }
        const n = a.lengths[seq * kvHeads]!;
        for (let h = 0; h < kvHeads; h++) {
          const base = (seq * kvHeads + h) * spec.capacity;
          expectClose(a.scores.subarray(base, base + n), b.scores.subarray(base, base + n), 2e-3, 2e-6, `scores of head ${h}`);
        }
        assert.equal(backend.errors(graphed), 0);
      } finally {
        backend.dispose();
        raw.cudaStreamDestroy(stream);
      }
    });
  }
});

describe('a packed KVCache decode step in a CUDA graph', () => {
  it('attend on every layer captured and replayed: outputs, packed bits and stats() bytes of the eager twin', () => {
    const stream = raw.cudaStreamCreate();
    const geometry = { layers: 2, queryHeads: 8, kvHeads: 2, headDim: 128 };
    const make = (): KVCache => KVCache.create({
      geometry, dtype: 'f16', backend: 'cuda', tracker: h2o(), policy: fixedBudget({ tokens: 256 }),
      storage: { format: 'int4', groupSize: 32, residual: 32 },
    });
    // Disposed before the stream is destroyed (a backend waits for its stream when it is disposed).
    const graphed = make();
    const eager = make();
    try {
      graphed.setStream(stream);
      eager.setStream(stream);
      const seq = graphed.open();
      assert.equal(eager.open(), seq);
      const rng = new Rng(12);
      const { layers, queryHeads, kvHeads, headDim: d } = geometry;
      const prompt = 90;
      using pq = DeviceTensor.fromHost(f16(prompt * queryHeads * d, rng), 'f16');
      using pk = DeviceTensor.fromHost(f16(prompt * kvHeads * d, rng), 'f16');
      using pv = DeviceTensor.fromHost(f16(prompt * kvHeads * d, rng), 'f16');
      using pout = DeviceTensor.alloc('f16', prompt * queryHeads * d);
      using k = DeviceTensor.alloc('f16', kvHeads * d);
      using v = DeviceTensor.alloc('f16', kvHeads * d);
      using q = DeviceTensor.alloc('f16', queryHeads * d);
      const outs = Array.from({ length: 2 * layers }, () => DeviceTensor.alloc('f16', queryHeads * d));
      const step = (cache: KVCache, first: number): void => {
        for (let layer = 0; layer < layers; layer++) cache.attend(seq, layer, q, k, v, outs[first + layer]);
      };
      const upload = (): void => {
        k.upload(f16(kvHeads * d, rng), stream);
        v.upload(f16(kvHeads * d, rng), stream);
        q.upload(f16(queryHeads * d, rng), stream);
      };
      for (const cache of [graphed, eager]) for (let layer = 0; layer < layers; layer++) cache.prefill(seq, layer, pq, pk, pv, pout);
      // One eager step on both first (kernel attributes are set once per process).
      upload();
      step(graphed, 0);
      step(eager, layers);
      raw.cudaSynchronize(stream);

      raw.cudaGraphCaptureBegin(stream);
      let exec = 0n;
      try {
        step(graphed, 0);
      } finally {
        exec = raw.cudaGraphCaptureEnd(stream);
      }
      assert.notEqual(exec, 0n);
      const replays = 40;
      try {
        for (let i = 0; i < replays; i++) {
          upload();
          raw.cudaGraphLaunch(exec, stream);
          step(eager, layers);
          raw.cudaSynchronize(stream);
          const [rtol, atol] = OUT_TOL.f16;
          for (let layer = 0; layer < layers; layer++) {
            expectClose(values(outs[layer]!.toHost(undefined, stream), 'f16'), values(outs[layers + layer]!.toHost(undefined, stream), 'f16'), rtol, atol, `replay ${i} layer ${layer}`);
          }
        }
      } finally {
        raw.cudaGraphDestroy(exec);
      }
      for (let layer = 0; layer < layers; layer++) {
        for (let h = 0; h < kvHeads; h++) {
          // view() copies the device store, whose lengths the replays advanced (the host mirror's they did not).
          const a = graphed.view(seq, layer, h);
          const b = eager.view(seq, layer, h);
          assert.equal(a.length, prompt + 1 + replays, 'the replays appended');
          assert.equal(a.length, b.length);
          assert.equal(a.packed, b.packed);
          assert.equal(a.packed, 96, 'the window packed a group during the replays (64 before)');
          sameBytes(a.keys, b.keys, `keys of layer ${layer} head ${h}`);
          sameBytes(a.values, b.values, `values of layer ${layer} head ${h}`);
        }
      }
      const a = graphed.stats();
      const b = eager.stats();
      for (const key of ['bytesKV', 'bytesUsed', 'peakBytesUsed'] as const) assert.equal(a[key], b[key], `stats().${key}`);
      for (const out of outs) out.dispose();
    } finally {
      graphed.dispose();
      eager.dispose();
      raw.cudaStreamDestroy(stream);
    }
  });
});
