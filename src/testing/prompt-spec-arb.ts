/**
 * The {@link promptConfigArb} arbitrary: cache configurations with a prompt-compression policy.
 * @module
 */
import * as fc from 'fast-check';
import type { BudgetPolicy } from '../policies/policy.js';
import type { CacheConfig } from './config.js';
import { type Spec, policySpec, trackerSpec } from './spec.js';

/**
 * Names of the built-in prompt-compression policies.
 * @example
 * ```ts
 * for (const name of PROMPT_POLICIES) console.log(name);
 * ```
 */
export const PROMPT_POLICIES = ['snapKV', 'pyramidKV', 'adaKV'] as const;

/**
 * Recipes of the built-in prompt policies with small budgets: windows of 1 to 4, 0 to 2 sinks, budgets a
 * few tokens above them, chunks of 1 to 6 rows, every `drop`, `beta` and `floor` the factories accept.
 * @example
 * ```ts
 * fc.sample(promptPolicySpecArb(), 1).map(String); // ['adaKV({"tokens":7,"window":2,"sinks":1,"chunk":3,"drop":1,"floor":0.5})']
 * ```
 */
export function promptPolicySpecArb(): fc.Arbitrary<Spec<BudgetPolicy>> {
  return fc.record({
    name: fc.constantFrom(...PROMPT_POLICIES),
    window: fc.integer({ min: 1, max: 4 }),
    sinks: fc.integer({ min: 0, max: 2 }),
    extra: fc.integer({ min: 1, max: 8 }),
    chunk: fc.integer({ min: 1, max: 6 }),
    beta: fc.integer({ min: 1, max: 20 }),
    floor: fc.constantFrom(0, 0.2, 0.5, 1),
  }).chain(({ name, window, sinks, extra, chunk, beta, floor }) =>
    fc.integer({ min: 1, max: 2 }).map((drop) => policySpec(name, {
      tokens: sinks + window + extra, window, sinks, chunk, drop,
      ...(name === 'pyramidKV' ? { beta } : name === 'adaKV' ? { floor } : {}),
    })));
}

/**
 * Turns a configuration into one whose prompts are compressed: either its policy becomes a prompt policy
 * (a tracker of scope `layer` keeps SnapKV's and PyramidKV's uniform budgets), or, composed, the prompt
 * goes through `snapKVScores()` and a prompt policy while the configuration's tracker decodes under a
 * `fixedBudget` whose protections a compressed head can spare. Storage stays dense.
 * @example
 * ```ts
 * const configs = cacheConfigArb().chain(promptConfigArb);
 * ```
 */
export function promptConfigArb(config: CacheConfig): fc.Arbitrary<CacheConfig> {
  const { storage: _dense, ...dense } = config;
  const layerScope = config.tracker.create().scope === 'layer';
  const prompt = promptPolicySpecArb().filter((p) => !(layerScope && p.create().prompt?.split !== undefined));
  return fc.oneof(
    prompt.map((policy): CacheConfig => ({ ...dense, policy })),
    prompt.chain((policy) => {
      const p = policy.create();
      const least = p.sinks + p.prompt!.window + 1;
      return fc.record({ sinks: fc.integer({ min: 0, max: p.sinks }), recent: fc.integer({ min: 0, max: least - p.sinks - 1 }) })
        .chain(({ sinks, recent }) => {
          const floor = sinks + Math.max(recent, 1);
          return fc.record({ tokens: fc.integer({ min: floor, max: floor + 8 }), drop: fc.integer({ min: 1, max: 2 }) })
            .map(({ tokens, drop }): CacheConfig => ({
              ...dense,
              policy: policySpec('fixedBudget', { tokens, sinks, recent, drop: Math.min(drop, tokens - floor + 1) }),
              prompt: { tracker: trackerSpec('snapKVScores'), policy },
            }));
        });
    }),
  );
}
