/**
 * The conformance suite: one shared set of checks that every tracker and every policy goes through,
 * built-in or written by a user, on every backend (the idea of kvpress' shared press test and of
 * tfjs' one op suite run against every backend). It needs no test runner: each check is a function
 * that throws, and {@link runConformance} hands them to whatever `describe`/`it` you use.
 * @module
 */
import * as fc from 'fast-check';
import type { BackendName } from '../backend/select.js';
import type { KVCache } from '../cache/kv-cache.js';
import type { DType } from '../core/dtype.js';
import type { Geometry } from '../core/geometry.js';
import type { BudgetPolicy } from '../policies/policy.js';
import type { ImportanceTracker } from '../trackers/tracker.js';
import { cacheConfigArb } from './cache-config-arb.js';
import type { CacheConfig } from './config.js';
import { geometryArb } from './geometry-arb.js';
import type { InvariantName, KVCacheModel } from './model.js';
import { type OperationsConstraints, operationsArb } from './operations-arb.js';
import { policySpecArb } from './policy-spec-arb.js';
import { checkDeterminism, runModel } from './run.js';
import { type Spec, policySpec, trackerSpec } from './spec.js';
import { BUILTIN_TRACKERS, trackerSpecArb } from './tracker-spec-arb.js';

/**
 * One named check of the suite; `run()` throws (with fast-check's counterexample and seed) on failure.
 * @example
 * ```ts
 * for (const check of trackerConformance(() => myTracker())) check.run();
 * ```
 */
export interface ConformanceCheck {
  readonly name: string;
  run(): void;
}

/**
 * Options of {@link trackerConformance} and {@link policyConformance}.
 * @example
 * ```ts
 * const options: ConformanceOptions = { backends: ['reference', 'cpu'], numRuns: 100, seed: 42 };
 * ```
 */
export interface ConformanceOptions {
  /** Backends to run on; default `['reference']`. Backends other than `reference` also get an agreement check. */
  readonly backends?: readonly BackendName[];
  /** Runs per check; default 15. */
  readonly numRuns?: number;
  /** fast-check seed, to replay a failure; default random (printed on failure). */
  readonly seed?: number;
  /** Most commands per run; default 25. */
  readonly maxCommands?: number;
  /** Stored dtypes to draw; default all. */
  readonly dtypes?: readonly DType[];
  /** Geometries to draw; default {@link geometryArb}(). */
  readonly geometry?: fc.Arbitrary<Geometry>;
  /** {@link trackerConformance}: policies to pair the tracker with; default every built-in, small budgets. */
  readonly policies?: fc.Arbitrary<Spec<BudgetPolicy>>;
  /** {@link policyConformance}: trackers to pair the policy with; default every built-in. */
  readonly trackers?: fc.Arbitrary<Spec<ImportanceTracker>>;
  /**
   * Agreement checks: the share of runs allowed to disagree with the reference backend through
   * explained float near-ties, for trackers that read attention; default 0.1 (plus three binomial
   * standard deviations). Score-free trackers must always agree; an unexplained disagreement fails.
   */
  readonly maxDivergentRuns?: number;
  /** Passed to {@link operationsArb}. */
  readonly operations?: OperationsConstraints;
}

/**
 * A test runner's `describe` and `it` (vitest, jest, mocha, node:test all fit).
 * @example
 * ```ts
 * import { describe, it } from 'vitest';
 * const runner: ConformanceRunner = { describe, it };
 * ```
 */
export interface ConformanceRunner {
  describe(name: string, body: () => void): unknown;
  it(name: string, body: () => void): unknown;
}

const INVARIANT_CHECKS: readonly [string, InvariantName][] = [
  ['keeps no more tokens than the capacity the policy reserves', 'capacity'],
  ['never drops the sinks or the recent window', 'protected'],
  ['keeps original positions unique and strictly increasing', 'positions'],
  ['keeps keys and values bit-identical, leaves inputs and other sequences untouched', 'data'],
  ['attends over exactly the kept keys and values (full-precision reference)', 'attention'],
  ['evicts only when, and exactly as many as, the policy asks', 'policy'],
  ['evicts the lowest-scored candidates (exact rule for score-free built-ins)', 'eviction'],
  ['reports stats consistent with what is kept; bytes reserved constant', 'stats'],
];

interface SuiteParts {
  readonly configs: fc.Arbitrary<CacheConfig>;
  readonly options: ConformanceOptions;
  readonly layerScope: boolean;
  readonly readsAttention: boolean;
}

function params<T>(options: ConformanceOptions): fc.Parameters<T> {
  return { numRuns: options.numRuns ?? 15, ...(options.seed === undefined ? {} : { seed: options.seed }) };
}

type Commands = Iterable<fc.Command<KVCacheModel, KVCache>>;

