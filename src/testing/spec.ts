/**
 * Printable recipes for trackers and policies, so that generated configurations show up in a failing
 * case as `h2o({"gqa":"max"})` rather than as an object full of functions, and every cache built from
 * one gets a fresh instance.
 * @module
 */
import * as fc from 'fast-check';
import type { BudgetPolicy } from '../policies/policy.js';
import { policies } from '../policies/registry.js';
import { trackers } from '../trackers/registry.js';
import type { ImportanceTracker } from '../trackers/tracker.js';

/**
 * A named, printable recipe that makes a fresh `T` each time.
 * @example
 * ```ts
 * const spec: Spec<ImportanceTracker> = trackerSpec('h2o', { gqa: 'max' });
 * const tracker = spec.create();
 * ```
 */
export interface Spec<T> {
  /** Name of the factory (the registry name for built-ins). */
  readonly name: string;
  /** Options passed to the factory, when any. */
  readonly options: Readonly<Record<string, unknown>> | undefined;
  /** Makes a fresh instance. */
  create(): T;
  /** `name(options)`, as failing cases print it. */
  toString(): string;
}

function makeSpec<T>(name: string, options: Readonly<Record<string, unknown>> | undefined, create: () => T): Spec<T> {
  const text = options === undefined ? `${name}()` : `${name}(${JSON.stringify(options)})`;
  return Object.freeze({
    name,
    options,
    create,
    toString: () => text,
    [fc.toStringMethod]: () => text,
  });
}

/**
 * A recipe for a registered tracker (`trackers.create(name, options)`), or for any tracker factory.
 * @example
 * ```ts
 * trackerSpec('scissorhands', { window: 8 });
 * trackerSpec('lastSeen', () => makeLastSeenTracker());
 * ```
 */
export function trackerSpec(
  name: string, options?: Readonly<Record<string, unknown>> | (() => ImportanceTracker),
): Spec<ImportanceTracker> {
  if (typeof options === 'function') return makeSpec(name, undefined, options);
  return makeSpec(name, options, () => trackers.create(name, options));
}

/**
 * A recipe for a registered policy (`policies.create(name, options)`), or for any policy factory.
 * @example
 * ```ts
 * policySpec('fixedBudget', { tokens: 8, recent: 2 });
 * policySpec('mine', () => myPolicy);
 * ```
 */
export function policySpec(
  name: string, options?: Readonly<Record<string, unknown>> | (() => BudgetPolicy),
): Spec<BudgetPolicy> {
  if (typeof options === 'function') return makeSpec(name, undefined, options);
  return makeSpec(name, options, () => policies.create(name, options));
}
