/**
 * `scissorhands/testing`: fast-check arbitraries, a model of `KVCache` for model-based tests, and
 * the conformance suite that every tracker, policy and backend goes through. Use it to test your own
 * trackers and policies exactly as the built-ins are tested:
 *
 * ```ts
 * import { describe, it } from 'vitest';
 * import { trackerConformance, policyConformance, runConformance } from 'scissorhands/testing';
 * runConformance('my tracker', trackerConformance(() => myTracker()), { describe, it });
 * runConformance('my policy', policyConformance(() => myPolicy({ tokens: 12 })), { describe, it });
 * ```
 *
 * Needs `fast-check` (a peer dependency); imports no test runner.
 * @module
 */
export { attentionRowArb, type AttentionRowConstraints } from './attention-row-arb.js';
export { ATTENTION_ROW_KINDS, type AttentionRowKind, makeAttentionRow } from './attention-row.js';
export { cacheConfigArb, type CacheConfigConstraints } from './cache-config-arb.js';
export {
  AppendCommand, AttendCommand, type CacheCommand, CacheCommandBase, CloseCommand, ClosedSequenceCommand, type DataSpec, DecodeStepCommand,
  ObserveCommand, OpenCommand, PrefillCommand, ResetCommand,
} from './commands.js';
export { type CacheConfig, configLayout, createCache } from './config.js';
export {
  type ConformanceCheck, type ConformanceOptions, type ConformanceRunner, policyConformance, runConformance, trackerConformance,
} from './conformance.js';
export { DATA_KINDS, type DataKind, arrayBits, decodeBits, decodeHost, makeValues, storedBits, toHostArray } from './data.js';
export { geometryArb, type GeometryConstraints } from './geometry-arb.js';
export { INVARIANTS, InvariantError, type InvariantName, KVCacheModel, type KVCacheModelOptions, chooseEvicted } from './model.js';
export { type CacheOperation, applyOperation, cloneOperation, describeOperation } from './operation.js';
export { DEFAULT_OPERATION_WEIGHTS, type OperationName, type OperationsConstraints, operationsArb } from './operations-arb.js';
export { BUILTIN_POLICIES, type BuiltinPolicyName, type PolicySpecConstraints, policySpecArb } from './policy-spec-arb.js';
export { PROMPT_POLICIES, promptConfigArb, promptPolicySpecArb } from './prompt-spec-arb.js';
export { type ReferenceAttention, attentionTolerance, referenceAttention } from './reference-attention.js';
export { Rng } from './rng.js';
export { type ModelRunOptions, type ModelRunReport, checkDeterminism, runModel } from './run.js';
export { type CacheSnapshot, type HeadSnapshot, diffSnapshots, snapshotCache } from './snapshot.js';
export { type Spec, policySpec, trackerSpec } from './spec.js';
export { BUILTIN_TRACKERS, type BuiltinTrackerName, trackerSpecArb } from './tracker-spec-arb.js';
