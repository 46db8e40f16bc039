/**
 * A plain model of {@link KVCache} for model-based tests: what every (sequence, layer, KV head) keeps,
 * predicted from the documented semantics (docs/semantics.md) rather than from any backend.
 * @module
 */
import type { BackendName } from '../backend/select.js';
import type { KVCache } from '../cache/kv-cache.js';
import type { DType, HostArray } from '../core/dtype.js';
import { BudgetError, CapacityError, KvError, KvErrorCode } from '../core/errors.js';
import type { Geometry } from '../core/geometry.js';
import type { BudgetPolicy, EvictionContext, PromptRule } from '../policies/policy.js';
import { TrackerKind, type ImportanceTracker } from '../trackers/tracker.js';
import { createReferencePacker } from '../quant/reference.js';
import { type StorageFormat, type StoreLayout, isPacked, resolveStorage, storeBytesPerSequence } from '../quant/storage.js';
import { type CacheConfig, createCache } from './config.js';
import { arrayBits, decodeBits, decodeHost, storedBits } from './data.js';
import { type CacheOperation, applyOperation, cloneOperation, describeOperation } from './operation.js';
import { attentionTolerance, referenceAttention } from './reference-attention.js';

/**
 * The properties the model checks after every operation.
 * - `capacity`: no head ever keeps more tokens than its layer's capacity.
 * - `protected`: the first `sinks` positions and the newest `recent` positions are always kept.
 * - `positions`: kept positions are unique, strictly increasing and below the tokens seen.
 * - `data`: kept keys and values are bit-identical to what was appended at those positions (in every
 *   open sequence, so an operation on one sequence cannot disturb another); inputs are left untouched.
 *   With packed storage (`docs/packing.md`): residual-window tokens are bit-identical; packed values are
 *   exactly the reference packer's per-token dequantisation of what was appended; packed keys packed once
 *   are within half a step of their run's stored scale (a merged run's keys within a bound that grows
 *   with the merges, from the channel's range).
 * - `attention`: outputs equal a full-precision attention over exactly the kept keys and values.
 * - `policy`: tokens are evicted only when, and exactly as many as, the policy asks (lengths, seen
 *   counts and eviction counters follow the policy's answers).
 * - `eviction`: the evicted tokens are the lowest-scored candidates (by the scores the cache reported
 *   just before); for score-free built-ins (streamingLLM, keyNorm, random) positions and scores are
 *   predicted exactly from their rules.
 * - `layerScope`: a `scope: 'layer'` tracker keeps the same positions on every head of a layer.
 * - `stats`: `stats()` agrees with what is kept: token counts are sums of lengths, bytes used never
 *   exceed bytes reserved, bytes reserved never change, bytes reserved per sequence are exactly what the
 *   storage layout gives at the policy's capacities, bytes of keys and values agree with what is packed
 *   and what is in the residual window, and `compressionVsF16` is `bytesF16 / bytesKV`.
 * - `oracle`: a second cache on the oracle backend, given the same operations, keeps the same positions
 *   and scores and returns the same outputs (exactly on the same backend, within tolerance across backends),
 *   and (unless float near-ties are tolerated) reports the same `bytesKV`, `bytesUsed`, `peakBytesUsed`,
 *   `compressionVsF16` and `peakTokensKept`.
 * @example
 * ```ts
 * const checks: InvariantName[] = ['capacity', 'protected'];
 * ```
 */
export type InvariantName =
  | 'capacity' | 'protected' | 'positions' | 'data' | 'attention' | 'policy' | 'eviction' | 'layerScope' | 'stats' | 'oracle';

/**
 * Every {@link InvariantName}.
 * @example
 * ```ts
 * new KVCacheModel(config, { checks: INVARIANTS.filter((c) => c !== 'oracle') });
 * ```
 */
export const INVARIANTS: readonly InvariantName[] = [
  'capacity', 'protected', 'positions', 'data', 'attention', 'policy', 'eviction', 'layerScope', 'stats', 'oracle',
];

/**
 * A broken invariant: which one, and what was seen.
 * @example
 * ```ts
 * try { model.step(cache, op); } catch (e) { if (e instanceof InvariantError) console.log(e.invariant); }
 * ```
 */
export class InvariantError extends Error {
  readonly invariant: InvariantName;
  constructor(invariant: InvariantName, message: string) {
    super(`[${invariant}] ${message}`);
    this.invariant = invariant;
    this.name = 'InvariantError';
  }
}

/**
 * Options of {@link KVCacheModel}.
 * @example
 * ```ts
 * const options: KVCacheModelOptions = { oracle: 'reference', checks: ['capacity'] };
 * ```
 */
export interface KVCacheModelOptions {
  /**
   * Backend of the oracle cache, or `false` for none; default `'reference'`. The oracle replays every
   * operation; its kept positions, scores and outputs are compared with the cache under test.
   */
  readonly oracle?: BackendName | false;
  /**
   * Whether a disagreement with the oracle is recorded in {@link KVCacheModel.divergences} (and the
   * oracle dropped for the rest of the run) instead of failing. Default: only when the cache under test
   * runs on another backend than the oracle and a tracker (the prompt's too) reads attention, where float near-ties
   * (a probability within an ulp of Scissorhands' `1/n`, two accumulated scores within an ulp) may
   * legitimately be broken differently.
   */
  readonly tolerateDivergence?: boolean;
  /** Invariants to check; default all of {@link INVARIANTS}. */
  readonly checks?: readonly InvariantName[];
}

interface Token {
  readonly position: number;
  readonly key: Uint32Array;
  readonly value: Uint32Array;
}

interface LayerState {
  seen: number;
  /** Kept positions per KV head, in slot order. */
  kept: number[][];
  /** Every token appended since the last reset, per KV head, by position. */
  history: Map<number, Token>[];
  /** Composed configurations: the prompt tracker holds the scores (after a prefill, until the next decode). */
  prompting: boolean;
}

interface Captured {
  readonly positions: Int32Array[];
  readonly scores: Float32Array[];
}

interface LastOperation {
  readonly op: Extract<CacheOperation, { op: 'attend' | 'prefill' | 'append' }>;
  readonly plan: Plan;
  readonly seenBefore: number;
  readonly real: Captured;
  readonly oracle: Captured | undefined;
}

interface Chunk {
  readonly start: number;
  readonly rows: number;
  /** Tokens each KV head drops before the chunk. */
  readonly evict: readonly number[];
  /** The policy's protections for this chunk (clamped to each head's length where used). */
  readonly sinks: number;
  readonly recent: number;
}

interface Plan {
  readonly chunks: readonly Chunk[];
  /** The cache must throw a budget error after the planned chunks. */
  readonly fails: boolean;
  /** Rows from this one on attended over what is kept at the end. */
  readonly settledFrom: number;
  /**
   * A prefill under a prompt rule: which tokens its compressions keep is the cache's call (pooled window
   * scores); the model checks the rule's bounds instead of predicting the counts.
   */
  readonly opaque?: boolean;
}

type Score = (layer: number, kvHead: number, token: Token) => number;

const mix = (x: number): number => {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
};

/** The scores of score-free built-ins, written from docs/semantics.md (not from the trackers' code). */
function scoreRule(tracker: ImportanceTracker, dtype: DType): Score | undefined {
  const kernel = tracker.kernel;
  if (kernel === undefined) return undefined;
  switch (kernel.kind) {
    case TrackerKind.Position:
      return (_l, _h, t) => Math.fround(t.position);
    case TrackerKind.Random: {
      const seed = kernel.seed >>> 0;
      return (l, h, t) => (mix(mix(mix(seed ^ l) ^ h) ^ t.position) >>> 8) / 2 ** 24;
    }
    case TrackerKind.KeyNorm:
      return (_l, _h, t) => {
        const key = decodeBits(dtype, t.key);
        let sum = 0;
        for (let i = 0; i < key.length; i++) sum += key[i]! * key[i]!;
        return -Math.fround(Math.sqrt(sum));
      };
    default:
      return undefined;
  }
}

