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
import { describe, it } from 'vitest';
import type { Geometry } from '../../src/index.js';
import { BUILTIN_TRACKERS, cacheConfigArb, operationsArb, policySpecArb, runModel, trackerSpecArb } from '../../src/testing/index.js';
import { BACKENDS, runs, seed } from './helpers.js';

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
