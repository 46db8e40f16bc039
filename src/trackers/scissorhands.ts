/**
 * The Scissorhands tracker (Liu et al., NeurIPS 2023, "persistence of importance").
 * @module
 */
import { intOption, readOptions } from '../core/options.js';
import { gqaOption, type BuiltinTracker } from './builtin.js';
import { TrackerKind, type AppendedToken, type GqaReduce, type Observation } from './tracker.js';

/** Largest history window accepted, in steps (2048 aux words per token and head). */
export const MAX_SCISSORHANDS_WINDOW = 65536;

/**
 * Options of {@link scissorhands}.
 * @example
 * ```ts
 * const options: ScissorhandsOptions = { window: 400, gqa: 'mean' };
 * ```
 */
export interface ScissorhandsOptions {
  /** History window `w` in observations: integer in `[1, 65536]`; default 400 (the paper's). */
  readonly window?: number;
  /** How the query heads of a KV head combine their probabilities; default `'mean'`. */
  readonly gqa?: GqaReduce;
}

/**
 * The exact Scissorhands importance record. At every observation over `n` tokens, a token whose
 * probability is below the uniform share `1/n` was unimportant at that step; a token's score is minus
 * the number of unimportant steps among the last `window` observations, so the token most often
 * unimportant has the lowest score and is dropped first (ties go to the older token).
 *
 * The window is exact: one bit per step, `ceil(window / 32)` aux words per token and KV head. Step `t`
 * writes bit `t mod window`, replacing the bit of step `t - window`, and the score moves by the change.
 * Prompt rows count like decode steps (each prefill row is one observation over its causal prefix).
 *
 * The paper's configuration (and the oracle's, `oracle-eviction.md`): window 400, mean over each GQA
 * group, the 10 newest tokens protected (the incoming one included), no sinks, one token dropped per
 * step once full (or `budget / 10` at once for the paper's amortised variant).
 *
 * @example
 * ```ts
 * const tracker = scissorhands();                          // window 400, gqa 'mean'
 * const policy = fixedBudget({ tokens: 512, recent: 10 }); // sinks 0, drop 1
 * const amortised = fixedBudget({ tokens: 512, recent: 10, drop: 51 });
 * ```
 */
export function scissorhands(options: ScissorhandsOptions = {}): BuiltinTracker {
  const o = readOptions(options, ['window', 'gqa']);
  const window = intOption(o, 'window', 400, 1, MAX_SCISSORHANDS_WINDOW);
  const gqa = gqaOption(o);
  const auxWords = Math.ceil(window / 32);
  return Object.freeze({
    name: 'scissorhands',
    input: 'attention',
    scope: 'head',
    auxWords,
    gqa,
    kernel: Object.freeze({ kind: TrackerKind.Scissorhands, window, seed: 0 }),
    onAppend(t: AppendedToken): void {
      // The backend zeroed the token's aux words: no unimportant step recorded yet.
      t.scores[t.index] = 0;
    },
    onObserve(o: Observation): void {
      const threshold = 1 / o.length; // compared in f64, as the contract says
      const bit = o.step % window;
      const word = bit >>> 5;
      const mask = 1 << (bit & 31);
      for (let j = 0; j < o.length; j++) {
        const at = j * auxWords + word;
        const wasUnimportant = (o.aux[at]! & mask) !== 0 ? 1 : 0;
        const unimportant = o.probs[j]! < threshold ? 1 : 0;
        if (unimportant !== wasUnimportant) {
          o.aux[at] = unimportant === 1 ? o.aux[at]! | mask : o.aux[at]! & ~mask;
          o.scores[j] = o.scores[j]! - (unimportant - wasUnimportant);
        }
      }
    },
  });
}