/** Lower first, NaN lowest, then the lower slot. */
function compareScores(a: number, b: number): number {
  const an = Number.isNaN(a);
  const bn = Number.isNaN(b);
  if (an || bn) return an === bn ? 0 : an ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The documented eviction rule: per head (or once on the f32 mean over heads, for `scope: 'layer'`),
 * the `count` lowest `(score, slot)` among slots `[sinks, length - recent)`, NaN scores lowest.
 * Returns the evicted slots of each head.
 * @example
 * ```ts
 * chooseEvicted([new Float32Array([5, 1, 1, 0])], 4, 1, 1, 1, 'head'); // [Set { 1 }]
 * ```
 */
export function chooseEvicted(
  scores: readonly (ArrayLike<number>)[], length: number, count: number, sinks: number, recent: number, scope: 'head' | 'layer',
): Set<number>[] {
  const pick = (s: ArrayLike<number>): Set<number> => {
    const slots: number[] = [];
    for (let j = sinks; j < length - recent; j++) slots.push(j);
    slots.sort((a, b) => compareScores(s[a]!, s[b]!) || a - b);
    return new Set(slots.slice(0, count));
  };
  if (scope === 'head') return scores.map(pick);
  const mean = new Float32Array(length);
  for (let j = 0; j < length; j++) {
    let acc = 0;
    for (const s of scores) acc = Math.fround(acc + s[j]!);
    mean[j] = Math.fround(acc / scores.length);
  }
  const chosen = pick(mean);
  return scores.map(() => chosen);
}

function sameList(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const show = (a: ArrayLike<number>): string => `[${Array.from(a).join(',')}]`;

/**
 * A plain model of a {@link KVCache}, for `fc.commands` / `fc.modelRun`: it tracks open slots, the
 * tokens seen per (sequence, layer), what every KV head keeps and the bits of every key and value
 * appended, and predicts from the policy how many tokens each operation evicts. Which tokens go is
 * predicted exactly for the score-free built-ins (position, key norm, random); for trackers that read
 * attention (or users' trackers) the model checks the cache's choice against the lowest-score rule
 * and, through an oracle cache on the reference backend, against an independent run.
 *
 * Drive it with {@link KVCacheModel.step}: it runs the operation on the cache under test and on the
 * oracle, checks the results, then checks every invariant (see {@link InvariantName}).
 *
 * @example
 * ```ts
 * import { KVCacheModel, createCache } from 'scissorhands/testing';
 * using model = new KVCacheModel(config);
 * using cache = createCache(config, 'cpu');
 * model.step(cache, { op: 'open' });
 * model.step(cache, { op: 'attend', seq: 0, layer: 0, q, k, v });
 * ```
 */
export class KVCacheModel implements Disposable {
  readonly config: CacheConfig;
  readonly geometry: Geometry;
  readonly dtype: DType;
  /** The storage format (dense, or packed). */
  readonly storage: StorageFormat;
  /** The model's own policy instance, asked the same questions as the cache's. */
  readonly policy: BudgetPolicy;
  /** The policy prefill runs with: the configuration's `prompt` policy, else `policy`. It lays memory out. */
  readonly promptPolicy: BudgetPolicy;
  /** The model's own tracker instance (for its scope, input and kernel). */
  readonly tracker: ImportanceTracker;
  readonly capacities: readonly number[];
  readonly prefillChunks: readonly number[];
  readonly checks: ReadonlySet<InvariantName>;
  /** Disagreements with the oracle that were tolerated (see {@link KVCacheModelOptions.tolerateDivergence}). */
  readonly divergences: string[] = [];
  /** Operations stepped so far. */
  steps = 0;
  /** What the last `attend` or `prefill` returned (for determinism checks). */
  lastOutput: HostArray | undefined;
  readonly #open: boolean[];
  readonly #state: (LayerState[] | undefined)[];
  readonly #evictions: number[];
  readonly #score: Score | undefined;
  readonly #tolerate: boolean | undefined;
  /** The prompt rule prefill follows, if any (`docs/semantics.md`, prompt compression). */
  readonly #rule: PromptRule | undefined;
  #oracle: KVCache | undefined;
  #bytesReserved: number | undefined;
  /** The last attend/prefill/append, for explaining a divergence from the oracle. */
  #last: LastOperation | undefined;
  #log: string[] = [];

  constructor(config: CacheConfig, options: KVCacheModelOptions = {}) {
    this.config = config;
    this.geometry = config.geometry;
    this.dtype = config.dtype;
    this.policy = config.policy.create();
    this.promptPolicy = config.prompt?.policy.create() ?? this.policy;
    this.tracker = config.tracker.create();
    this.checks = new Set(options.checks ?? INVARIANTS);
    this.#tolerate = options.tolerateDivergence;
    this.#rule = this.promptPolicy.prompt;
    const sinks = this.promptPolicy.sinks;
    const recent = this.promptPolicy.recent;
    this.storage = resolveStorage(config.storage, this.geometry.headDim);
    const layout: StoreLayout = { dtype: this.dtype, storage: this.storage, auxWords: this.tracker.auxWords };
    this.capacities = Array.from({ length: this.geometry.layers }, (_, layer) => this.promptPolicy.capacity(layer, this.geometry, layout));
    const rule = this.#rule;
    this.prefillChunks = this.capacities.map((capacity) => {
      if (rule !== undefined) return Math.min(rule.chunk, config.prefillChunk ?? rule.chunk);
      const room = capacity - sinks;
      const chunk = config.prefillChunk ?? Math.max(1, Math.floor((room - recent) / 4));
      return Math.min(chunk, room);
    });
    this.#open = new Array<boolean>(config.maxSequences).fill(false);
    this.#state = new Array<LayerState[] | undefined>(config.maxSequences).fill(undefined);
    this.#evictions = new Array<number>(this.geometry.layers).fill(0);
    this.#score = scoreRule(this.tracker, this.dtype);
    const oracle = options.oracle ?? 'reference';
    this.#oracle = oracle === false || !this.checks.has('oracle') ? undefined : createCache(config, oracle);
  }

  /**
   * Open sequence ids, in increasing order.
   * @example
   * ```ts
   * const seq = model.openSequences()[0];
   * ```
   */
  openSequences(): number[] {
    return this.#open.flatMap((open, seq) => (open ? [seq] : []));
  }

  /**
   * Sequence ids that are not open.
   * @example
   * ```ts
   * model.closedSequences(); // [1, 2]
   * ```
   */
  closedSequences(): number[] {
    return this.#open.flatMap((open, seq) => (open ? [] : [seq]));
  }

  /**
   * Tokens kept by one KV head of a sequence at a layer, as the model has it.
   * @example
   * ```ts
   * const n = model.length(seq, layer);
   * ```
   */
  length(seq: number, layer: number, kvHead = 0): number {
    return this.#layer(seq, layer).kept[kvHead]!.length;
  }

  /**
   * Tokens seen by a sequence at a layer.
   * @example
   * ```ts
   * model.seen(seq, 0);
   * ```
   */
  seen(seq: number, layer: number): number {
    return this.#layer(seq, layer).seen;
  }

  /**
   * Whether the oracle still replays the operations (it is dropped after a tolerated divergence).
   * @example
   * ```ts
   * if (!model.oracleInSync) console.log(model.divergences);
   * ```
   */
  get oracleInSync(): boolean {
    return this.#oracle !== undefined;
  }

  /**
   * Runs one operation on the cache under test, on the oracle and on the model, and checks the
   * results and then every invariant. Throws {@link InvariantError} (or the cache's own unexpected
   * error) on the first problem.
   * @example
   * ```ts
   * model.step(cache, { op: 'prefill', seq, layer: 0, q, k, v });
   * ```
   */
  step(real: KVCache, op: CacheOperation): void {
    this.steps += 1;
    this.lastOutput = undefined;
    this.#last = undefined;
    this.#log.push(describeOperation(op));
    if (this.#log.length > 12) this.#log.shift();
    switch (op.op) {
      case 'open': this.#stepOpen(real); break;
      case 'close':
      case 'reset': this.#stepClear(real, op); break;
      case 'observe': this.#stepObserve(real, op); break;
      default: this.#stepAppend(real, op); break;
    }
    this.verify(real);
  }

  /**
   * Checks every enabled invariant on the whole cache, then aligns the model's view of which tokens
   * are kept with the cache's (so that one wrong choice is reported once, where it happened).
   * @example
   * ```ts
   * model.verify(cache);
   * ```
   */
  verify(real: KVCache): void {
    const { layers, kvHeads } = this.geometry;
    for (let seq = 0; seq < this.#open.length; seq++) {
      const isOpen = real.isOpen(seq);
      if (isOpen !== this.#open[seq]) this.#fail('policy', `isOpen(${seq}) is ${isOpen}, the model says ${this.#open[seq]}`);
      const state = this.#state[seq];
      if (state === undefined) continue;
      for (let layer = 0; layer < layers; layer++) {
        const ls = state[layer]!;
        const seen = real.seen(seq, layer);
        if (seen !== ls.seen && this.checks.has('policy')) this.#fail('policy', `seen(${seq}, ${layer}) is ${seen}, expected ${ls.seen}`);
        const keptPositions: Int32Array[] = [];
        for (let h = 0; h < kvHeads; h++) {
          const { positions, scores } = real.inspect(seq, layer, h);
          keptPositions.push(positions);
          this.#checkHead(real, seq, layer, h, ls, positions, scores);
        }
        // A composed cache whose prompt tracker chooses per head may leave the heads different.
        const promptScope = this.config.prompt?.tracker?.create().scope ?? this.tracker.scope;
        if (this.checks.has('layerScope') && this.tracker.scope === 'layer' && promptScope === 'layer') {
          for (let h = 1; h < kvHeads; h++) {
            if (!sameList(keptPositions[h]!, keptPositions[0]!)) {
              this.#fail('layerScope', `(seq ${seq}, layer ${layer}) head ${h} keeps ${show(keptPositions[h]!)}, head 0 keeps ${show(keptPositions[0]!)}`);
            }
          }
        }
        ls.kept = keptPositions.map((p) => Array.from(p));
        ls.seen = seen;
      }
    }
    this.#checkStats(real);
    this.#compareOracle(real);
  }

  /**
   * Disposes the oracle cache.
   * @example
   * ```ts
   * model.dispose();
   * ```
   */
  dispose(): void {
    this.#oracle?.dispose();
    this.#oracle = undefined;
  }

  /** Same as {@link KVCacheModel.dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  // ---- operations ----------------------------------------------------------------------------

  #stepOpen(real: KVCache): void {
    const free = this.#open.indexOf(false);
    if (free < 0) {
      this.#expectError(() => real.open(), KvErrorCode.Capacity, CapacityError, 'open() with every slot open');
      const oracle = this.#oracle;
      if (oracle !== undefined) this.#expectError(() => oracle.open(), KvErrorCode.Capacity, CapacityError, 'oracle open() with every slot open');
      return;
    }
    const seq = real.open();
    if (seq !== free) this.#fail('policy', `open() returned ${seq}, expected the lowest free slot ${free}`);
    const oracleSeq = this.#oracle?.open();
    if (oracleSeq !== undefined && oracleSeq !== seq) this.#fail('oracle', `oracle open() returned ${oracleSeq}, expected ${seq}`);
    this.#open[seq] = true;
    this.#state[seq] = this.#emptyState();
  }

  #stepClear(real: KVCache, op: { readonly op: 'close' | 'reset'; readonly seq: number }): void {
    applyOperation(real, op);
    if (this.#oracle !== undefined) applyOperation(this.#oracle, op);
    if (op.op === 'close') {
      this.#open[op.seq] = false;
      this.#state[op.seq] = undefined;
    } else {
      this.#state[op.seq] = this.#emptyState();
    }
  }

  #stepObserve(real: KVCache, op: Extract<CacheOperation, { op: 'observe' }>): void {
    const copy = cloneOperation(op);
    applyOperation(real, op);
    // An observation belongs to decoding: a composed cache hands the scores to its decoding tracker.
    const ls = this.#state[op.seq]?.[op.layer];
    if (ls !== undefined) ls.prompting = false;
    this.#checkUntouched(op, copy);
    if (this.#oracle !== undefined) applyOperation(this.#oracle, copy);
  }

  #stepAppend(real: KVCache, op: Extract<CacheOperation, { op: 'attend' | 'prefill' | 'append' }>): void {
    const { seq, layer } = op;
    const { kvHeads, headDim } = this.geometry;
    const ls = this.#layer(seq, layer);
    const rows = op.k.length / (kvHeads * headDim);
    // Per-head budgets, as the cache declares them before the operation (set by its prompt compressions).
    const budgets = Array.from({ length: kvHeads }, (_, h) => ({ budget: real.headBudget(seq, layer, h), capacity: real.headCapacity(seq, layer, h) }));
    const plan = this.#plan(ls, layer, rows, op.op, budgets);
    const before = this.#capture(real, seq, layer);
    this.#last = {
      op, plan, seenBefore: ls.seen, real: before,
      oracle: this.#oracle === undefined ? undefined : this.#capture(this.#oracle, seq, layer),
    };
    const copy = cloneOperation(op);
    const oracleOp = cloneOperation(op);

    if (plan.fails) {
      const what = `${describeOperation(op)} with ${ls.kept[0]!.length} kept of capacity ${this.capacities[layer]}`;
      this.#expectError(() => applyOperation(real, op), KvErrorCode.Budget, BudgetError, what);
      if (this.#oracle !== undefined) this.#expectError(() => applyOperation(this.#oracle!, oracleOp), KvErrorCode.Budget, BudgetError, `oracle ${what}`);
      const seenAfter = real.seen(seq, layer);
      if (seenAfter === ls.seen) return; // the cache refused the whole operation
      // The cache went through the chunks that fit before refusing the rest.
      this.#apply(real, ls, seq, layer, op, plan, before);
      return;
    }

    // What the op may attend over: the tokens kept before it, and the ones it appends (see #compareOutputs).
    const kept = op.op !== 'append' && this.#oracle !== undefined && this.checks.has('oracle') ? this.#magnitudes(real, seq, layer) : undefined;
    const result = applyOperation(real, op);
    this.#checkUntouched(op, copy);
    const oracleResult = this.#oracle === undefined ? undefined : applyOperation(this.#oracle, oracleOp);
    const seenBefore = ls.seen;
    this.#apply(real, ls, seq, layer, op, plan, before);
    ls.prompting = this.config.prompt !== undefined && op.op === 'prefill';
    if (op.op === 'append') return;
    const out = result as HostArray;
    this.lastOutput = out;
    if (op.out !== undefined && out !== op.out) this.#fail('attention', `${op.op} did not return the out array it was given`);
    // A prompt that dropped nothing was attended over what is kept now, every row of it.
    const keptBefore = before.positions.reduce((n, p) => n + p.length, 0);
    const untouched = plan.opaque === true && ls.kept.reduce((n, k) => n + k.length, 0) === keptBefore + rows * kvHeads;
    const settled = untouched ? { ...plan, settledFrom: 0 } : plan;
    this.#checkAttention(real, op, out, settled, seenBefore);
    if (oracleResult !== undefined) this.#compareOutputs(real, op, out, oracleResult as HostArray, settled, kept);
  }

  /**
   * The chunks the cache goes through, from the policy's answers (mirrors the documented prefill loop).
   * With per-head budgets each head is asked on its own, with its budget in the context, and bounded by
   * its own capacity (both as the cache declares them); without, head 0 speaks for all (their lengths are
   * equal).
   */
  #plan(
    ls: LayerState, layer: number, rows: number, kind: 'attend' | 'prefill' | 'append',
    heads: readonly { budget: number | undefined; capacity: number }[],
  ): Plan {
    const capacity = this.capacities[layer]!;
    const chunks: Chunk[] = [];
    const none = ls.kept.map(() => 0);
    if (kind === 'prefill' && this.#rule !== undefined) {
      return { chunks: [{ start: 0, rows, evict: none, sinks: 0, recent: 0 }], fails: false, settledFrom: rows, opaque: true };
    }
    if (kind === 'append' && rows > capacity - this.policy.sinks) return { chunks, fails: true, settledFrom: 0 };
    const lengths = ls.kept.map((k) => k.length);
    const perHead = heads.some((b) => b.budget !== undefined);
    let seen = ls.seen;
    let settledFrom = 0;
    for (let done = 0; done < rows;) {
      const left = rows - done;
      let chunk = left;
      if (kind === 'prefill') {
        const fits = lengths[0]! + left <= capacity && this.#ask({ layer, length: lengths[0]!, incoming: left, seen }) === 0;
        chunk = fits ? left : Math.min(left, this.prefillChunks[layer]!);
      }
      const sinks = this.policy.sinks;
      const recent = Math.max(0, this.policy.recent - chunk);
      const shared = perHead ? 0 : this.#ask({ layer, length: lengths[0]!, incoming: chunk, seen });
      const counts = lengths.map((length, h) => {
        const budget = heads[h]!.budget;
        const context = { layer, length, incoming: chunk, seen, ...(budget === undefined ? {} : { budget }) };
        const count = perHead ? this.#ask(context) : shared;
        const candidates = Math.max(0, length - Math.min(sinks, length) - Math.min(length - Math.min(sinks, length), recent));
        if (!Number.isInteger(count) || count < 0 || count > candidates) {
          this.#fail('policy', `policy ${this.policy.name} answered ${String(count)} to ${JSON.stringify(context)}, `
            + `but only ${candidates} tokens are outside the ${sinks} sinks and ${recent} recent ones`);
        }
        return count;
      });
      if (lengths.some((length, h) => length - counts[h]! + chunk > heads[h]!.capacity)) return { chunks, fails: true, settledFrom };
      if (counts.some((c) => c > 0)) settledFrom = done;
      chunks.push({ start: done, rows: chunk, evict: counts, sinks, recent });
      counts.forEach((c, h) => (lengths[h] = lengths[h]! + chunk - c));
      seen += chunk;
      done += chunk;
    }
    return { chunks, fails: false, settledFrom };
  }

  #ask(context: EvictionContext): number {
    return this.policy.evictions({ ...context, capacity: this.capacities[context.layer]! });
  }

  /** The slots each head drops for `chunk`, by the documented rule, each head with its own length. */
  #choose(scores: readonly ArrayLike<number>[], lengths: readonly number[], chunk: Chunk): Set<number>[] {
    const clamp = (length: number): [number, number] => {
      const sinks = Math.min(chunk.sinks, length);
      return [sinks, Math.min(length - sinks, chunk.recent)];
    };
    if (this.tracker.scope === 'layer') {
      const [sinks, recent] = clamp(lengths[0]!);
      return chooseEvicted(scores, lengths[0]!, chunk.evict[0]!, sinks, recent, 'layer');
    }
    return scores.map((s, h) => chooseEvicted([s], lengths[h]!, chunk.evict[h]!, ...clamp(lengths[h]!), 'head')[0]!);
  }

  /** Applies planned chunks to the model: evictions (predicted, or the cache's checked choice) and appends. */
  #apply(
    real: KVCache, ls: LayerState, seq: number, layer: number, op: Extract<CacheOperation, { op: 'attend' | 'prefill' | 'append' }>,
    plan: Plan, before: Captured,
  ): void {
    const { kvHeads, headDim } = this.geometry;
    const kBits = storedBits(this.dtype, op.k);
    const vBits = storedBits(this.dtype, op.v);
    const preKept = ls.kept.map((k) => k.slice());
    const firstPosition = ls.seen;
    // A prompt rule's compressions keep what the pooled window scores say: positions come from the cache.
    let predicted = plan.opaque !== true;
    for (const chunk of plan.chunks) {
      const dropped = chunk.evict.reduce((a, b) => a + b, 0);
      if (dropped > 0) {
        this.#evictions[layer]! += dropped;
        if (this.#score === undefined) {
          predicted = false; // which tokens go is the tracker's call: positions come from the cache below
        } else if (predicted) {
          const score = this.#score;
          const scores = ls.kept.map((kept, h) => kept.map((p) => score(layer, h, ls.history[h]!.get(p)!)));
          const evicted = this.#choose(scores, ls.kept.map((k) => k.length), chunk);
          ls.kept = ls.kept.map((kept, h) => kept.filter((_, slot) => !evicted[h]!.has(slot)));
        }
      }
      for (let r = chunk.start; r < chunk.start + chunk.rows; r++) {
        const position = ls.seen;
        for (let h = 0; h < kvHeads; h++) {
          const at = (r * kvHeads + h) * headDim;
          ls.history[h]!.set(position, { position, key: kBits.slice(at, at + headDim), value: vBits.slice(at, at + headDim) });
          if (predicted) ls.kept[h]!.push(position);
        }
        ls.seen += 1;
      }
    }
    const lengthOf = (h: number): number => preKept[h]!.length + plan.chunks.reduce((n, c) => n + c.rows - c.evict[h]!, 0);
    if (!predicted) {
      // Which tokens went is the tracker's call: take the cache's, and check what can be checked.
      const lastNew = ls.seen;
      ls.kept = [];
      for (let h = 0; h < kvHeads; h++) {
        const positions = Array.from(real.inspect(seq, layer, h).positions);
        if (plan.opaque !== true && positions.length !== lengthOf(h) && this.checks.has('policy')) {
          this.#fail('policy', `${describeOperation(op)}: head ${h} keeps ${positions.length} tokens, the policy's answers leave ${lengthOf(h)}`);
        }
        const allowed = new Set(preKept[h]);
        for (const p of positions) {
          if (!allowed.has(p) && !(p >= firstPosition && p < lastNew) && this.checks.has('positions')) {
            this.#fail('positions', `${describeOperation(op)}: head ${h} keeps position ${p}, which was neither kept before nor appended now`);
          }
        }
        ls.kept.push(positions);
      }
      if (plan.opaque === true) this.#checkPrompt(real, seq, layer, ls, preKept.reduce((n, k) => n + k.length, 0) + (ls.seen - firstPosition) * kvHeads);
    }
    // The lowest-score rule, checkable when the only eviction came first (so it used the scores seen before),
    // unless the operation handed a composed cache from its prompt tracker to its decoding one (whose state
    // restarts first, so the scores seen before are not the ones it chose by).
    const evicting = plan.chunks.filter((c) => c.evict.some((n) => n > 0));
    const first = evicting[0];
    const restarted = ls.prompting && op.op !== 'prefill';
    if (this.checks.has('eviction') && !restarted && evicting.length === 1 && first !== undefined && first.start === 0) {
      const expected = this.#choose(before.scores, before.positions.map((p) => p.length), first);
      for (let h = 0; h < kvHeads; h++) {
        const after = new Set(real.inspect(seq, layer, h).positions);
        const dropped = Array.from(before.positions[h]!).filter((p) => !after.has(p));
        const want = Array.from(before.positions[h]!).filter((_, slot) => expected[h]!.has(slot));
        if (!sameList(dropped, want)) {
          this.#fail('eviction', `${describeOperation(op)}: head ${h} dropped positions ${show(dropped)}, but the lowest-scored candidates were ${show(want)} `
            + `(positions ${show(before.positions[h]!)}, scores ${show(before.scores[h]!)}, sinks ${first.sinks}, recent ${first.recent}, scope ${this.tracker.scope})`);
        }
      }
    }
  }

  // ---- checks --------------------------------------------------------------------------------

  /**
   * After a prefill under a prompt rule (`docs/semantics.md`): the layer is within its budget (each head
   * within `tokens(layer)`, or with per-head budgets all heads together within `kvHeads x tokens(layer)`),
   * and so are the budgets the cache declares, each at least what the protections keep. `entered` token
   * entries were kept before or appended: the rest were evicted.
   */
  #checkPrompt(real: KVCache, seq: number, layer: number, ls: LayerState, entered: number): void {
    const rule = this.#rule!;
    const { kvHeads } = this.geometry;
    const kept = ls.kept.reduce((n, k) => n + k.length, 0);
    this.#evictions[layer]! += entered - kept;
    if (!this.checks.has('policy')) return;
    const tokens = rule.tokens(layer, this.geometry);
    const where = `(seq ${seq}, layer ${layer})`;
    const budgets = Array.from({ length: kvHeads }, (_, h) => real.headBudget(seq, layer, h) ?? NaN);
    const protectedTokens = Math.min(ls.seen, this.promptPolicy.sinks + rule.window);
    if (rule.split === undefined) {
      ls.kept.forEach((k, h) => {
        if (k.length > tokens) this.#fail('policy', `${where} head ${h} keeps ${k.length} tokens after the prompt, over the budget ${tokens}`);
        if (budgets[h] !== tokens) this.#fail('policy', `${where} head ${h} has budget ${budgets[h]}, the rule gives ${tokens}`);
      });
      return;
    }
    if (kept > kvHeads * tokens) this.#fail('policy', `${where} keeps ${kept} tokens after the prompt, over the layer budget ${kvHeads} x ${tokens}`);
    const total = budgets.reduce((a, b) => a + b, 0);
    if (!(total <= kvHeads * tokens)) this.#fail('policy', `${where} head budgets ${show(budgets)} exceed the layer budget ${kvHeads} x ${tokens}`);
    budgets.forEach((b, h) => {
      if (!(b >= protectedTokens)) this.#fail('policy', `${where} head ${h} has budget ${b}, below the ${protectedTokens} tokens its sinks and window keep`);
    });
  }

  #checkHead(real: KVCache, seq: number, layer: number, h: number, ls: LayerState, positions: Int32Array, scores: Float32Array): void {
    const where = `(seq ${seq}, layer ${layer}, head ${h})`;
    const capacity = this.capacities[layer]!;
    if (this.checks.has('capacity') && positions.length > capacity) {
      this.#fail('capacity', `${where} keeps ${positions.length} tokens, capacity ${capacity}`);
    }
    const modelKept = ls.kept[h]!;
    if (this.checks.has('policy') && positions.length !== modelKept.length) {
      this.#fail('policy', `${where} keeps ${positions.length} tokens, the policy's answers leave ${modelKept.length}`);
    }
    const length = real.length(seq, layer, h);
    if (length !== positions.length) this.#fail('positions', `${where} length() is ${length}, inspect() lists ${positions.length}`);
    if (this.checks.has('positions')) {
      for (let j = 0; j < positions.length; j++) {
        const p = positions[j]!;
        if (p < 0 || p >= ls.seen) this.#fail('positions', `${where} keeps position ${p} outside [0, ${ls.seen})`);
        if (j > 0 && p <= positions[j - 1]!) this.#fail('positions', `${where} positions not strictly increasing: ${show(positions)}`);
      }
    }
    if (this.checks.has('protected')) {
      const kept = new Set(positions);
      // A composed cache protects what both its prompt and its decoding policy protect.
      const sinks = Math.min(this.policy.sinks, this.promptPolicy.sinks, ls.seen);
      const recent = Math.min(this.policy.recent, this.promptPolicy.recent);
      for (let p = 0; p < sinks; p++) if (!kept.has(p)) this.#fail('protected', `${where} dropped sink position ${p}: keeps ${show(positions)}`);
      for (let p = Math.max(0, ls.seen - recent); p < ls.seen; p++) {
        if (!kept.has(p)) this.#fail('protected', `${where} dropped recent position ${p} (seen ${ls.seen}, recent ${recent}): keeps ${show(positions)}`);
      }
    }
    // While a composed cache's prompt tracker holds the scores, the decoding tracker's rule says nothing.
    if (this.checks.has('eviction') && this.#score !== undefined && !ls.prompting) {
      if (!sameList(positions, modelKept)) {
        this.#fail('eviction', `${where} keeps ${show(positions)}, the ${this.tracker.name} rule keeps ${show(modelKept)}`);
      }
      for (let j = 0; j < positions.length; j++) {
        const token = ls.history[h]!.get(positions[j]!);
        if (token === undefined) continue;
        const want = this.#score(layer, h, token);
        const got = scores[j]!;
        if (!(got === want || (Number.isNaN(got) && Number.isNaN(want)))) {
          this.#fail('eviction', `${where} position ${positions[j]} has score ${got}, the ${this.tracker.name} rule gives ${want}`);
        }
      }
    }
    if (this.checks.has('data') && isPacked(this.storage)) {
      this.#checkPackedData(real, seq, layer, h, ls, positions, where);
    } else if (this.checks.has('data')) {
      const view = real.view(seq, layer, h);
      if (view.length !== positions.length || !sameList(view.positions, positions)) {
        this.#fail('data', `${where} view() lists positions ${show(view.positions)}, inspect() ${show(positions)}`);
      }
      const d = this.geometry.headDim;
      const keys = arrayBits(view.keys);
      const values = arrayBits(view.values);
      if (keys.length !== positions.length * d || values.length !== positions.length * d) {
        this.#fail('data', `${where} view() has ${keys.length} key and ${values.length} value elements for ${positions.length} tokens`);
      }
      for (let j = 0; j < positions.length; j++) {
        const token = ls.history[h]!.get(positions[j]!);
        if (token === undefined) {
          this.#fail('data', `${where} keeps position ${positions[j]}, never appended since the last reset`);
        }
        if (!sameList(keys.subarray(j * d, (j + 1) * d), token.key) || !sameList(values.subarray(j * d, (j + 1) * d), token.value)) {
          this.#fail('data', `${where} slot ${j} (position ${positions[j]}) holds key ${show(keys.subarray(j * d, (j + 1) * d))} / value `
            + `${show(values.subarray(j * d, (j + 1) * d))}, appended ${show(token.key)} / ${show(token.value)}`);
        }
      }
    }
  }

  /** The `data` invariant on packed storage (see {@link InvariantName}). */
  #checkPackedData(real: KVCache, seq: number, layer: number, h: number, ls: LayerState, positions: Int32Array, where: string): void {
    const storage = this.storage;
    if (!isPacked(storage)) return;
    const view = real.view(seq, layer, h);
    const d = this.geometry.headDim;
    const qmax = 2 ** storage.bits - 1;
    if (view.length !== positions.length || !sameList(view.positions, positions)) {
      this.#fail('data', `${where} view() lists positions ${show(view.positions)}, inspect() ${show(positions)}`);
    }
    const packed = view.packed ?? -1;
    const keys = view.keys;
    const values = view.values;
    if (!(keys instanceof Float32Array) || !(values instanceof Float32Array) || keys.length !== positions.length * d || values.length !== positions.length * d
      || packed < 0 || packed > positions.length || view.keySteps?.length !== packed * d || view.valueSteps?.length !== packed * d
      || view.requantised?.length !== packed) {
      this.#fail('data', `${where} view() of packed storage is malformed (packed ${packed}, ${keys.length} keys for ${positions.length} tokens)`);
    }
    // Each channel's range over every key this head was given: how far a re-quantised key may move.
    const range = new Float64Array(d);
    const low = new Float64Array(d).fill(Infinity);
    const high = new Float64Array(d).fill(-Infinity);
    for (const token of ls.history[h]!.values()) {
      const key = decodeBits(this.dtype, token.key);
      for (let c = 0; c < d; c++) {
        low[c] = Math.min(low[c]!, key[c]!);
        high[c] = Math.max(high[c]!, key[c]!);
      }
    }
    for (let c = 0; c < d; c++) range[c] = high[c]! - low[c]!;
    const packer = createReferencePacker();
    for (let j = 0; j < positions.length; j++) {
      const token = ls.history[h]!.get(positions[j]!);
      if (token === undefined) this.#fail('data', `${where} keeps position ${positions[j]}, never appended since the last reset`);
      const key = decodeBits(this.dtype, token.key);
      const value = decodeBits(this.dtype, token.value);
      const gotKey = keys.subarray(j * d, (j + 1) * d);
      const gotValue = values.subarray(j * d, (j + 1) * d);
      if (j >= packed) {
        if (!sameList(gotKey, key) || !sameList(gotValue, value)) {
          this.#fail('data', `${where} residual slot ${j} (position ${positions[j]}) holds key ${show(gotKey)} / value ${show(gotValue)}, appended ${show(key)} / ${show(value)}`);
        }
        continue;
      }
      // Values are packed per token, once: exactly the reference packer's round trip.
      const want = packer.unpack(packer.pack(Float32Array.from(value), { format: storage.format, shape: [1, d], groupSize: storage.groupSize })) as Float32Array;
      if (!sameList(gotValue, want)) {
        this.#fail('data', `${where} packed slot ${j} (position ${positions[j]}) holds value ${show(gotValue)}, the packer gives ${show(want)} for ${show(value)}`);
      }
      const merges = view.requantised![j]!;
      for (let c = 0; c < d; c++) {
        const x = key[c]!;
        const y = gotKey[c]!;
        const step = view.keySteps![j * d + c]!;
        const rounding = 2 ** -24 * Math.max(Math.abs(x), Math.abs(y)) + 2 ** -149;
        const bound = merges === 0
          ? step * (0.5 + 2 ** -12) + rounding
          : (merges + 1) * ((range[c]! / qmax) * (0.5 + 2 ** -10) + 2 ** -23 * (Math.abs(low[c]!) + Math.abs(high[c]!)) + 2 ** -24) + rounding;
        if (!(Math.abs(x - y) <= bound)) {
          this.#fail('data', `${where} packed slot ${j} (position ${positions[j]}) key element ${c} is ${y}, appended ${x}: off by more than ${bound} (step ${step}, merges ${merges})`);
        }
      }
    }
  }

  #checkStats(real: KVCache): void {
    if (!this.checks.has('stats') && !this.checks.has('policy')) return;
    const stats = real.stats();
    const { kvHeads, headDim } = this.geometry;
    const bytesPerToken = 2 * headDim * (this.dtype === 'f32' ? 4 : 2);
    let tokensKept = 0;
    let tokensSeen = 0;
    const open = this.openSequences();
    if (this.checks.has('policy')) {
      const evictions = this.#evictions.reduce((a, b) => a + b, 0);
      if (stats.evictions !== evictions) this.#fail('policy', `stats().evictions is ${stats.evictions}, the policy asked for ${evictions}`);
      stats.layers.forEach((l, layer) => {
        if (l.evictions !== this.#evictions[layer]) this.#fail('policy', `stats().layers[${layer}].evictions is ${l.evictions}, the policy asked for ${this.#evictions[layer]}`);
      });
    }
    if (!this.checks.has('stats')) return;
    const fail = (message: string): never => this.#fail('stats', message);
    if (stats.backend !== real.backend) fail(`stats().backend is ${stats.backend}, the cache runs on ${real.backend}`);
    if (stats.layers.length !== this.geometry.layers) fail(`stats().layers has ${stats.layers.length} entries`);
    stats.layers.forEach((l, layer) => {
      if (l.layer !== layer) fail(`stats().layers[${layer}].layer is ${l.layer}`);
      if (l.capacity !== this.capacities[layer]) fail(`stats().layers[${layer}].capacity is ${l.capacity}, the policy reserves ${this.capacities[layer]}`);
      let seen = 0;
      for (let h = 0; h < kvHeads; h++) {
        let kept = 0;
        for (const seq of open) kept += real.length(seq, layer, h);
        if (l.tokensKept[h] !== kept) fail(`stats().layers[${layer}].tokensKept[${h}] is ${l.tokensKept[h]}, the lengths sum to ${kept}`);
        tokensKept += kept;
      }
      for (const seq of open) seen += real.seen(seq, layer);
      if (l.tokensSeen !== seen) fail(`stats().layers[${layer}].tokensSeen is ${l.tokensSeen}, expected ${seen}`);
      tokensSeen += seen * kvHeads;
    });
    if (stats.tokensKept !== tokensKept) fail(`stats().tokensKept is ${stats.tokensKept}, the lengths sum to ${tokensKept}`);
    if (stats.tokensSeen !== tokensSeen) fail(`stats().tokensSeen is ${stats.tokensSeen}, expected ${tokensSeen}`);
    if (stats.openSequences !== open.length) fail(`stats().openSequences is ${stats.openSequences}, expected ${open.length}`);
    if (stats.bytesPerToken !== bytesPerToken) fail(`stats().bytesPerToken is ${stats.bytesPerToken}, expected ${bytesPerToken}`);
    if (stats.bytesFull !== tokensSeen * bytesPerToken) fail(`stats().bytesFull is ${stats.bytesFull}, expected ${tokensSeen * bytesPerToken}`);
    const meta = 8 + 4 * this.tracker.auxWords;
    if (!(stats.bytesUsed <= stats.bytesReserved)) fail(`stats().bytesUsed ${stats.bytesUsed} exceeds bytesReserved ${stats.bytesReserved}`);
    if (stats.bytesUsed !== stats.bytesKV + tokensKept * meta) fail(`stats().bytesUsed ${stats.bytesUsed} is not bytesKV ${stats.bytesKV} + ${meta} per kept token`);
    const layout: StoreLayout = { dtype: this.dtype, storage: this.storage, auxWords: this.tracker.auxWords };
    // A per-head layout reserves (tokens + chunk) slots per head on average, and two words per head.
    const rule = this.#rule;
    const perSequence = this.capacities.reduce((a, c, layer) => a + (rule?.split === undefined
      ? storeBytesPerSequence(layout, kvHeads, headDim, c)
      : storeBytesPerSequence(layout, kvHeads, headDim, rule.tokens(layer, this.geometry) + rule.chunk) + 8 * kvHeads), 0);
    if (stats.bytesPerSequence !== perSequence) fail(`stats().bytesPerSequence is ${stats.bytesPerSequence}, the layout gives ${perSequence}`);
    if (!(stats.bytesReserved >= perSequence * this.config.maxSequences)) fail(`stats().bytesReserved ${stats.bytesReserved} is less than ${this.config.maxSequences} x ${perSequence}`);
    const storage = this.storage;
    if (stats.storage !== storage.format) fail(`stats().storage is ${stats.storage}, the cache stores ${storage.format}`);
    if (isPacked(storage)) {
      // Packed tokens cost their codes and value scales; each run in use between 1 and all of them.
      const codes = (headDim * storage.bits) / 8;
      const perPacked = 2 * codes + 4 * (headDim / storage.groupSize);
      let low = 0;
      let high = 0;
      for (const seq of open) {
        for (let layer = 0; layer < this.geometry.layers; layer++) {
          for (let h = 0; h < kvHeads; h++) {
            const view = real.view(seq, layer, h);
            const packed = view.packed ?? 0;
            const fixed = packed * perPacked + (view.length - packed) * bytesPerToken;
            low += fixed + (packed > 0 ? 4 * headDim + 5 : 0);
            high += fixed + Math.ceil(packed) * (4 * headDim + 5);
          }
        }
      }
      if (!(stats.bytesKV >= low && stats.bytesKV <= high)) fail(`stats().bytesKV ${stats.bytesKV} is outside [${low}, ${high}], what the packed and residual tokens take`);
    } else if (stats.bytesKV !== tokensKept * bytesPerToken) {
      fail(`stats().bytesKV ${stats.bytesKV} is not the kept keys and values (${tokensKept * bytesPerToken})`);
    }
    if (stats.bytesF16 !== tokensSeen * 4 * headDim) fail(`stats().bytesF16 is ${stats.bytesF16}, expected ${tokensSeen * 4 * headDim}`);
    const vsF16 = stats.bytesKV === 0 ? 1 : stats.bytesF16 / stats.bytesKV;
    if (stats.compressionVsF16 !== vsF16) fail(`stats().compressionVsF16 is ${stats.compressionVsF16}, expected ${vsF16}`);
    this.#bytesReserved ??= stats.bytesReserved;
    if (stats.bytesReserved !== this.#bytesReserved) fail(`stats().bytesReserved changed from ${this.#bytesReserved} to ${stats.bytesReserved}`);
    const compression = tokensKept === 0 ? 1 : tokensSeen / tokensKept;
    if (Math.abs(stats.compression - compression) > 1e-12 * compression) fail(`stats().compression is ${stats.compression}, expected ${compression}`);
  }

  #checkAttention(real: KVCache, op: Extract<CacheOperation, { op: 'attend' | 'prefill' }>, out: HostArray, plan: Plan, seenBefore: number): void {
    if (!this.checks.has('attention')) return;
    const { queryHeads, kvHeads, headDim } = this.geometry;
    const group = queryHeads / kvHeads;
    const rows = op.q.length / (queryHeads * headDim);
    if (!(out instanceof (op.q instanceof Float32Array ? Float32Array : Uint16Array)) || out.length !== op.q.length) {
      this.#fail('attention', `${op.op} returned ${out.constructor.name}[${out.length}] for q ${op.q.constructor.name}[${op.q.length}]`);
    }
    const q = decodeHost(op.q, this.dtype);
    const o = decodeHost(out, this.dtype);
    const outType = out instanceof Float32Array ? 'f32' : this.dtype;
    const scale = 1 / Math.sqrt(headDim);
    const views = Array.from({ length: kvHeads }, (_, h) => {
      const view = real.view(op.seq, op.layer, h);
      return { positions: Array.from(view.positions), keys: decodeHost(view.keys, this.dtype), values: decodeHost(view.values, this.dtype) };
    });
    // With packed storage the rows of a chunked prefill before its last chunk saw tokens in the residual
    // window that later chunks packed: only the oracle checks them.
    const from = isPacked(this.storage) ? Math.max(plan.settledFrom, plan.chunks.at(-1)?.start ?? 0) : plan.settledFrom;
    for (let r = from; r < rows; r++) {
      const position = seenBefore + r;
      for (let qh = 0; qh < queryHeads; qh++) {
        const view = views[Math.floor(qh / group)]!;
        let visible = 0;
        while (visible < view.positions.length && view.positions[visible]! <= position) visible++;
        const ref = referenceAttention(q, view.keys, view.values, visible, headDim, scale, (r * queryHeads + qh) * headDim);
        const tol = attentionTolerance(ref, headDim, outType);
        for (let i = 0; i < headDim; i++) {
          const got = o[(r * queryHeads + qh) * headDim + i]!;
          const want = ref.out[i]!;
          if (!(Math.abs(got - want) <= tol(want))) {
            this.#fail('attention', `${describeOperation(op)}: row ${r} query head ${qh} element ${i} is ${got}, attention over the `
              + `${visible} kept tokens ${show(view.positions.slice(0, visible))} gives ${want} (tolerance ${tol(want)})`);
          }
        }
      }
    }
  }

  /** The largest |key| and |value| element one (sequence, layer) keeps, over every KV head. */
  #magnitudes(cache: KVCache, seq: number, layer: number): { keys: number; values: number } {
    let keys = 0;
    let values = 0;
    for (let h = 0; h < this.geometry.kvHeads; h++) {
      const view = cache.view(seq, layer, h);
      for (const x of decodeHost(view.keys, this.dtype)) keys = Math.max(keys, Math.abs(x));
      for (const x of decodeHost(view.values, this.dtype)) values = Math.max(values, Math.abs(x));
    }
    return { keys, values };
  }

  #compareOutputs(
    real: KVCache, op: Extract<CacheOperation, { op: 'attend' | 'prefill' }>, out: HostArray, expected: HostArray, plan: Plan,
    keptBefore: { keys: number; values: number } | undefined,
  ): void {
    if (!this.checks.has('oracle') || this.#oracle === undefined) return;
    const oracle = this.#oracle;
    const { queryHeads, kvHeads, headDim } = this.geometry;
    for (let h = 0; h < kvHeads; h++) {
      if (!sameList(real.inspect(op.seq, op.layer, h).positions, oracle.inspect(op.seq, op.layer, h).positions)) return; // reported by verify()
    }
    const same = real.backend === oracle.backend;
    const tolerate = this.#tolerate ?? (!same && this.#readsAttention);
    // A chunked prefill that evicted more than once may keep different tokens in between on each backend
    // (a near-tie) and still end with the same ones. Packed storage keeps a trace of that: groups packed
    // or merged over different tokens dequantise differently, so the same positions hold different keys,
    // and this op's outputs and every later one differ beyond the bounds (seen with TOVA on tiny data).
    if (tolerate && op.op === 'prefill' && plan.chunks.filter((c) => c.evict.some((n) => n > 0)).length > 1) {
      for (let h = 0; h < kvHeads; h++) {
        const problem = this.#packedDiffer(real, oracle, op.seq, op.layer, h);
        if (problem === undefined) continue;
        this.divergences.push(`after ${this.#log.at(-1) ?? '?'} (step ${this.steps}): (seq ${op.seq}, layer ${op.layer}, head ${h}) ${problem} `
          + '[chunked prefill: intermediate kept sets not analysed]');
        this.dispose();
        return;
      }
    }
    // Equal kept positions at the end only pin what rows from `plan.settledFrom` on attended over. The
    // rows of a chunked prefill before its last eviction attended over intermediate sets, chosen by the
    // tracker between chunks; where float near-ties may be broken differently (tolerated divergence), two
    // backends can keep different tokens in between and still end up with the same ones (seen with tiny
    // data: one probability a fraction of an ulp from Scissorhands' 1/n, or TOVA scores an ulp apart). Such
    // rows are compared too, but a disagreement there is a divergence, recorded like the others.
    const unsettled = tolerate ? plan.settledFrom * queryHeads * headDim : 0;
    const a = decodeHost(out, this.dtype);
    const b = decodeHost(expected, this.dtype);
    // The bound scales with the largest key and value attended. A chunked prefill's early rows attended over
    // tokens that later chunks evicted (say 'large' ones appended before a 'tiny' prompt), so the magnitudes
    // are taken over what was kept before the op and what it appended, not only over what is kept after it.
    let qMax = 0;
    const after = this.#magnitudes(real, op.seq, op.layer);
    let kMax = Math.max(after.keys, keptBefore?.keys ?? 0);
    let vMax = Math.max(after.values, keptBefore?.values ?? 0);
    for (const x of decodeHost(op.q, this.dtype)) qMax = Math.max(qMax, Math.abs(x));
    for (const x of decodeHost(op.k, this.dtype)) kMax = Math.max(kMax, Math.abs(x));
    for (const x of decodeHost(op.v, this.dtype)) vMax = Math.max(vMax, Math.abs(x));
    const bound = attentionTolerance(
      { out: new Float64Array(0), probs: new Float64Array(this.capacities[op.layer]!), logitMagnitude: qMax * kMax * Math.sqrt(headDim), valueMagnitude: vMax },
      headDim, out instanceof Float32Array ? 'f32' : this.dtype,
    );
    let intermediate: string | undefined;
    for (let i = 0; i < a.length; i++) {
      const ok = same ? Object.is(a[i], b[i]) || (a[i] === b[i]) : Math.abs(a[i]! - b[i]!) <= 2 * bound(b[i]!);
      if (ok) continue;
      const message = `${describeOperation(op)}: output element ${i} is ${a[i]} on ${real.backend}, ${b[i]} on the ${oracle.backend} oracle`;
      if (i >= unsettled) this.#fail('oracle', message);
      intermediate ??= message;
    }
    if (intermediate !== undefined) {
      this.divergences.push(`after ${this.#log.at(-1) ?? '?'} (step ${this.steps}): ${intermediate} `
        + `(row before the last eviction of the chunked prefill) [chunked prefill: intermediate kept sets not analysed]`);
      this.dispose();
    }
  }

  #compareOracle(real: KVCache): void {
    const oracle = this.#oracle;
    if (oracle === undefined || !this.checks.has('oracle')) return;
    const same = real.backend === oracle.backend;
    const tolerate = this.#tolerate ?? (!same && this.#readsAttention);
    for (const seq of this.openSequences()) {
      for (let layer = 0; layer < this.geometry.layers; layer++) {
        if (real.seen(seq, layer) !== oracle.seen(seq, layer)) {
          this.#fail('oracle', `seen(${seq}, ${layer}) is ${real.seen(seq, layer)}, ${oracle.seen(seq, layer)} on the oracle`);
        }
        for (let h = 0; h < this.geometry.kvHeads; h++) {
          const a = real.inspect(seq, layer, h);
          const b = oracle.inspect(seq, layer, h);
          let problem: string | undefined;
          if (!sameList(a.positions, b.positions)) {
            problem = `keeps ${show(a.positions)} on ${real.backend}, ${show(b.positions)} on the ${oracle.backend} oracle`;
          } else {
            for (let j = 0; j < a.scores.length && problem === undefined; j++) {
              const x = a.scores[j]!;
              const y = b.scores[j]!;
              const ok = same
                ? Object.is(x, y) || (Number.isNaN(x) && Number.isNaN(y))
                : x === y || (Number.isNaN(x) && Number.isNaN(y)) || Math.abs(x - y) <= 1e-4 * (1 + Math.abs(y));
              if (!ok) problem = `position ${a.positions[j]} scores ${x} on ${real.backend}, ${y} on the ${oracle.backend} oracle`;
            }
          }
          // Packing is exact and its rules deterministic: the same history packs to the same bits on every
          // backend (not checked where near-ties may have changed which tokens were kept in between).
          if (problem === undefined && !tolerate) problem = this.#packedDiffer(real, oracle, seq, layer, h);
          if (problem === undefined) continue;
          const message = `(seq ${seq}, layer ${layer}, head ${h}) ${problem}`;
          if (!tolerate) this.#fail('oracle', message);
          const reason = this.#explain(real, oracle, seq, layer, h, !sameList(a.positions, b.positions));
          if (reason === undefined) this.#fail('oracle', `${message}, and no float near-tie explains it`);
          this.divergences.push(`after ${this.#log.at(-1) ?? '?'} (step ${this.steps}): ${message} [${reason}]`);
          this.dispose();
          return;
        }
      }
    }
    // The same history holds the same bytes on every backend (packed counts included, wherever they live).
    if (tolerate) return;
    const a = real.stats();
    const b = oracle.stats();
    for (const key of ['bytesKV', 'bytesUsed', 'peakBytesUsed', 'compressionVsF16', 'peakTokensKept'] as const) {
      if (a[key] !== b[key]) this.#fail('oracle', `stats().${key} is ${a[key]} on ${real.backend}, ${b[key]} on the ${oracle.backend} oracle`);
    }
  }

  /**
   * Why the cache under test and the oracle (on another backend) may legitimately disagree after the
   * last operation, or `undefined` when nothing explains it. Both started the operation in agreement
   * (within tolerance), so a disagreement needs a float near-tie in that operation:
   * - kept positions: the pre-operation scores, equal within tolerance, order the eviction candidates
   *   differently (two scores within an ulp or so), so each backend's choice follows its own scores;
   * - Scissorhands scores: a GQA-combined probability of that token lay within 1e-5 (relative) of the
   *   `1/n` threshold in one of the operation's rows, without being exactly `1/n` (equal logits give
   *   exactly `f32(1/n)` on every backend);
   * - a chunked prefill that evicted between chunks: rows before the last eviction attended over a set
   *   no longer visible, so the near-tie cannot be located (counted, not analysed);
   * - a user's tracker that reads attention: its rule is unknown (counted, not analysed).
   */
  #explain(real: KVCache, oracle: KVCache, seq: number, layer: number, h: number, positionsDiffer: boolean): string | undefined {
    const last = this.#last;
    if (last === undefined || last.op.seq !== seq || last.op.layer !== layer || last.oracle === undefined) return undefined;
    const evicting = last.plan.chunks.filter((c) => c.evict.some((n) => n > 0));
    const first = evicting[0];
    if (last.plan.opaque === true) return 'prompt compression: not analysed';
    if (positionsDiffer) {
      if (evicting.length === 1 && first !== undefined && first.start === 0) {
        const lengths = last.real.positions.map((p) => p.length);
        const mine = this.#choose(last.real.scores, lengths, first)[h]!;
        const theirs = this.#choose(last.oracle.scores, lengths, first)[h]!;
        const differ = mine.size !== theirs.size || [...mine].some((slot) => !theirs.has(slot));
        return differ ? 'near-tie between eviction candidates\' scores' : undefined;
      }
      if (evicting.length > 0 && last.op.op === 'prefill') return 'chunked prefill: not analysed';
      return undefined;
    }
    const kind = this.tracker.kernel?.kind;
    if (kind === undefined || kind === TrackerKind.Custom) return this.tracker.input === 'attention' ? 'custom tracker: not analysed' : undefined;
    if (kind !== TrackerKind.Scissorhands || last.op.op === 'append') return undefined;
    // Which position's score differs, and was it ever within 1e-5 of the threshold in this operation?
    const a = real.inspect(seq, layer, h);
    const b = oracle.inspect(seq, layer, h);
    const differing = Array.from(a.positions).filter((_, j) => a.scores[j] !== b.scores[j]);
    const { queryHeads, kvHeads, headDim } = this.geometry;
    const group = queryHeads / kvHeads;
    const q = decodeHost(last.op.q, this.dtype);
    const views = Array.from({ length: kvHeads }, (_, kv) => real.view(seq, layer, kv));
    const positions = Array.from(views[h]!.positions);
    const rows = last.op.q.length / (queryHeads * headDim);
    for (let r = last.plan.settledFrom; r < rows; r++) {
      const position = last.seenBefore + r;
      let visible = 0;
      while (visible < positions.length && positions[visible]! <= position) visible++;
      const keys = decodeHost(views[h]!.keys, this.dtype);
      const values = decodeHost(views[h]!.values, this.dtype);
      const combined = new Float64Array(visible).fill(this.tracker.gqa === 'max' ? -Infinity : 0);
      for (let g = 0; g < group; g++) {
        const ref = referenceAttention(q, keys, values, visible, headDim, 1 / Math.sqrt(headDim), (r * queryHeads + h * group + g) * headDim);
        for (let j = 0; j < visible; j++) {
          combined[j] = this.tracker.gqa === 'max' ? Math.max(combined[j]!, ref.probs[j]!) : combined[j]! + ref.probs[j]! / group;
        }
      }
      for (let j = 0; j < visible; j++) {
        const off = Math.abs(combined[j]! * visible - 1);
        if (differing.includes(positions[j]!) && off > 1e-12 && off <= 1e-5) {
          return `probability of position ${positions[j]} within 1e-5 of 1/${visible}`;
        }
      }
    }
    return last.plan.settledFrom > 0 ? 'chunked prefill: not analysed' : undefined;
  }

  /** Why one head's packed data differ between the cache and the oracle, or `undefined` (always for dense storage). */
  #packedDiffer(real: KVCache, oracle: KVCache, seq: number, layer: number, h: number): string | undefined {
    if (!isPacked(this.storage)) return undefined;
    const x = real.view(seq, layer, h);
    const y = oracle.view(seq, layer, h);
    const bits = (v: HostArray): Uint32Array => new Uint32Array(Float32Array.from(v).buffer);
    if (x.packed !== y.packed || !sameList(bits(x.keys), bits(y.keys)) || !sameList(bits(x.values), bits(y.values))
      || !sameList(x.requantised ?? [], y.requantised ?? [])) {
      return `packs ${x.packed} tokens on ${real.backend}, ${y.packed} on the ${oracle.backend} oracle, or their dequantised bits differ`;
    }
    return undefined;
  }

  #checkUntouched(op: CacheOperation, copy: CacheOperation): void {
    if (!this.checks.has('data')) return;
    const pairs: [string, ArrayLike<number>, ArrayLike<number>][] = [];
    if ('k' in op && 'k' in copy) pairs.push(['k', op.k, copy.k], ['v', op.v, copy.v]);
    if ('q' in op && 'q' in copy) pairs.push(['q', op.q, copy.q]);
    if ('probs' in op && 'probs' in copy) pairs.push(['probs', op.probs, copy.probs]);
    for (const [name, a, b] of pairs) {
      for (let i = 0; i < a.length; i++) {
        if (!Object.is(a[i], b[i])) this.#fail('data', `${describeOperation(op)} changed its input ${name}[${i}] from ${b[i]} to ${a[i]}`);
      }
    }
  }

  // ---- helpers -------------------------------------------------------------------------------

  /** Whether a tracker of the cache (the prompt's too) reads attention: backends may then break near-ties differently. */
  get #readsAttention(): boolean {
    return this.tracker.input === 'attention' || this.config.prompt?.tracker?.create().input === 'attention';
  }

  #capture(real: KVCache, seq: number, layer: number): Captured {
    const positions: Int32Array[] = [];
    const scores: Float32Array[] = [];
    for (let h = 0; h < this.geometry.kvHeads; h++) {
      const i = real.inspect(seq, layer, h);
      positions.push(i.positions);
      scores.push(i.scores);
    }
    return { positions, scores };
  }

  #expectError(call: () => unknown, code: KvErrorCode, type: new (...args: never[]) => KvError, what: string): void {
    try {
      call();
    } catch (error) {
      if (error instanceof type && error.code === code) return;
      throw error;
    }
    this.#fail('policy', `${what} succeeded; expected ${type.name} (${code})`);
  }

  #emptyState(): LayerState[] {
    const { layers, kvHeads } = this.geometry;
    return Array.from({ length: layers }, () => ({
      seen: 0,
      kept: Array.from({ length: kvHeads }, () => []),
      history: Array.from({ length: kvHeads }, () => new Map<number, Token>()),
      prompting: false,
    }));
  }

  #layer(seq: number, layer: number): LayerState {
    const state = this.#state[seq];
    if (state === undefined) throw new RangeError(`KVCacheModel: sequence ${seq} is not open`);
    return state[layer]!;
  }

  #fail(invariant: InvariantName, message: string): never {
    throw new InvariantError(invariant, `${message}\n  last operations: ${this.#log.join('; ')}`);
  }
}