function withCommands(parts: SuiteParts): fc.Arbitrary<[CacheConfig, Commands]> {
  const constraints: OperationsConstraints = { maxCommands: parts.options.maxCommands ?? 25, ...parts.options.operations };
  return parts.configs.chain((config) => fc.tuple(fc.constant(config), operationsArb(config, constraints)));
}

function suite(parts: SuiteParts): ConformanceCheck[] {
  const backends = parts.options.backends ?? ['reference'];
  const checks: ConformanceCheck[] = [];
  const tag = (name: string, backend: BackendName): string => (backends.length > 1 ? `${name} [${backend}]` : name);
  const property = (body: (config: CacheConfig, commands: Commands) => void): void => {
    fc.assert(fc.property(withCommands(parts), ([config, commands]) => body(config, commands)), params(parts.options));
  };
  for (const backend of backends) {
    const invariants: [string, InvariantName][] = [...INVARIANT_CHECKS];
    if (parts.layerScope) invariants.push(['keeps the same positions on every head of a layer (scope: layer)', 'layerScope']);
    for (const [name, invariant] of invariants) {
      checks.push({
        name: tag(`${invariant}: ${name}`, backend),
        run: () => property((config, commands) => {
          runModel(config, commands, { backend, oracle: false, checks: [invariant] });
        }),
      });
    }
    checks.push({
      name: tag('determinism: the same operations give the same outputs, kept bits, scores and stats', backend),
      run: () => property((config, commands) => checkDeterminism(config, commands, backend)),
    });
    if (backend !== 'reference') {
      checks.push({
        name: tag('oracle: agrees with the reference backend on kept positions, scores and outputs', backend),
        run: () => {
          const limit = parts.readsAttention ? (parts.options.maxDivergentRuns ?? 0.1) : 0;
          let runs = 0;
          const divergent: string[] = [];
          property((config, commands) => {
            runs += 1;
            const report = runModel(config, commands, {
              backend, oracle: 'reference', checks: ['oracle', 'policy'], tolerateDivergence: parts.readsAttention,
            });
            if (report.divergences.length > 0) divergent.push(`${String(config.tracker)} ${String(config.policy)}: ${report.divergences[0]!}`);
          });
          // A share `limit` of runs, plus three standard deviations of a binomial count, so that short
          // runs are not flaky; a systematic disagreement (a bug) shows up in nearly every run.
          const allowed = Math.floor(limit * runs + 3 * Math.sqrt(runs * limit * (1 - limit)));
          if (divergent.length > allowed) {
            throw new Error(`[oracle] ${divergent.length} of ${runs} runs on ${backend} disagreed with the reference backend `
              + `(at most ${allowed} allowed):\n  ${divergent.slice(0, 5).join('\n  ')}`);
          }
        },
      });
    }
  }
  return checks;
}

function interfaceCheck(name: string, check: () => void): ConformanceCheck {
  return { name, run: check };
}

/**
 * The conformance checks of an importance tracker: every invariant of {@link KVCacheModel} (capacity,
 * protected windows, positions, data, attention, policy, eviction order, stats, layer scope), each as
 * a model-based property over random geometries, dtypes, policies and operation sequences, plus
 * determinism and, on native backends, agreement with the reference backend. Pass a factory: every
 * cache gets a fresh tracker.
 *
 * @example
 * ```ts
 * import { describe, it } from 'vitest';
 * import { trackerConformance, runConformance } from 'scissorhands/testing';
 * runConformance('lastSeen tracker', trackerConformance(() => lastSeen, { backends: ['reference', 'cpu'] }), { describe, it });
 * ```
 */
export function trackerConformance(factory: () => ImportanceTracker, options: ConformanceOptions = {}): ConformanceCheck[] {
  const probe = factory();
  const spec = trackerSpec(typeof probe.name === 'string' ? probe.name : 'tracker', factory);
  const configs = cacheConfigArb({
    tracker: fc.constant(spec),
    policy: options.policies ?? policySpecArb(),
    geometry: options.geometry ?? geometryArb(),
    ...(options.dtypes === undefined ? {} : { dtypes: options.dtypes }),
  });
  return [
    interfaceCheck('interface: declares a name, input, scope, GQA reduction, aux words and both hooks', () => {
      const t = factory();
      const problems: string[] = [];
      if (typeof t.name !== 'string' || t.name.length === 0) problems.push('name must be a non-empty string');
      if (!['attention', 'keys', 'none'].includes(t.input)) problems.push(`input ${String(t.input)} is not attention, keys or none`);
      if (t.scope !== 'head' && t.scope !== 'layer') problems.push(`scope ${String(t.scope)} is not head or layer`);
      if (t.gqa !== 'mean' && t.gqa !== 'max') problems.push(`gqa ${String(t.gqa)} is not mean or max`);
      if (!Number.isInteger(t.auxWords) || t.auxWords < 0) problems.push(`auxWords ${String(t.auxWords)} is not a non-negative integer`);
      if (typeof t.onAppend !== 'function' || typeof t.onObserve !== 'function') problems.push('onAppend and onObserve must be functions');
      if (problems.length > 0) throw new Error(`[interface] ${problems.join('; ')}`);
    }),
    ...suite({ configs, options, layerScope: probe.scope === 'layer', readsAttention: probe.input === 'attention' }),
  ];
}

