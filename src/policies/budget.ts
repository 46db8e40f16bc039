/**
 * Arithmetic the token-budget policies share: which kept tokens may be dropped, and how many to drop.
 * @module
 */
import { BudgetError } from '../core/errors.js';
import { intOption, type OptionBag } from '../core/options.js';
import type { BudgetPolicy, EvictionContext } from './policy.js';

/**
 * How many kept tokens an eviction before appending `incoming` tokens may choose from: those after the
 * `sinks` and before the newest `recent` (which count the incoming tokens, so only
 * `max(0, recent - incoming)` of the kept ones are protected).
 * @example
 * ```ts
 * evictionCandidates({ sinks: 4, recent: 10 }, { length: 100, incoming: 1 }); // 100 - 4 - 9 = 87
 * ```
 */
export function evictionCandidates(
  policy: Pick<BudgetPolicy, 'sinks' | 'recent'>,
  context: Pick<EvictionContext, 'length' | 'incoming'>,
): number {
  return Math.max(0, context.length - policy.sinks - Math.max(0, policy.recent - context.incoming));
}

/**
 * Protected windows of a token budget, validated: the smallest budget that still leaves one candidate
 * for a single-token step is `sinks + max(recent, 1)` (the incoming token is never a candidate).
 * @example
 * ```ts
 * const { sinks, recent, floor } = protectionOptions({ sinks: 4, recent: 0 }); // floor 5
 * ```
 */
export interface Protection {
  /** First tokens never dropped. */
  readonly sinks: number;
  /** Newest tokens never dropped, incoming ones included. */
  readonly recent: number;
  /** `sinks + max(recent, 1)`: budgets below this cannot take a decode step once full. */
  readonly floor: number;
}

/**
 * Reads and checks `sinks` (default 0) and `recent` (default 10).
 * @example
 * ```ts
 * const protection = protectionOptions(readOptions(options, ['tokens', 'sinks', 'recent']));
 * ```
 */
export function protectionOptions(o: OptionBag): Protection {
  const sinks = intOption(o, 'sinks', 0, 0);
  const recent = intOption(o, 'recent', 10, 0);
  return { sinks, recent, floor: sinks + Math.max(recent, 1) };
}

/**
 * Reads `drop` (default 1) and checks it against the largest budget: at most
 * `capacity - floor + 1`, every candidate of a full single-token step.
 * @example
 * ```ts
 * const drop = dropOption(o, 512, protection);
 * ```
 */
export function dropOption(o: OptionBag, capacity: number, protection: Protection): number {
  const drop = intOption(o, 'drop', 1, 1);
  const most = capacity - protection.floor + 1;
  if (drop > most) {
    throw new BudgetError(
      `drop ${drop} exceeds ${most}, the tokens a full cache of ${capacity} can drop outside sinks ${protection.sinks} and recent ${protection.recent}`,
      'drop',
    );
  }
  return drop;
}

/**
 * The eviction count of a budget policy: nothing while `length + incoming` fits `budget` (or the head's
 * own `context.budget` when a prompt policy set one), else at least
 * the overflow and at least `drop` (so eviction work is amortised over `drop` steps), never more than
 * the candidates. When even the overflow exceeds the candidates (a chunk too large for a budget that is
 * still growing) the cache holds more than the budget until later steps catch up; the cache's
 * capacity is never exceeded, since it only appends chunks that fit.
 * @example
 * ```ts
 * evictionCount(512, 51, { sinks: 0, recent: 10 }, { layer: 0, length: 512, incoming: 1, seen: 700 }); // 51
 * ```
 */
export function evictionCount(budget: number, drop: number, policy: Pick<BudgetPolicy, 'sinks' | 'recent'>, context: EvictionContext): number {
  const overflow = context.length + context.incoming - (context.budget ?? budget);
  if (overflow <= 0) return 0;
  return Math.min(Math.max(drop, overflow), evictionCandidates(policy, context));
}
