/**
 * Model-based tests of KVCache (fc.commands + fc.modelRun) under every built-in tracker, paired with
 * every built-in policy (small budgets, all sinks/recent/drop mixes), every dtype and small geometries,
 * on every available backend. Every command checks every invariant of KVCacheModel: capacity,
 * protected windows, positions, bit-exact data in every sequence, attention against a full-precision
 * reference over exactly the kept tokens, evictions as the policy asks, the lowest-score rule (the
 * exact rule for score-free trackers), layer scope and stats. On the native backend a reference-backend
 * oracle replays every command too (see differential.property.test.ts for how near-ties are handled).
 */
import * as fc from 'fast-check';
import { describe, it } from 'vitest';
import { BUILTIN_TRACKERS, cacheConfigArb, operationsArb, promptConfigArb, runModel, trackerSpecArb } from '../../src/testing/index.js';
import { BACKENDS, runs, seed } from './helpers.js';

describe.each(BACKENDS)('KVCache against its model on the %s backend', (backend) => {
  for (const name of BUILTIN_TRACKERS) {
    it(`${name}: every invariant, every built-in policy, every dtype`, () => {
      const configs = cacheConfigArb({ tracker: trackerSpecArb({ names: [name] }) });
      fc.assert(
        fc.property(configs.chain((config) => fc.tuple(fc.constant(config), operationsArb(config, { maxCommands: 40 }))), ([config, commands]) => {
          runModel(config, commands, { backend, oracle: backend === 'reference' ? false : 'reference' });
        }),
        { numRuns: runs(60), ...seed },
      );
    });
  }

  it('prompt compression (SnapKV, PyramidKV, Ada-KV, alone or composed): every invariant, heads of different lengths', () => {
    const configs = cacheConfigArb().chain(promptConfigArb);
    fc.assert(
      fc.property(configs.chain((config) => fc.tuple(fc.constant(config), operationsArb(config, { maxCommands: 40 }))), ([config, commands]) => {
        runModel(config, commands, { backend, oracle: backend === 'reference' ? false : 'reference' });
      }),
      { numRuns: runs(60), ...seed },
    );
  });

  it('long sequences: a few hundred decode steps through one small cache', () => {
    const configs = cacheConfigArb({ geometry: fc.constant({ layers: 1, queryHeads: 2, kvHeads: 1, headDim: 5 }), maxSequences: 1 });
    fc.assert(
      fc.property(
        configs.chain((config) => fc.tuple(fc.constant(config), operationsArb(config, {
          maxCommands: 300, weights: { open: 0, close: 0, useClosed: 0, reset: 0, prefill: 1, append: 1 },
        }))),
        ([config, commands]) => {
          runModel(config, commands, { backend, oracle: false });
        },
      ),
      { numRuns: runs(10), ...seed },
    );
  });
});