/**
 * The conformance checks of a budget policy: the same invariants as {@link trackerConformance}, with
 * the policy paired with every built-in tracker (those of scope `head` for a prompt policy with per-head
 * budgets), plus checks of what it declares. Prompt policies (`snapKV`, `pyramidKV`, `adaKV` or yours
 * with a `prompt` rule) also go through the bounds of prompt compression (`docs/semantics.md`). Configure the policy
 * with a small budget (say 4 to 32 tokens) so that short runs overflow it.
 *
 * @example
 * ```ts
 * import { describe, it } from 'vitest';
 * import { policyConformance, runConformance } from 'scissorhands/testing';
 * runConformance('halfBudget', policyConformance(() => halfBudget({ tokens: 12 })), { describe, it });
 * ```
 */
export function policyConformance(policy: BudgetPolicy | (() => BudgetPolicy), options: ConformanceOptions = {}): ConformanceCheck[] {
  const factory = typeof policy === 'function' ? policy : (): BudgetPolicy => policy;
  const probe = factory();
  const spec = policySpec(typeof probe.name === 'string' ? probe.name : 'policy', factory);
  const geometries = options.geometry ?? geometryArb();
  // Per-head budgets (a prompt rule that splits) need trackers that choose per head.
  const perHead = probe.prompt?.split !== undefined;
  const configs = cacheConfigArb({
    tracker: options.trackers ?? trackerSpecArb(perHead ? { names: BUILTIN_TRACKERS.filter((name) => name !== 'tova') } : {}),
    policy: fc.constant(spec),
    geometry: geometries,
    ...(options.dtypes === undefined ? {} : { dtypes: options.dtypes }),
  });
  return [
    interfaceCheck('interface: declares integer sinks and recent, and capacities in [max(1, sinks + recent), 2^24]', () => {
      fc.assert(fc.property(geometries, (geometry) => {
        const p = factory();
        const problems: string[] = [];
        if (typeof p.name !== 'string' || p.name.length === 0) problems.push('name must be a non-empty string');
        if (!Number.isInteger(p.sinks) || p.sinks < 0) problems.push(`sinks ${String(p.sinks)} is not a non-negative integer`);
        if (!Number.isInteger(p.recent) || p.recent < 0) problems.push(`recent ${String(p.recent)} is not a non-negative integer`);
        for (let layer = 0; layer < geometry.layers; layer++) {
          const c = p.capacity(layer, geometry);
          if (!Number.isInteger(c) || c < Math.max(1, p.sinks + p.recent) || c > 2 ** 24) {
            problems.push(`capacity(${layer}) is ${String(c)}`);
          }
        }
        if (problems.length > 0) throw new Error(`[interface] ${problems.join('; ')}`);
      }), params(options));
    }),
    interfaceCheck('interface: answers evictions() with an integer in [0, candidates]', () => {
      fc.assert(fc.property(geometries, fc.nat({ max: 64 }), fc.nat({ max: 64 }), fc.integer({ min: 1, max: 8 }), (geometry, lengthSeed, extra, incomingSeed) => {
        const p = factory();
        for (let layer = 0; layer < geometry.layers; layer++) {
          const capacity = p.capacity(layer, geometry);
          const room = Math.max(1, capacity - p.sinks);
          const incoming = 1 + (incomingSeed - 1) % room;
          const length = Math.min(capacity, lengthSeed % (capacity + 1));
          const seen = length + extra;
          const count = p.evictions({ layer, length, incoming, seen });
          const sinks = Math.min(p.sinks, length);
          const candidates = length - sinks - Math.min(length - sinks, Math.max(0, p.recent - incoming));
          if (!Number.isInteger(count) || count < 0 || count > candidates) {
            throw new Error(`[interface] evictions(${JSON.stringify({ layer, length, incoming, seen })}) is ${String(count)}; ${candidates} candidates`);
          }
        }
      }), params(options));
    }),
    ...suite({ configs, options, layerScope: false, readsAttention: true }),
  ];
}

/**
 * Registers conformance checks with a test runner: one `describe(title)` holding one `it` per check.
 * @example
 * ```ts
 * import { describe, it } from 'vitest';
 * runConformance('h2o', trackerConformance(() => h2o()), { describe, it });
 * ```
 */
export function runConformance(title: string, checks: readonly ConformanceCheck[], runner: ConformanceRunner): void {
  runner.describe(title, () => {
    for (const check of checks) runner.it(check.name, () => check.run());
  });
}
