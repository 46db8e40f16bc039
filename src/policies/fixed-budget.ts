/**
 * A fixed token budget per (sequence, layer, KV head).
 * @module
 */
import { BudgetError } from '../core/errors.js';
import { checkInt } from '../core/geometry.js';
import { readOptions } from '../core/options.js';
import { dropOption, evictionCount, protectionOptions } from './budget.js';
import type { BudgetPolicy, EvictionContext } from './policy.js';

/**
 * Options of {@link fixedBudget}.
 * @example
 * ```ts
 * const options: FixedBudgetOptions = { tokens: 1024, sinks: 4, recent: 10, drop: 1 };
 * ```
 */
export interface FixedBudgetOptions {
  /** The budget `B`: tokens kept per (sequence, layer, KV head), also the capacity reserved. Required. */
  readonly tokens: number;
  /** First tokens never dropped; default 0. */
  readonly sinks?: number;
  /** Newest tokens never dropped, the incoming ones included; default 10 (Scissorhands' `r`). */
  readonly recent?: number;
  /** Tokens dropped at least, once the budget is exceeded (Scissorhands' `m`); default 1. */
  readonly drop?: number;
}

/**
 * A {@link BudgetPolicy} made by {@link fixedBudget}, with its settings.
 * @example
 * ```ts
 * const p: FixedBudgetPolicy = fixedBudget({ tokens: 512 });
 * p.tokens; // 512
 * ```
 */
export interface FixedBudgetPolicy extends BudgetPolicy {
  /** The budget, also the capacity. */
  readonly tokens: number;
  /** Tokens dropped at least once the budget is exceeded. */
  readonly drop: number;
}

/**
 * Keeps at most `tokens` tokens. Before `incoming` tokens are appended to `length` kept ones, nothing
 * happens while `length + incoming <= tokens`; otherwise `max(drop, length + incoming - tokens)` tokens
 * are dropped (never more than the candidates: kept tokens outside the sinks and the recent window),
 * so with `drop = m` the cache moves between `tokens - m` and `tokens`, as in Scissorhands.
 *
 * Eviction happens before the append, so the incoming tokens are never candidates; `recent` counts
 * them, and `recent` 0 behaves like 1. Checks (typed errors naming the option):
 * `tokens`, `sinks`, `recent`, `drop` integers with `tokens >= 1`, `drop >= 1` ({@link ArgumentError});
 * `tokens >= sinks + max(recent, 1)` so a full cache can still take a step, and
 * `drop <= tokens - sinks - max(recent, 1) + 1`, every candidate of a full single-token step
 * ({@link BudgetError}).
 *
 * Configurations of the oracle (`oracle-eviction.md`) at budget `B`: Scissorhands
 * `{ tokens: B, recent: 10 }` (and `drop: Math.floor(B / 10)` for its `m=B/10` rows); H2O
 * `{ tokens: B, recent: Math.floor(B / 2) }`; TOVA, key norm and random `{ tokens: B, recent: 1 }`;
 * StreamingLLM `{ tokens: B, sinks: 4, recent: 1 }`.
 *
 * @example
 * ```ts
 * const policy = fixedBudget({ tokens: 512, recent: 10 });
 * policy.evictions({ layer: 0, length: 512, incoming: 1, seen: 900 }); // 1
 * ```
 */
export function fixedBudget(options: FixedBudgetOptions): FixedBudgetPolicy {
  const o = readOptions(options, ['tokens', 'sinks', 'recent', 'drop']);
  const tokens = checkInt(o['tokens'], 'tokens', 1);
  const protection = protectionOptions(o);
  const { sinks, recent } = protection;
  if (tokens < protection.floor) {
    throw new BudgetError(
      `budget ${tokens} is smaller than sinks + max(recent, 1) = ${protection.floor}: a full cache could not take a step`,
      'tokens',
    );
  }
  const drop = dropOption(o, tokens, protection);
  return Object.freeze({
    name: 'fixedBudget',
    sinks,
    recent,
    tokens,
    drop,
    capacity: (): number => tokens,
    evictions: (context: EvictionContext): number => evictionCount(tokens, drop, protection, context),
  });
}
