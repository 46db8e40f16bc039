/**
 * The StreamingLLM (attention sinks) tracker.
 * @module
 */
import { readOptions } from '../core/options.js';
import { ignoreObservation, type BuiltinTracker, type NoOptions } from './builtin.js';
import { TrackerKind, type AppendedToken } from './tracker.js';

/**
 * Position as importance: `score = position`, so the oldest token that is not a sink goes first. It
 * needs no attention (`input: 'none'`). The sinks themselves come from the policy. It takes no options
 * (an empty object is accepted, as the registry may pass one).
 *
 * StreamingLLM keeps 4 sinks and the most recent rest, as the oracle (`oracle-eviction.md`) does.
 *
 * @example
 * ```ts
 * const tracker = streamingLLM();
 * const policy = fixedBudget({ tokens: 512, sinks: 4, recent: 1 });
 * ```
 */
export function streamingLLM(options: NoOptions = {}): BuiltinTracker {
  readOptions(options, []);
  return Object.freeze({
    name: 'streamingLLM',
    input: 'none',
    scope: 'head',
    auxWords: 0,
    gqa: 'mean',
    kernel: Object.freeze({ kind: TrackerKind.Position, window: 0, seed: 0 }),
    onAppend(t: AppendedToken): void {
      t.scores[t.index] = t.position;
    },
    onObserve: ignoreObservation,
  });
}
