/**
 * SnapKV's scores: the attention of the observation window, pooled.
 * @module
 */
import { choiceOption, intOption, readOptions } from '../core/options.js';
import { gqaOption, type BuiltinTracker } from './builtin.js';
import { TrackerKind, type AppendedToken, type GqaReduce, type Observation } from './tracker.js';

/**
 * Options of {@link snapKVScores}.
 * @example
 * ```ts
 * const options: SnapKVScoresOptions = { kernel: 7, pooling: 'max' };
 * ```
 */
export interface SnapKVScoresOptions {
  /** Pooling kernel in slots (odd, so that it is centred); default 5. */
  readonly kernel?: number;
  /** `'avg'` (default) or `'max'` pooling. */
  readonly pooling?: 'avg' | 'max';
  /** How the query heads of a KV head combine their probabilities; default `'mean'` (SnapKV averages a GQA group). */
  readonly gqa?: GqaReduce;
}

/**
 * SnapKV's importance: a token's score is the attention it receives, summed in f32 (the rule and native
 * kernel of {@link h2o}); a prompt policy ({@link snapKV}, {@link pyramidKV}, {@link adaKV}) restarts the
 * scores before the observation window of each compressed prefill chunk, so when it chooses, a score is
 * the attention of the window's rows, and it pools the scores (`kernel` slots, `pooling`) before ranking
 * them. While decoding the sums go on (H2O from the observation window on).
 * @example
 * ```ts
 * using cache = KVCache.create({ geometry, tracker: snapKVScores(), policy: snapKV({ tokens: 256 }) });
 * ```
 */
export function snapKVScores(options: SnapKVScoresOptions = {}): BuiltinTracker {
  const o = readOptions(options, ['kernel', 'pooling', 'gqa']);
  const kernel = intOption(o, 'kernel', 5, 1, 1 << 16);
  const mode = choiceOption(o, 'pooling', 'avg', ['avg', 'max'] as const);
  return Object.freeze({
    name: 'snapKVScores',
    input: 'attention',
    scope: 'head',
    auxWords: 0,
    gqa: gqaOption(o),
    kernel: Object.freeze({ kind: TrackerKind.H2O, window: 0, seed: 0 }),
    pooling: Object.freeze({ kernel, mode }),
    onAppend(t: AppendedToken): void {
      t.scores[t.index] = 0;
    },
    onObserve(o: Observation): void {
      // Float32Array stores round each sum to f32, as the native H2O rule does.
      for (let j = 0; j < o.length; j++) o.scores[j] = o.scores[j]! + o.probs[j]!;
    },
  });
}
