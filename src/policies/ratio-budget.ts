/**
 * A budget that is a fraction of the tokens a sequence has seen.
 * @module
 */
import { ArgumentError, BudgetError } from '../core/errors.js';
import { checkInt } from '../core/geometry.js';
import { intOption, readOptions } from '../core/options.js';
import { dropOption, evictionCount, protectionOptions } from './budget.js';
import type { BudgetPolicy, EvictionContext } from './policy.js';

/**
 * Options of {@link ratioBudget}.
 * @example
 * ```ts
 * const options: RatioBudgetOptions = { ratio: 0.2, maxTokens: 8192, sinks: 4, recent: 32 };
 * ```
 */
export interface RatioBudgetOptions {
  /** Fraction of the seen tokens kept, in `(0, 1]`. Required. */
  readonly ratio: number;
  /** Longest sequence expected: the capacity reserved is the budget at this length. Required. */
  readonly maxTokens: number;
  /** Smallest budget; default and least `sinks + max(recent, 1)`. */
  readonly minTokens?: number;
  /** First tokens never dropped; default 0. */
  readonly sinks?: number;
  /** Newest tokens never dropped, the incoming ones included; default 10. */
  readonly recent?: number;
  /** Tokens dropped at least, once the budget is exceeded; default 1. */
  readonly drop?: number;
}

/**
 * A {@link BudgetPolicy} made by {@link ratioBudget}, with its settings.
 * @example
 * ```ts
 * const p: RatioBudgetPolicy = ratioBudget({ ratio: 0.25, maxTokens: 4096 });
 * p.budget(1000); // 250
 * ```
 */
export interface RatioBudgetPolicy extends BudgetPolicy {
  /** Fraction of the seen tokens kept. */
  readonly ratio: number;
  /** Sequence length at which the budget reaches the capacity. */
  readonly maxTokens: number;
  /** Smallest budget. */
  readonly minTokens: number;
  /** Tokens dropped at least once the budget is exceeded. */
  readonly drop: number;
  /** The budget once `seen` tokens have been seen (incoming included). */
  budget(seen: number): number;
}

/** `ceil(ratio * n)`, forgiving the last bits of binary rounding so that 0.07 * 100 gives 7, not 8. */
function ceilRatio(ratio: number, n: number): number {
  return Math.ceil(ratio * n * (1 - 2 ** -40));
}

/**
 * Keeps a fixed fraction of what a sequence has seen: after `seen` tokens (the incoming ones included)
 * the budget is `max(minTokens, ceil(ratio * seen))`, capped at the capacity
 * `max(minTokens, ceil(ratio * maxTokens))`. Longer sequences keep the capacity. Eviction counts
 * follow {@link fixedBudget} with the current budget: at least `max(drop, overflow)`, never more than
 * the candidates. A chunk larger than the current budget allows (a long prompt appended at once) is
 * kept whole while it fits the capacity, and later steps bring the cache back to its budget.
 *
 * Checks (typed errors naming the option): `ratio` a number in `(0, 1]`, `maxTokens >= 1`, `sinks`,
 * `recent`, `drop >= 1` integers ({@link ArgumentError}); `minTokens >= sinks + max(recent, 1)` and
 * `drop <= capacity - sinks - max(recent, 1) + 1` ({@link BudgetError}).
 *
 * @example
 * ```ts
 * const policy = ratioBudget({ ratio: 0.2, maxTokens: 8192, sinks: 4, recent: 16 }); // 5x compression
 * policy.capacity(0, geometry); // 1639
 * ```
 */
export function ratioBudget(options: RatioBudgetOptions): RatioBudgetPolicy {
  const o = readOptions(options, ['ratio', 'maxTokens', 'minTokens', 'sinks', 'recent', 'drop']);
  const ratio = o['ratio'];
  if (typeof ratio !== 'number' || !(ratio > 0 && ratio <= 1)) {
    throw new ArgumentError(`expected a number in (0, 1], got ${String(ratio)}`, 'ratio');
  }
  const maxTokens = checkInt(o['maxTokens'], 'maxTokens', 1);
  const protection = protectionOptions(o);
  const { sinks, recent } = protection;
  const minTokens = intOption(o, 'minTokens', protection.floor, 0);
  if (minTokens < protection.floor) {
    throw new BudgetError(
      `minimum budget ${minTokens} is smaller than sinks + max(recent, 1) = ${protection.floor}: a full cache could not take a step`,
      'minTokens',
    );
  }
  const capacity = Math.max(minTokens, ceilRatio(ratio, maxTokens));
  const drop = dropOption(o, capacity, protection);
  const budget = (seen: number): number => Math.min(capacity, Math.max(minTokens, ceilRatio(ratio, seen)));
  return Object.freeze({
    name: 'ratioBudget',
    sinks,
    recent,
    ratio,
    maxTokens,
    minTokens,
    drop,
    budget,
    capacity: (): number => capacity,
    evictions: (context: EvictionContext): number =>
      evictionCount(budget(context.seen + context.incoming), drop, protection, context),
  });
}
