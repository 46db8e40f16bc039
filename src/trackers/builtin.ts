/**
 * What the built-in trackers share: the type they return and the `gqa` option.
 * @module
 */
import { choiceOption, type OptionBag } from '../core/options.js';
import type { GqaReduce, ImportanceTracker, TrackerKernel } from './tracker.js';

/**
 * A tracker that native backends can run without calling back into JavaScript: its hooks are the
 * reference rule, its {@link TrackerKernel} names the same rule to the native kernels.
 * @example
 * ```ts
 * const t: BuiltinTracker = h2o();
 * t.kernel.kind; // TrackerKind.H2O
 * ```
 */
export interface BuiltinTracker extends ImportanceTracker {
  /** The native rule; always present on built-ins. */
  readonly kernel: TrackerKernel;
}

/**
 * The options of a factory that has none: only `{}` (or nothing) type-checks, and any key is rejected at
 * run time.
 * @example
 * ```ts
 * streamingLLM({}); // same as streamingLLM()
 * ```
 */
export type NoOptions = Readonly<Record<string, never>>;

/** The `gqa` values the built-ins accept. */
const GQA_REDUCES: readonly GqaReduce[] = ['mean', 'max'];

/**
 * Reads the `gqa` option (default `'mean'`, as the oracle's records use the mean of a group).
 * @example
 * ```ts
 * const gqa = gqaOption(readOptions(options, ['gqa']));
 * ```
 */
export function gqaOption(options: OptionBag): GqaReduce {
  return choiceOption(options, 'gqa', 'mean', GQA_REDUCES);
}

/**
 * The observe hook of trackers that do not read attention (never called for them by the backends).
 * @example
 * ```ts
 * const tracker = { ...fields, onAppend, onObserve: ignoreObservation };
 * ```
 */
export function ignoreObservation(): void {
  // Scores of key- and position-based trackers are fixed at append time.
}
