/**
 * The key-norm tracker.
 * @module
 */
import { readOptions } from '../core/options.js';
import { ignoreObservation, type BuiltinTracker, type NoOptions } from './builtin.js';
import { TrackerKind, type AppendedToken } from './tracker.js';

/**
 * Minus the L2 norm of the key as stored: `score = -f32(sqrt(sum k_i^2))`, the sum in f64 in element
 * order, so keys with large norms go first and small-norm keys are kept. It needs no attention
 * (`input: 'keys'`). It takes no options (an empty object is accepted, as the registry may pass one).
 *
 * The oracle (`oracle-eviction.md`) protects nothing but the incoming token.
 *
 * @example
 * ```ts
 * const tracker = keyNorm();
 * const policy = fixedBudget({ tokens: 512, recent: 1 });
 * ```
 */
export function keyNorm(options: NoOptions = {}): BuiltinTracker {
  readOptions(options, []);
  return Object.freeze({
    name: 'keyNorm',
    input: 'keys',
    scope: 'head',
    auxWords: 0,
    gqa: 'mean',
    kernel: Object.freeze({ kind: TrackerKind.KeyNorm, window: 0, seed: 0 }),
    onAppend(t: AppendedToken): void {
      let sum = 0;
      for (let i = 0; i < t.key.length; i++) sum += t.key[i]! * t.key[i]!;
      t.scores[t.index] = -Math.fround(Math.sqrt(sum));
    },
    onObserve: ignoreObservation,
  });
}
