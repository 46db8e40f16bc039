/**
 * The importance-tracker interface: how attention (or keys, or positions) becomes a per-token score.
 *
 * Convention shared by every tracker and the eviction kernels: **lower score = evicted first**, ties go
 * to the older token (the lower slot, since slots stay in position order).
 * @module
 */

/** What a tracker needs from the engine at each step. */
export type TrackerInput = 'attention' | 'keys' | 'none';

/** How the probabilities of the query heads that share a KV head are combined. */
export type GqaReduce = 'mean' | 'max';

/** Native tracker kinds; the numbers are the codes the native kernels use. */
export const TrackerKind = {
  /** No native implementation: the backend hands probabilities to the TypeScript hooks. */
  Custom: 0,
  Scissorhands: 1,
  H2O: 2,
  Tova: 3,
  KeyNorm: 4,
  Random: 5,
  Position: 6,
} as const;

/** One of the {@link TrackerKind} codes. */
export type TrackerKind = (typeof TrackerKind)[keyof typeof TrackerKind];

/**
 * Parameters a backend needs to run a built-in tracker natively.
 * @example
 * ```ts
 * const kernel: TrackerKernel = { kind: TrackerKind.Scissorhands, window: 400, seed: 0 };
 * ```
 */
export interface TrackerKernel {
  readonly kind: TrackerKind;
  /** Scissorhands history window `w` in steps (0 for other kinds). */
  readonly window: number;
  /** Seed of the `random` tracker (0 for other kinds). */
  readonly seed: number;
}

/**
 * 1-D pooling of scores along slot order: slot `j` takes the `mode` of slots `j - floor(kernel / 2) ..
 * j + floor(kernel / 2)` of the prompt before the observation window (`avg`: their sum divided by
 * `kernel`, missing slots counting 0, as `avg_pool1d` with zero padding; `max`: the largest present).
 * @example
 * ```ts
 * const pooling: ScorePooling = { kernel: 5, mode: 'avg' };
 * ```
 */
export interface ScorePooling {
  readonly kernel: number;
  readonly mode: 'avg' | 'max';
}

/**
 * A token just written to a head's slot `index`; `scores` and `aux` are that head's whole state rows.
 * @example
 * ```ts
 * onAppend(t: AppendedToken) { t.scores[t.index] = t.position; }
 * ```
 */
export interface AppendedToken {
  readonly seq: number;
  readonly layer: number;
  readonly kvHead: number;
  /** Slot the token occupies. */
  readonly index: number;
  /** Original position of the token in its sequence. */
  readonly position: number;
  /** The key as stored, decoded to f32 (`headDim` elements). */
  readonly key: Float32Array;
  /** Scores of this head (`capacity` elements); write `scores[index]`. */
  readonly scores: Float32Array;
  /** Extra per-token words of this head (`capacity * auxWords`); the token's words start at `index * auxWords`. */
  readonly aux: Uint32Array;
}

/**
 * One attention step seen by one KV head: `probs[j]` is the (GQA-combined) probability of slot `j`,
 * for `j < length`.
 * @example
 * ```ts
 * onObserve(o: Observation) { for (let j = 0; j < o.length; j++) o.scores[j] += o.probs[j]!; }
 * ```
 */
export interface Observation {
  readonly seq: number;
  readonly layer: number;
  readonly kvHead: number;
  /** Tokens attended at this step (`n`). */
  readonly length: number;
  /** Zero-based number of this observation within the (sequence, layer): the tracker's clock. */
  readonly step: number;
  /** Probabilities over the first `length` slots. */
  readonly probs: Float32Array;
  readonly scores: Float32Array;
  readonly aux: Uint32Array;
}

/**
 * Turns what attention showed into a per-token, per-KV-head score. Built-ins also carry a
 * {@link TrackerKernel} so native backends run them without calling back into JavaScript; a tracker
 * written in TypeScript only implements the two hooks (on the CPU backend they run on the host arrays
 * directly; see the embedding guide for what they cost).
 *
 * @example
 * ```ts
 * // Keep the tokens that were attended to most recently.
 * const lastSeen: ImportanceTracker = {
 *   name: 'lastSeen', input: 'attention', scope: 'head', auxWords: 0, gqa: 'max',
 *   onAppend(t) { t.scores[t.index] = t.position; },
 *   onObserve(o) { for (let j = 0; j < o.length; j++) if (o.probs[j]! > 0.05) o.scores[j] = o.step; },
 * };
 * ```
 */
export interface ImportanceTracker {
  readonly name: string;
  readonly input: TrackerInput;
  /** `head`: each KV head evicts on its own scores; `layer`: one decision per layer on the mean over heads. */
  readonly scope: 'head' | 'layer';
  /** Extra 32-bit words of state per token and head. */
  readonly auxWords: number;
  readonly gqa: GqaReduce;
  /** Present on built-ins: lets a native backend run this tracker without calling the hooks. */
  readonly kernel?: TrackerKernel;
  /**
   * Smoothing of the scores over neighbouring slots before a prompt compression chooses what to keep
   * (SnapKV's 1-D pooling); absent: scores are used as they are.
   */
  readonly pooling?: ScorePooling;
  /** Initialises the state of a newly appended token. */
  onAppend(token: AppendedToken): void;
  /** Updates the state after one attention step (only called when `input === 'attention'`). */
  onObserve(observation: Observation): void;
}
