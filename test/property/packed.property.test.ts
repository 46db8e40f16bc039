/**
 * Model-based tests of KVCache with packed storage (docs/packing.md), on every backend: every tracker,
 * every built-in policy and byte budgets, every packed format, group sizes 8 to 32, residual windows of
 * 0 to 8 tokens. KVCacheModel checks capacity, protected windows, positions, the policy's counts and the
 * lowest-score rule, stats (exact bytes per sequence, bytes of keys and values), the packed data rules
 * (residual bits exact, values exactly the packer's round trip, keys within half a step or the merge
 * bound) and attention against a full-precision reference over the dequantised kept keys and values. On
 * the cpu backend a reference-backend oracle replays every command: kept positions, scores and, where no
 * near-tie can intervene, the packed bits themselves must agree.
 */
import * as fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Geometry } from '../../src/index.js';
import {
  AttendCommand, type CacheConfig, type DataSpec, PrefillCommand, BUILTIN_TRACKERS, cacheConfigArb, operationsArb, policySpec, policySpecArb,
  runModel, trackerSpec, trackerSpecArb,
} from '../../src/testing/index.js';
import { BACKENDS, CPU_AVAILABLE, runs, seed } from './helpers.js';

/** Small geometries whose head sizes are multiples of 8 (so that some group size divides them). */
const geometries: fc.Arbitrary<Geometry> = fc.record({
  layers: fc.integer({ min: 1, max: 2 }),
  kvHeads: fc.integer({ min: 1, max: 2 }),
  group: fc.integer({ min: 1, max: 3 }),
  headDim: fc.constantFrom(8, 16, 24, 32),
}).map(({ layers, kvHeads, group, headDim }) => ({ layers, queryHeads: kvHeads * group, kvHeads, headDim }));

describe.each(BACKENDS)('KVCache with packed storage against its model on the %s backend', (backend) => {
  for (const name of BUILTIN_TRACKERS) {
    it(`${name}: every invariant, every policy and byte budgets, int2/int4/int8`, () => {
      const configs = cacheConfigArb({
        geometry: geometries, tracker: trackerSpecArb({ names: [name] }), policy: policySpecArb({ maxTokens: 40 }),
        storages: ['int2', 'int4', 'int8'], byteBudgets: true, maxSequences: 2,
      });
      fc.assert(
        fc.property(configs.chain((config) => fc.tuple(fc.constant(config), operationsArb(config, { maxCommands: 30 }))), ([config, commands]) => {
          runModel(config, commands, { backend, oracle: backend === 'reference' ? false : 'reference' });
        }),
        { numRuns: runs(30), ...seed },
      );
    });
  }

  it('long sequences: hundreds of steps through one packed cache, runs packed, evicted and merged', () => {
    const configs = cacheConfigArb({
      geometry: fc.constant({ layers: 1, queryHeads: 2, kvHeads: 1, headDim: 16 }), maxSequences: 1,
      policy: policySpecArb({ names: ['fixedBudget'], maxTokens: 48 }), storages: ['int4', 'int2'],
      tracker: trackerSpecArb({ names: ['random', 'h2o', 'scissorhands'] }),
    });
    fc.assert(
      fc.property(
        configs.chain((config) => fc.tuple(fc.constant(config), operationsArb(config, {
          maxCommands: 200, weights: { open: 0, close: 0, useClosed: 0, reset: 0, prefill: 1, append: 1 },
        }))),
        ([config, commands]) => {
          runModel(config, commands, { backend, oracle: backend === 'reference' ? false : 'reference' });
        },
      ),
      { numRuns: runs(8), ...seed },
    );
  });
});

describe.skipIf(!CPU_AVAILABLE)('packed storage: a near-tie inside a chunked prefill', () => {
  // Found by the tova property above (SCISSORHANDS_PROPERTY_RUNS=100, seed -1813118140, shrunk). The
  // 22-row 'tiny' prefill goes in chunks of 5 and evicts in three of them; TOVA scores an ulp apart made
  // the cpu backend keep position 14 and the reference 13 after one chunk, both evicted it later, so
  // both end with the same positions, but head 1's key groups were packed over different tokens and
  // dequantise differently: the last attend then differed by 0.1 and the model failed with an
  // unexplained [oracle] error. A tolerated divergence, as for any chunked prefill; where the backends
  // break the tie alike (other SIMD paths) there is no divergence and nothing to record.
  it('counts the different packed bits as a chunked-prefill divergence instead of failing', () => {
    const config: CacheConfig = {
      geometry: { layers: 1, queryHeads: 6, kvHeads: 2, headDim: 24 }, tracker: trackerSpec('tova', { gqa: 'max' }),
      policy: policySpec('fixedBudget', { tokens: 22, sinks: 2, recent: 5, drop: 6 }), dtype: 'f32', maxSequences: 2, prefillChunk: 5,
      storage: { format: 'int2', groupSize: 8, residual: 3 },
    };
    const data = (s: number, kind: DataSpec['kind']): DataSpec => ({ seed: s, kind, bits: false, offset: false, out: false });
    const report = runModel(config, [
      new PrefillCommand(0, 0, 5, data(3321574034, 'normal')), new AttendCommand(0, 0, data(478646656, 'normal')),
      new PrefillCommand(0, 0, 3, data(1414291584, 'large')), new PrefillCommand(0, 0, 3, data(1073095013, 'large')),
      new AttendCommand(0, 0, data(2907915304, 'normal')), new PrefillCommand(0, 0, 22, data(2697660208, 'tiny')),
      new AttendCommand(0, 0, data(0, 'normal')),
    ], { backend: 'cpu', oracle: 'reference' });
    for (const divergence of report.divergences) expect(divergence).toMatch(/\[chunked prefill: intermediate kept sets not analysed\]$/);
  });
});
