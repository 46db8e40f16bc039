/**
 * Budget policies: the interface, the built-ins and their registry.
 * @module
 */
export * from './policy.js';
export { evictionCandidates } from './budget.js';
export { fixedBudget, type FixedBudgetOptions, type FixedBudgetPolicy } from './fixed-budget.js';
export { ratioBudget, type RatioBudgetOptions, type RatioBudgetPolicy } from './ratio-budget.js';
export { fullCache, type FullCacheOptions, type FullCachePolicy } from './full-cache.js';
export {
  layerBudget, allocateLayerBudgets, interpolateLoss,
  type LayerBudgetOptions, type LayerBudgetPolicy, type LayerLossPoint, type AllocationOptions,
} from './layer-budget.js';
export { byteBudget, type ByteBudgetOptions, type ByteBudgetPolicy } from './byte-budget.js';
export {
  snapKV, pyramidKV, adaKV, adaSplit, type PromptPolicyOptions, type PyramidKVOptions, type AdaKVOptions, type PromptPolicy,
} from './prompt.js';
export { policies, type PolicyFactories } from './registry.js';
