/**
 * The TOVA (token omission via attention) tracker.
 * @module
 */
import { readOptions } from '../core/options.js';
import { gqaOption, type BuiltinTracker } from './builtin.js';
import { TrackerKind, type AppendedToken, type GqaReduce, type Observation } from './tracker.js';

/**
 * Options of {@link tova}.
 * @example
 * ```ts
 * const options: TovaOptions = { gqa: 'mean' };
 * ```
 */
export interface TovaOptions {
  /** How the query heads of a KV head combine their probabilities; default `'mean'`. */
  readonly gqa?: GqaReduce;
}

/**
 * The attention of the latest query only: `score = p`. Its scope is `'layer'`: the backend drops the
 * same tokens from every KV head of the layer, chosen on the mean of the heads' scores.
 *
 * The oracle (`oracle-eviction.md`) protects nothing but the incoming token and has no sinks.
 *
 * @example
 * ```ts
 * const tracker = tova();
 * const policy = fixedBudget({ tokens: 512, recent: 1 });
 * ```
 */
export function tova(options: TovaOptions = {}): BuiltinTracker {
  const o = readOptions(options, ['gqa']);
  return Object.freeze({
    name: 'tova',
    input: 'attention',
    scope: 'layer',
    auxWords: 0,
    gqa: gqaOption(o),
    kernel: Object.freeze({ kind: TrackerKind.Tova, window: 0, seed: 0 }),
    onAppend(t: AppendedToken): void {
      t.scores[t.index] = 0;
    },
    onObserve(o: Observation): void {
      o.scores.set(o.probs.subarray(0, o.length));
    },
  });
}
