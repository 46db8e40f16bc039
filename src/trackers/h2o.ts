/**
 * The H2O (heavy-hitter oracle) tracker.
 * @module
 */
import { readOptions } from '../core/options.js';
import { gqaOption, type BuiltinTracker } from './builtin.js';
import { TrackerKind, type AppendedToken, type GqaReduce, type Observation } from './tracker.js';

/**
 * Options of {@link h2o}.
 * @example
 * ```ts
 * const options: H2OOptions = { gqa: 'max' };
 * ```
 */
export interface H2OOptions {
  /** How the query heads of a KV head combine their probabilities; default `'mean'`. */
  readonly gqa?: GqaReduce;
}

/**
 * Heavy hitters: a token's score is the attention it has received since it entered the cache, summed in
 * f32 (`score = f32(score + p)`); the least attended token goes first.
 *
 * H2O splits the budget between heavy hitters and a recent window, half and half by default; the
 * oracle (`oracle-eviction.md`) protects the newest `budget / 2` positions, the incoming one included.
 *
 * @example
 * ```ts
 * const tracker = h2o();
 * const policy = fixedBudget({ tokens: 512, recent: 256 }); // half heavy hitters, half recent
 * ```
 */
export function h2o(options: H2OOptions = {}): BuiltinTracker {
  const o = readOptions(options, ['gqa']);
  return Object.freeze({
    name: 'h2o',
    input: 'attention',
    scope: 'head',
    auxWords: 0,
    gqa: gqaOption(o),
    kernel: Object.freeze({ kind: TrackerKind.H2O, window: 0, seed: 0 }),
    onAppend(t: AppendedToken): void {
      t.scores[t.index] = 0;
    },
    onObserve(o: Observation): void {
      // Float32Array stores round each sum to f32, so this is f32 accumulation.
      for (let j = 0; j < o.length; j++) o.scores[j] = o.scores[j]! + o.probs[j]!;
    },
  });
}
