/**
 * The {@link policySpecArb} arbitrary.
 * @module
 */
import * as fc from 'fast-check';
import type { BudgetPolicy } from '../policies/policy.js';
import { type Spec, policySpec } from './spec.js';

/**
 * Names of the built-in policies, as the registry knows them.
 * @example
 * ```ts
 * for (const name of BUILTIN_POLICIES) console.log(name);
 * ```
 */
export const BUILTIN_POLICIES = ['fixedBudget', 'ratioBudget', 'fullCache'] as const;

/**
 * One of {@link BUILTIN_POLICIES}.
 * @example
 * ```ts
 * const name: BuiltinPolicyName = 'ratioBudget';
 * ```
 */
export type BuiltinPolicyName = (typeof BUILTIN_POLICIES)[number];

/**
 * Constraints of {@link policySpecArb}.
 * @example
 * ```ts
 * const c: PolicySpecConstraints = { names: ['fixedBudget'], maxTokens: 8 };
 * ```
 */
export interface PolicySpecConstraints {
  readonly names?: readonly BuiltinPolicyName[];
  /** Largest budget (and capacity); default 16. */
  readonly maxTokens?: number;
}

const protection = fc.record({ sinks: fc.integer({ min: 0, max: 3 }), recent: fc.integer({ min: 0, max: 5 }) });

/**
 * Recipes of built-in policies with small budgets (a few to `maxTokens` tokens) so that short
 * operation sequences overflow them: every mix of sinks (0-3), recent window (0-5) and drop amount
 * that the factory accepts, ratio budgets that grow with the sequence, and full caches that fill up.
 *
 * @example
 * ```ts
 * import fc from 'fast-check';
 * import { policySpecArb } from 'scissorhands/testing';
 * fc.sample(policySpecArb(), 2).map(String); // ['fixedBudget({"tokens":7,"sinks":1,"recent":2,"drop":1})', ...]
 * ```
 */
export function policySpecArb(constraints: PolicySpecConstraints = {}): fc.Arbitrary<Spec<BudgetPolicy>> {
  const names = constraints.names ?? BUILTIN_POLICIES;
  const maxTokens = constraints.maxTokens ?? 16;
  const byName: Record<BuiltinPolicyName, fc.Arbitrary<Spec<BudgetPolicy>>> = {
    fixedBudget: protection.chain(({ sinks, recent }) => {
      const floor = sinks + Math.max(recent, 1);
      const top = Math.max(floor, maxTokens);
      return fc.integer({ min: floor, max: top }).chain((tokens) =>
        fc.integer({ min: 1, max: tokens - floor + 1 }).map((drop) => policySpec('fixedBudget', { tokens, sinks, recent, drop })));
    }),
    ratioBudget: protection.chain(({ sinks, recent }) => {
      const floor = sinks + Math.max(recent, 1);
      return fc
        .record({
          ratio: fc.constantFrom(0.2, 0.25, 1 / 3, 0.5, 0.75, 1),
          maxTokens: fc.integer({ min: 1, max: 3 * Math.max(floor, maxTokens) }),
          minExtra: fc.option(fc.integer({ min: 0, max: 4 }), { nil: undefined }),
        })
        .chain(({ ratio, maxTokens: most, minExtra }) => {
          const minTokens = minExtra === undefined ? floor : floor + minExtra;
          const capacity = Math.max(minTokens, Math.ceil(ratio * most * (1 - 2 ** -40)));
          return fc.integer({ min: 1, max: capacity - floor + 1 }).map((drop) =>
            policySpec('ratioBudget', {
              ratio, maxTokens: most, ...(minExtra === undefined ? {} : { minTokens }), sinks, recent, drop,
            }));
        });
    }),
    fullCache: fc.integer({ min: 1, max: maxTokens }).map((tokens) => policySpec('fullCache', { maxTokens: tokens })),
  };
  return fc.oneof(...names.map((name) => byName[name]));
}
