/**
 * The {@link trackerSpecArb} arbitrary.
 * @module
 */
import * as fc from 'fast-check';
import type { ImportanceTracker } from '../trackers/tracker.js';
import { type Spec, trackerSpec } from './spec.js';

/**
 * Names of the built-in trackers, as the registry knows them.
 * @example
 * ```ts
 * for (const name of BUILTIN_TRACKERS) trackers.create(name);
 * ```
 */
export const BUILTIN_TRACKERS = ['scissorhands', 'h2o', 'tova', 'streamingLLM', 'keyNorm', 'random'] as const;

/**
 * One of {@link BUILTIN_TRACKERS}.
 * @example
 * ```ts
 * const name: BuiltinTrackerName = 'tova';
 * ```
 */
export type BuiltinTrackerName = (typeof BUILTIN_TRACKERS)[number];

const gqa = fc.option(fc.constantFrom('mean', 'max'), { nil: undefined });

function withOptions(name: string, options: Record<string, unknown>): Spec<ImportanceTracker> {
  const defined = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
  return trackerSpec(name, Object.keys(defined).length === 0 ? undefined : defined);
}

/**
 * Recipes of built-in trackers with options that matter in short tests: Scissorhands windows from 1
 * to 64 steps (so the bit window wraps, and spans one or more aux words) and 400, both GQA reductions,
 * any `random` seed.
 *
 * @example
 * ```ts
 * import fc from 'fast-check';
 * import { trackerSpecArb } from 'scissorhands/testing';
 * fc.sample(trackerSpecArb({ names: ['h2o', 'tova'] }), 3).map(String); // ['h2o()', 'tova({"gqa":"max"})', ...]
 * ```
 */
export function trackerSpecArb(constraints: { readonly names?: readonly BuiltinTrackerName[] } = {}): fc.Arbitrary<Spec<ImportanceTracker>> {
  const names = constraints.names ?? BUILTIN_TRACKERS;
  const byName: Record<BuiltinTrackerName, fc.Arbitrary<Spec<ImportanceTracker>>> = {
    scissorhands: fc
      .record({ window: fc.option(fc.oneof(fc.integer({ min: 1, max: 64 }), fc.constant(400)), { nil: undefined }), gqa })
      .map((o) => withOptions('scissorhands', o)),
    h2o: fc.record({ gqa }).map((o) => withOptions('h2o', o)),
    tova: fc.record({ gqa }).map((o) => withOptions('tova', o)),
    streamingLLM: fc.constant(trackerSpec('streamingLLM')),
    keyNorm: fc.constant(trackerSpec('keyNorm')),
    random: fc.record({ seed: fc.option(fc.integer({ min: 0, max: 0xffffffff }), { nil: undefined }) }).map((o) => withOptions('random', o)),
  };
  return fc.oneof(...names.map((name) => byName[name]));
}
