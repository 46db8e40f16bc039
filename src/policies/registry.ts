/**
 * The policy registry: built-in budget policies by name, and room for users' own.
 * @module
 */
import { Registry } from '../core/registry.js';
import { byteBudget } from './byte-budget.js';
import { fixedBudget } from './fixed-budget.js';
import { fullCache } from './full-cache.js';
import { layerBudget } from './layer-budget.js';
import { adaKV, pyramidKV, snapKV } from './prompt.js';
import type { BudgetPolicy } from './policy.js';
import { ratioBudget } from './ratio-budget.js';

/**
 * The built-in policy factories by name; each name is also the `name` of the policies it makes.
 * @example
 * ```ts
 * const make: PolicyFactories['fixedBudget'] = policies.get('fixedBudget');
 * ```
 */
export interface PolicyFactories {
  readonly fixedBudget: typeof fixedBudget;
  readonly ratioBudget: typeof ratioBudget;
  readonly fullCache: typeof fullCache;
  readonly byteBudget: typeof byteBudget;
  readonly layerBudget: typeof layerBudget;
  readonly snapKV: typeof snapKV;
  readonly pyramidKV: typeof pyramidKV;
  readonly adaKV: typeof adaKV;
}

/**
 * Budget-policy factories by name: the built-ins (`fixedBudget`, `ratioBudget`, `fullCache`, `byteBudget`,
 * `layerBudget`, `snapKV`, `pyramidKV`, `adaKV`) and
 * whatever is registered. Registered factories must validate their options.
 * @example
 * ```ts
 * const policy = policies.create('fixedBudget', { tokens: 512, recent: 10 });
 * ```
 */
export const policies: Registry<BudgetPolicy, PolicyFactories> = new Registry('policy', {
  fixedBudget, ratioBudget, fullCache, byteBudget, layerBudget, snapKV, pyramidKV, adaKV,
});
