/**
 * KVCache on the cuda backend: the model-based tests of test/property (every invariant of KVCacheModel,
 * a reference-backend oracle replaying every command) with head sizes the kernels are built for, dense and
 * packed, and the device-tensor interop an engine uses (results identical to host arrays, on the engine's
 * stream).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as fc from 'fast-check';
import { DeviceTensor } from '../../src/backend/device-tensor.js';
import { backendInfo } from '../../src/backend/select.js';
import { KVCache } from '../../src/cache/kv-cache.js';
import { loadCuda } from '../../src/native/loader.js';
import { fixedBudget } from '../../src/policies/index.js';
import {
  BUILTIN_TRACKERS, type CacheConfig, PrefillCommand, cacheConfigArb, operationsArb, policySpec, runModel, trackerSpec, trackerSpecArb,
} from '../../src/testing/index.js';
import { h2o, scissorhands } from '../../src/trackers/index.js';
import { Rng, floats } from './helpers.js';

const QUICK = process.env['SH_GPU_QUICK'] === '1';

describe('backendInfo on a GPU machine', () => {
  it('reports the cuda backend available, with the device', () => {
    const info = backendInfo().cuda;
    assert.equal(info.available, true, info.reason);
    assert.ok(info.device !== undefined && info.device.name.length > 0);
    console.log(`cuda: ${info.device?.name} (sm ${info.device?.computeCapability}, ${info.device?.multiProcessors} SMs), archs ${info.archs}`);
  });
});

describe('KVCache against its model on the cuda backend', () => {
  const geometry = fc.constantFrom(
    { layers: 2, queryHeads: 4, kvHeads: 2, headDim: 64 },
    { layers: 1, queryHeads: 8, kvHeads: 2, headDim: 128 },
    { layers: 1, queryHeads: 2, kvHeads: 2, headDim: 256 },
  );
  for (const name of BUILTIN_TRACKERS) {
    it(`${name}: every invariant, a reference oracle`, () => {
      const configs = cacheConfigArb({ geometry, tracker: trackerSpecArb({ names: [name] }) });
      fc.assert(
        fc.property(configs.chain((config) => fc.tuple(fc.constant(config), operationsArb(config, { maxCommands: 30 }))), ([config, commands]) => {
          runModel(config, commands, { backend: 'cuda', oracle: 'reference' });
        }),
        { numRuns: QUICK ? 2 : 12, seed: 4242 },
      );
    });
    // Packed storage: the data invariant on the device's bits, and (trackers without float near-ties) the
    // oracle's byte counts, which the cuda cache reads from its device ledger.
    it(`${name}: packed storage (int2/int4/int8, fixed and byte budgets), every invariant, a reference oracle`, () => {
      const configs = cacheConfigArb({ geometry, tracker: trackerSpecArb({ names: [name] }), storages: ['int2', 'int4', 'int8'], byteBudgets: true, maxSequences: 2 });
      fc.assert(
        fc.property(configs.chain((config) => fc.tuple(fc.constant(config), operationsArb(config, { maxCommands: 30 }))), ([config, commands]) => {
          runModel(config, commands, { backend: 'cuda', oracle: 'reference' });
        }),
        { numRuns: QUICK ? 2 : 20, seed: 4343 },
      );
    });
  }
});

describe('prefill feeds the tracker what the oracle computes', () => {
  // Logits in the hundreds ('large' data): a score's rounding error there is about 1e-5, so a kernel
  // whose score for the softmax and for the tracker differ by a rounding (a multiply fused into the
  // exponent's subtraction) gives a row's only or largest token a probability below 1, and Scissorhands
  // counts it unimportant. Dense and packed stores, every element type, with and without GQA.
  for (const storage of [undefined, { format: 'int4', groupSize: 32, residual: 8 } as const, { format: 'int2', groupSize: 32, residual: 2 } as const]) {
    it(`scissorhands over ${storage?.format ?? 'dense'} stores, large logits, prefills of 1 to 7 rows`, () => {
      for (const dtype of ['f32', 'f16', 'bf16'] as const) {
        for (const [queryHeads, gqa] of [[8, 'mean'], [8, 'max'], [2, 'mean']] as const) {
          const config: CacheConfig = {
            geometry: { layers: 1, queryHeads, kvHeads: 2, headDim: 128 }, tracker: trackerSpec('scissorhands', { gqa }),
            policy: policySpec('fullCache', { maxTokens: 12 }), dtype, maxSequences: 2, prefillChunk: 3, ...(storage === undefined ? {} : { storage }),
          };
          for (let seed = 0; seed < (QUICK ? 3 : 12); seed++) {
            for (const rows of [1, 2, 3, 7]) {
              runModel(config, [new PrefillCommand(0, 0, rows, { seed, kind: 'large', bits: false, offset: false, out: false })], { backend: 'cuda', oracle: 'reference' });
            }
          }
        }
      }
    });
  }
});

describe('device tensors through KVCache', () => {
  it('attend/prefill on device tensors on the engine stream give the bits host arrays give', () => {
    const cuda = loadCuda();
    const stream = cuda.cudaStreamCreate();
    const geometry = { layers: 2, queryHeads: 8, kvHeads: 2, headDim: 128 };
    const make = (): KVCache => KVCache.create({ geometry, dtype: 'f16', backend: 'cuda', tracker: scissorhands({ window: 32 }), policy: fixedBudget({ tokens: 96 }) });
    using onDevice = make();
    using onHost = make();
    onDevice.setStream(stream);
    const a = onDevice.open();
    const b = onHost.open();
    const rng = new Rng(3);
    const [qRow, kvRow] = [8 * 128, 2 * 128];
    const prompt = 40;
    const pq = floats(prompt * qRow, rng);
    const pk = floats(prompt * kvRow, rng);
    const pv = floats(prompt * kvRow, rng);
    using dq = DeviceTensor.fromHost(pq);
    using dk = DeviceTensor.fromHost(pk);
    using dv = DeviceTensor.fromHost(pv);
    using dout = DeviceTensor.alloc('f32', prompt * qRow);
    using q1 = DeviceTensor.alloc('f32', qRow);
    using k1 = DeviceTensor.alloc('f32', kvRow);
    using v1 = DeviceTensor.alloc('f32', kvRow);
    using o1 = DeviceTensor.alloc('f32', qRow);
    for (let layer = 0; layer < 2; layer++) {
      onDevice.prefill(a, layer, dq, dk, dv, dout);
      const expected = onHost.prefill(b, layer, pq, pk, pv);
      const got = dout.toHost(undefined, stream) as Float32Array;
      assert.deepEqual(Array.from(got), Array.from(expected), `prefill layer ${layer}`);
    }
    for (let step = 0; step < 150; step++) {
      const q = floats(qRow, rng);
      const k = floats(kvRow, rng);
      const v = floats(kvRow, rng);
      q1.upload(q, stream);
      k1.upload(k, stream);
      v1.upload(v, stream);
      for (let layer = 0; layer < 2; layer++) {
        onDevice.attend(a, layer, q1, k1, v1, o1);
        const expected = onHost.attend(b, layer, q, k, v);
        const got = o1.toHost(undefined, stream) as Float32Array;
        assert.deepEqual(Array.from(got), Array.from(expected), `step ${step} layer ${layer}`);
      }
    }
    assert.deepEqual(Array.from(onDevice.inspect(a, 1, 1).positions), Array.from(onHost.inspect(b, 1, 1).positions));
    assert.equal(onDevice.stats().tokensKept, onHost.stats().tokensKept);
    onDevice.dispose();
    cuda.cudaStreamDestroy(stream);
  });

  it('observe takes engine probabilities on the device', () => {
    using cache = KVCache.create({ geometry: { layers: 1, queryHeads: 4, kvHeads: 4, headDim: 64 }, dtype: 'bf16', backend: 'cuda', tracker: h2o(), policy: fixedBudget({ tokens: 64 }) });
    const seq = cache.open();
    cache.append(seq, 0, new Float32Array(10 * 256).fill(0.5), new Float32Array(10 * 256).fill(0.25));
    using probs = DeviceTensor.fromHost(new Float32Array(4 * 10).fill(0.1));
    cache.observe(seq, 0, probs);
    const { scores } = cache.inspect(seq, 0, 2);
    assert.deepEqual(Array.from(scores), new Array(10).fill(Math.fround(0.1)));
  });
});
