/**
 * The KV cache: fixed-budget storage of keys and values for a batch of sequences, with eviction
 * decided by a budget policy and an importance tracker.
 * @module
 */
import type { Backend, HeadInspection, HeadView, LayerStore } from '../backend/backend.js';
import { selectBackend } from '../backend/select.js';
import { Lifetime } from '../core/disposable.js';
import { type DType, type HostArray, bytesPerElement } from '../core/dtype.js';
import type { CudaBackend, DeviceByteLedger } from '../backend/cuda.js';
import { DeviceTensor } from '../backend/device-tensor.js';
import { BackendError, BudgetError, CapacityError, DTypeError, SequenceError, ShapeError } from '../core/errors.js';
import { type Geometry, checkInt } from '../core/geometry.js';
import { checkPackable, packedKvBytesUsed } from '../backend/packed-store.js';
import { evictionCandidates } from '../policies/budget.js';
import type { BudgetPolicy } from '../policies/policy.js';
import { type StorageFormat, isPacked } from '../quant/storage.js';
import type { ImportanceTracker } from '../trackers/tracker.js';
import { scissorhands } from '../trackers/scissorhands.js';
import { type KVCacheOptions, type ResolvedOptions, resolveOptions } from './options.js';
import type { CacheStats, LayerStats } from './stats.js';

/** What the cache's calls take: host arrays, or (on the cuda backend) device tensors. */
export type CacheArray = HostArray | DeviceTensor;

/**
 * One planned piece of an append: evict `counts[h]` tokens from each KV head (one entry: the same count
 * from every head), with these protections, then append `rows`.
 */
interface Step {
  readonly rows: number;
  readonly counts: Int32Array;
  readonly sinks: number;
  readonly recent: number;
}

/** The arrays of one prefill call. */
interface Block {
  readonly q: CacheArray;
  readonly k: CacheArray;
  readonly v: CacheArray;
  readonly out: CacheArray;
}

/** A step that only appends. */
function appendOnly(rows: number): Step {
  return { rows, counts: new Int32Array(1), sinks: 0, recent: 0 };
}

/** Which method's tracker holds the state of a (layer, sequence) in a composed cache. */
const PROMPT = 0;
const DECODE = 1;

/**
 * A KV cache with a fixed memory budget. Memory for every sequence slot is reserved at creation from
 * the policy's capacities, and nothing is allocated on the decode path.
 *
 * Per decode step and layer an engine calls {@link KVCache.attend} with the new token's query, key and
 * value (RoPE already applied); the cache drops tokens if the policy says so, appends, attends over what
 * it kept, and updates the tracker from the same attention probabilities.
 *
 * @example
 * ```ts
 * import { KVCache, fixedBudget, scissorhands } from 'scissorhands';
 * using cache = KVCache.create({
 *   geometry: { layers: 2, queryHeads: 4, kvHeads: 2, headDim: 8 },
 *   tracker: scissorhands(),
 *   policy: fixedBudget({ tokens: 32 }),
 * });
 * const seq = cache.open();
 * const q = new Float32Array(4 * 8), k = new Float32Array(2 * 8), v = new Float32Array(2 * 8);
 * for (let layer = 0; layer < 2; layer++) cache.attend(seq, layer, q, k, v);
 * console.log(cache.stats().tokensKept);
 * ```
 */
export class KVCache implements Disposable {
  readonly geometry: Geometry;
  readonly dtype: DType;
  /** How keys and values are stored: dense, or packed (`docs/packing.md`). */
  readonly storage: StorageFormat;
  readonly maxSequences: number;
  readonly tracker: ImportanceTracker;
  readonly policy: BudgetPolicy;
  readonly #options: ResolvedOptions;
  readonly #backend: Backend;
  readonly #stores: LayerStore[];
  readonly #open: Uint8Array;
  /** `[layer][seq]` tokens seen: the next token's position. */
  readonly #seen: Float64Array;
  readonly #evictions: Float64Array;
  /** Token-head entries kept over all layers and open sequences, now and at most so far. */
  #kept = 0;
  #peakKept = 0;
  /**
   * `[layer][seq]` bytes of keys and values held, their sum, and the largest `bytesUsed` so far, counted
   * on the host from its stores (empty when {@link KVCache.#ledger} counts instead).
   */
  readonly #kvBytes: Float64Array;
  #kvTotal = 0;
  #peakBytes = 0;
  /**
   * Packed storage on the cuda backend: the same counts kept on the device, where the kernels change the
   * packed counts they depend on (`docs/cuda.md`); `stats()` reads it.
   */
  readonly #ledger: DeviceByteLedger | undefined;
  readonly #life = new Lifetime('KVCache');
  readonly #group: number;
  readonly #attention: { queryHeads: number; scale: number };
  /** The tracker and policy prefill runs with (the prompt method's in a composed cache). */
  readonly #promptTracker: ImportanceTracker;
  readonly #promptPolicy: BudgetPolicy;
  /** `[layer]` tokens a head keeps after a prompt compression, on average (with a prompt rule). */
  readonly #layerTokens: readonly number[];
  /** `[layer][seq][kvHead]` the tokens each head may keep (with a prompt rule; per-head with `split`). */
  readonly #budgets: Int32Array | undefined;
  /** `[layer][seq]` {@link PROMPT} or {@link DECODE}: whose tracker state the tokens hold (composed caches). */
  readonly #phase: Uint8Array | undefined;
  /** The plan of a decode step without per-head budgets, reused by every {@link KVCache.attend} (no allocation). */
  readonly #decodeStep: Step;

  private constructor(options: ResolvedOptions, backend: Backend) {
    this.#options = options;
    this.geometry = options.geometry;
    this.dtype = options.dtype;
    this.storage = options.storage;
    this.maxSequences = options.maxSequences;
    this.tracker = options.tracker;
    this.policy = options.policy;
    this.#backend = backend;
    const { layers, kvHeads, headDim, queryHeads } = options.geometry;
    this.#stores = options.capacities.map((capacity, layer) =>
      backend.allocate({
        layer, dtype: options.dtype, maxSequences: options.maxSequences, kvHeads, headDim, capacity,
        auxWords: options.tracker.auxWords, queryHeads, ...(isPacked(options.storage) ? { storage: options.storage } : {}),
        ...(options.slots === undefined ? {} : { slots: options.slots[layer]! }),
      }));
    this.#promptTracker = options.prompt?.tracker ?? options.tracker;
    this.#promptPolicy = options.prompt?.policy ?? options.policy;
    const rule = options.rule;
    this.#layerTokens = rule === undefined ? [] : this.#stores.map((_, layer) => rule.tokens(layer, options.geometry));
    this.#budgets = rule === undefined ? undefined : new Int32Array(layers * options.maxSequences * kvHeads);
    this.#phase = options.prompt === undefined ? undefined : new Uint8Array(layers * options.maxSequences);
    const metaPerToken = 8 + 4 * options.tracker.auxWords;
    this.#ledger = isPacked(options.storage) && backend.name === 'cuda'
      ? (backend as CudaBackend).createLedger(layers * options.maxSequences, metaPerToken)
      : undefined;
    this.#kvBytes = new Float64Array(this.#ledger === undefined ? layers * options.maxSequences : 0);
    this.#open = new Uint8Array(options.maxSequences);
    this.#seen = new Float64Array(layers * options.maxSequences);
    this.#evictions = new Float64Array(layers);
    this.#group = queryHeads / kvHeads;
    this.#attention = { queryHeads, scale: options.scale };
    this.#decodeStep = { rows: 1, counts: new Int32Array(1), sinks: options.policy.sinks, recent: Math.max(0, options.policy.recent - 1) };
  }

  /**
   * Creates a cache and reserves its memory.
   * @throws {@link KvError} with a code naming the first bad option; `KV_LOAD` when `backend: 'cpu'`
   * is asked for and the native addon cannot be loaded.
   * @example
   * ```ts
   * const cache = KVCache.create({ geometry, policy: fixedBudget({ tokens: 512 }), maxSequences: 8 });
   * ```
   */
  static create(options: KVCacheOptions): KVCache {
    const resolved = resolveOptions(options, () => scissorhands());
    const backend = selectBackend(resolved.backend);
    if (resolved.rule !== undefined) {
      const needs = ['restartState', ...(resolved.rule.split === undefined ? [] : ['evictHeads', 'relayout'])];
      if (resolved.prompt?.tracker.pooling !== undefined || resolved.tracker.pooling !== undefined) needs.push('poolScores');
      const missing = needs.filter((name) => typeof backend[name as keyof Backend] !== 'function');
      if (missing.length > 0) {
        backend.dispose();
        throw new BackendError(`prompt compression needs ${missing.join(', ')}, which the ${backend.name} backend does not have yet`, 'policy');
      }
    }
    return new KVCache(resolved, backend);
  }

  /**
   * Name of the backend running this cache.
   * @example
   * ```ts
   * cache.backend; // 'cpu'
   * ```
   */
  get backend(): string {
    return this.#backend.name;
  }

  /**
   * Sets the CUDA stream (a `cudaStream_t` as bigint; `0n` the default stream) the cache's kernels and
   * copies go on: the engine's own stream, so its kernels and the cache's are ordered without syncs.
   * @throws {@link BackendError} unless the cache runs on the cuda backend.
   * @example
   * ```ts
   * cache.setStream(engineStream);
   * ```
   */
  setStream(stream: bigint): void {
    this.#life.check();
    if (this.#backend.name !== 'cuda') throw new BackendError("streams need a cache created with backend: 'cuda'", 'stream');
    (this.#backend as CudaBackend).stream = stream;
  }

  /**
   * Opens a sequence slot and returns its id.
   * @throws {@link CapacityError} when all `maxSequences` slots are open.
   * @example
   * ```ts
   * const seq = cache.open();
   * ```
   */
  open(): number {
    this.#life.check();
    const seq = this.#open.indexOf(0);
    if (seq < 0) throw new CapacityError(`all ${this.maxSequences} sequence slots are open`);
    this.#open[seq] = 1;
    this.#clear(seq);
    return seq;
  }

  /**
   * Empties a sequence, keeping its slot open (positions restart at 0).
   * @example
   * ```ts
   * cache.reset(seq);
   * ```
   */
  reset(seq: number): void {
    this.#checkSeq(seq);
    this.#clear(seq);
  }

  /**
   * Closes a sequence and frees its slot for {@link KVCache.open}.
   * @example
   * ```ts
   * cache.close(seq);
   * ```
   */
  close(seq: number): void {
    this.#checkSeq(seq);
    this.#clear(seq);
    this.#open[seq] = 0;
  }

  /**
   * Whether a sequence id is open.
   * @example
   * ```ts
   * if (!cache.isOpen(seq)) seq = cache.open();
   * ```
   */
  isOpen(seq: number): boolean {
    this.#life.check();
    return Number.isInteger(seq) && seq >= 0 && seq < this.maxSequences && this.#open[seq] === 1;
  }

  /**
   * One decode step of one layer: drops tokens if the policy says so, appends `k`/`v`, attends with `q`
   * over the kept tokens, and updates the tracker with the attention probabilities.
   * @param q `[queryHeads][headDim]`, RoPE applied.
   * @param k `[kvHeads][headDim]`, RoPE applied.
   * @param v `[kvHeads][headDim]`.
   * @param out Optional `[queryHeads][headDim]` output of `q`'s type.
   * @returns The attention output.
   * @example
   * ```ts
   * const out = cache.attend(seq, layer, q, k, v);
   * ```
   */
  attend<T extends CacheArray>(seq: number, layer: number, q: T, k: T, v: T, out?: T): T {
    const store = this.#store(seq, layer);
    const { queryHeads, kvHeads, headDim } = this.geometry;
    this.#checkArray(q, 'q', queryHeads * headDim);
    this.#checkArray(k, 'k', kvHeads * headDim, q);
    this.#checkArray(v, 'v', kvHeads * headDim, q);
    const output = this.#output(out, q, queryHeads * headDim);
    this.#checkValues(k, v);
    this.#enter(store, seq, layer, DECODE);
    const step = this.#planDecode(store, seq, layer);
    const backend = this.#backend;
    if (backend.attend === undefined) {
      this.#apply(store, seq, layer, step, k, v, this.tracker);
      backend.decode(store, seq, q as HostArray, output as HostArray, this.#attention, this.tracker);
      return output;
    }
    this.#evict(store, seq, layer, step.counts, step.sinks, step.recent, this.tracker);
    const position = this.#seenOf(seq, layer);
    // Device tensors reach only the cuda backend (#checkArray), whose kernels take either kind of array.
    backend.attend(store, seq, k as HostArray, v as HostArray, position, q as HostArray, output as HostArray, this.#attention, this.tracker);
    this.#appended(store, seq, layer, 1);
    return output;
  }

  /**
   * Causal attention for a block of prompt tokens. When the block does not fit the budget it goes in
   * chunks, evicting between them, so the cache never holds more than its capacity. With a prompt
   * policy (`snapKV`, `pyramidKV`, `adaKV`, or the `prompt` option) the block always goes in chunks of
   * at most `prefillChunk` rows, and each chunk that leaves the layer over its budget is followed by a
   * compression scored by its observation window (`docs/semantics.md`, prompt compression): the cache
   * never holds more than the budget plus one chunk, and with a budget at least the prompt's length
   * the result is exactly that of one unchunked prefill. (A custom prompt rule whose `split` answers out
   * of bounds throws `KV_BUDGET` once the chunks before it have gone in.)
   * @param q `[rows][queryHeads][headDim]`.
   * @param k `[rows][kvHeads][headDim]`.
   * @param v `[rows][kvHeads][headDim]`.
   * @returns `[rows][queryHeads][headDim]` outputs.
   * @example
   * ```ts
   * const out = cache.prefill(seq, layer, qBlock, kBlock, vBlock);
   * ```
   */
  prefill<T extends CacheArray>(seq: number, layer: number, q: T, k: T, v: T, out?: T): T {
    const store = this.#store(seq, layer);
    const { queryHeads, kvHeads, headDim } = this.geometry;
    const rows = this.#rows(k, 'k', kvHeads * headDim);
    this.#checkArray(q, 'q', rows * queryHeads * headDim);
    this.#checkArray(k, 'k', rows * kvHeads * headDim, q);
    this.#checkArray(v, 'v', rows * kvHeads * headDim, q);
    const output = this.#output(out, q, rows * queryHeads * headDim);
    this.#checkValues(k, v);
    this.#enter(store, seq, layer, PROMPT);
    const block = { q, k, v, out: output };
    if (this.#options.rule !== undefined) {
      this.#prefillPrompt(store, seq, layer, block, rows);
      return output;
    }
    let done = 0;
    for (const step of this.#plan(store, seq, layer, rows, true)) {
      this.#prefillRows(store, seq, layer, block, done, step);
      done += step.rows;
    }
    return output;
  }

  /** Runs `step` on the block's rows from `from`: its evictions, then append and attention (the prompt tracker). */
  #prefillRows(store: LayerStore, seq: number, layer: number, block: Block, from: number, step: Step): void {
    const qRow = this.geometry.queryHeads * this.geometry.headDim;
    const kvRow = this.geometry.kvHeads * this.geometry.headDim;
    const to = from + step.rows;
    this.#apply(store, seq, layer, step, block.k.subarray(from * kvRow, to * kvRow), block.v.subarray(from * kvRow, to * kvRow), this.#promptTracker);
    this.#backend.prefill(
      store, seq, block.q.subarray(from * qRow, to * qRow) as HostArray, to - from, block.out.subarray(from * qRow, to * qRow) as HostArray,
      this.#attention, this.#promptTracker,
    );
  }

  /**
   * Prefill under a prompt rule: chunks of at most `prefillChunk` rows; before a chunk that will leave the
   * layer over its budget the prompt tracker's state restarts, so that its last `window` rows alone score
   * the compression that follows the chunk.
   */
  #prefillPrompt(store: LayerStore, seq: number, layer: number, block: Block, rows: number): void {
    const rule = this.#options.rule!;
    const chunk = this.#options.prefillChunks[layer]!;
    for (let done = 0; done < rows;) {
      const c = Math.min(chunk, rows - done);
      // Catch-up: an append of many rows may have left the layer over its budget.
      if (this.#overBudget(store, seq, layer, 0)) this.#compress(store, seq, layer);
      this.#makeRoom(store, seq, layer, c);
      const compress = this.#overBudget(store, seq, layer, c);
      // Rows before the observation window; a chunk shorter than the window is all window.
      const before = compress ? Math.max(0, c - rule.window) : c;
      if (before > 0) this.#prefillRows(store, seq, layer, block, done, appendOnly(before));
      if (compress) {
        this.#backend.restartState!(store, seq, this.#promptTracker);
        this.#prefillRows(store, seq, layer, block, done + before, appendOnly(c - before));
        this.#compress(store, seq, layer);
      }
      done += c;
    }
  }

  /** Whether appending `incoming` tokens leaves the layer over its prompt budget. */
  #overBudget(store: LayerStore, seq: number, layer: number, incoming: number): boolean {
    const { kvHeads } = this.geometry;
    const tokens = this.#layerTokens[layer]!;
    let total = 0;
    let longest = 0;
    for (let h = 0; h < kvHeads; h++) {
      const length = store.lengths[seq * kvHeads + h]! + incoming;
      total += length;
      longest = Math.max(longest, length);
    }
    return this.#options.rule!.split === undefined ? longest > tokens : total > tokens * kvHeads;
  }

  /**
   * Per-head layouts: when a head lacks room for `incoming` more tokens, the free slots of the sequence
   * are shared out again evenly (heads keep their tokens).
   */
  #makeRoom(store: LayerStore, seq: number, layer: number, incoming: number): void {
    const layout = store.heads;
    if (layout === undefined) return;
    const { kvHeads } = this.geometry;
    const first = seq * kvHeads;
    let short = false;
    for (let h = 0; h < kvHeads; h++) short ||= store.lengths[first + h]! + incoming > layout.capacities[first + h]!;
    if (!short) return;
    this.#share(store, seq, Int32Array.from(store.lengths.subarray(first, first + kvHeads)));
    for (let h = 0; h < kvHeads; h++) {
      if (store.lengths[first + h]! + incoming > layout.capacities[first + h]!) {
        throw new BudgetError(`KV head ${h} of layer ${layer} has no room for ${incoming} more prompt tokens`, 'policy');
      }
    }
  }

  /** Gives each head `needs[h]` slots plus an even share of the rest of the sequence's slots (at most the capacity). */
  #share(store: LayerStore, seq: number, needs: Int32Array): void {
    const layout = store.heads!;
    const spare = Math.floor((layout.slots - needs.reduce((a, b) => a + b, 0)) / needs.length);
    this.#backend.relayout!(store, seq, needs.map((n) => Math.min(store.capacity, n + spare)));
  }

  /**
   * A prompt compression (`docs/semantics.md`): pools the scores before the observation window, chooses
   * per head how many candidates stay (the rule's split, else down to the layer's budget), evicts them
   * and, with per-head budgets, records each head's budget and lays the heads out for it.
   */
  #compress(store: LayerStore, seq: number, layer: number): void {
    const rule = this.#options.rule!;
    const { kvHeads } = this.geometry;
    const first = seq * kvHeads;
    const sinks = this.#promptPolicy.sinks;
    const tokens = this.#layerTokens[layer]!;
    const lengths = Int32Array.from(store.lengths.subarray(first, first + kvHeads));
    const ends = lengths.map((length) => Math.max(0, length - rule.window));
    const pooling = this.#promptTracker.pooling;
    if (pooling !== undefined) this.#backend.poolScores!(store, seq, pooling.kernel, pooling.mode, ends);
    const candidates = ends.map((end) => Math.max(0, end - sinks));
    let counts: Int32Array;
    if (rule.split === undefined) {
      counts = lengths.map((length, h) => Math.min(candidates[h]!, Math.max(0, length - tokens)));
    } else {
      const scores = Array.from(candidates, (n, h) => (n === 0 ? new Float32Array(0) : this.#backend.inspect(store, seq, h).scores.subarray(sinks, sinks + n)));
      const keep = Math.max(0, tokens * kvHeads - lengths.reduce((a, b, h) => a + b - candidates[h]!, 0));
      const kept = rule.split({ layer, keep, scores });
      if (!(kept instanceof Int32Array) || kept.length !== kvHeads || kept.some((x, h) => x < 0 || x > candidates[h]!)
        || kept.reduce((a, b) => a + b, 0) > keep) {
        throw new BudgetError(`policy ${this.#promptPolicy.name}: split must give each head 0..its candidates, ${keep} in all`, 'policy');
      }
      counts = candidates.map((n, h) => n - kept[h]!);
    }
    this.#evict(store, seq, layer, counts, sinks, rule.window, this.#promptTracker);
    if (rule.split !== undefined) {
      const budgets = lengths.map((length, h) => length - counts[h]!);
      this.#budgets!.set(budgets, (layer * this.maxSequences + seq) * kvHeads);
      this.#share(store, seq, budgets);
    }
  }

  /**
   * Switches a (layer, sequence) of a composed cache to the tracker of `phase`, restarting its state on
   * the kept tokens (the other tracker's scores mean nothing to it).
   */
  #enter(store: LayerStore, seq: number, layer: number, phase: number): void {
    const at = layer * this.maxSequences + seq;
    if (this.#phase === undefined || this.#phase[at] === phase) return;
    this.#phase[at] = phase;
    this.#backend.restartState!(store, seq, phase === PROMPT ? this.#promptTracker : this.tracker);
  }

  /**
   * Appends keys and values without attending, for engines that run their own attention (follow with
   * {@link KVCache.observe}). Drops tokens first if the policy says so.
   * @param k `[rows][kvHeads][headDim]`.
   * @example
   * ```ts
   * cache.append(seq, layer, k, v);
   * const { keys, values, length } = cache.view(seq, layer, 0);
   * ```
   */
  append(seq: number, layer: number, k: CacheArray, v: CacheArray): void {
    const store = this.#store(seq, layer);
    const { kvHeads, headDim } = this.geometry;
    const rows = this.#rows(k, 'k', kvHeads * headDim);
    this.#checkArray(k, 'k', rows * kvHeads * headDim);
    this.#checkArray(v, 'v', rows * kvHeads * headDim, k);
    const room = store.capacity - this.policy.sinks;
    if (rows > room) throw new BudgetError(`cannot append ${rows} tokens at once; at most ${room} fit beside the sinks`, 'k');
    this.#checkValues(k, v);
    const [step] = this.#plan(store, seq, layer, rows, false);
    this.#enter(store, seq, layer, DECODE);
    this.#apply(store, seq, layer, step!, k, v, this.tracker);
  }

  /**
   * Feeds attention probabilities computed by the engine for the latest query row (one observation).
   * @param probs `[queryHeads][stride]`: row `h` holds the probabilities over the kept tokens of KV head
   * `h / (queryHeads / kvHeads)`, in slot order (as {@link KVCache.view} lists them).
   * @param stride Elements per row; default the current length (the longest head's).
   * @example
   * ```ts
   * cache.observe(seq, layer, probs);
   * ```
   */
  observe(seq: number, layer: number, probs: Float32Array | DeviceTensor, stride?: number): void {
    const store = this.#store(seq, layer);
    const { kvHeads } = this.geometry;
    const length = Math.max(...store.lengths.subarray(seq * kvHeads, (seq + 1) * kvHeads));
    const rowStride = stride === undefined ? length : checkInt(stride, 'stride', Math.max(1, length));
    if (!(probs instanceof Float32Array) && !(this.#onDevice(probs) && probs.dtype === 'f32')) {
      throw new DTypeError('expected a Float32Array (or an f32 DeviceTensor on the cuda backend)', 'probs');
    }
    this.#checkLength(probs, 'probs', this.geometry.queryHeads * rowStride);
    this.#enter(store, seq, layer, DECODE);
    this.#backend.observe(store, seq, probs as Float32Array, rowStride, this.geometry.queryHeads, this.tracker);
  }

  /**
   * Tokens kept by one KV head.
   * @example
   * ```ts
   * cache.length(seq, 0); // tokens kept by head 0 of layer 0
   * ```
   */
  length(seq: number, layer: number, kvHead = 0): number {
    const store = this.#store(seq, layer);
    return store.lengths[seq * this.geometry.kvHeads + this.#head(kvHead)]!;
  }

  /**
   * The tokens one KV head may keep while decoding, under a prompt policy (`snapKV`, `pyramidKV`,
   * `adaKV`): the layer's budget, until a compression with per-head budgets gives the head its own.
   * `undefined` for caches without a prompt policy (their policy decides alone).
   * @example
   * ```ts
   * const budgets = [0, 1].map((h) => cache.headBudget(seq, layer, h)); // e.g. [301, 211] after an Ada-KV prompt
   * ```
   */
  headBudget(seq: number, layer: number, kvHead = 0): number | undefined {
    this.#store(seq, layer);
    const { kvHeads } = this.geometry;
    return this.#budgets?.[(layer * this.maxSequences + seq) * kvHeads + this.#head(kvHead)];
  }

  /**
   * Token slots one KV head owns now: the layer's capacity, or with per-head budgets (`adaKV`) the slots
   * the last layout gave the head (its budget plus room for a prompt chunk).
   * @example
   * ```ts
   * cache.headCapacity(seq, layer, 1) - cache.length(seq, layer, 1); // room left in head 1
   * ```
   */
  headCapacity(seq: number, layer: number, kvHead = 0): number {
    const store = this.#store(seq, layer);
    return store.heads?.capacities[seq * this.geometry.kvHeads + this.#head(kvHead)] ?? store.capacity;
  }

  /**
   * Tokens a sequence has seen at a layer: the position the next token gets.
   * @example
   * ```ts
   * const position = cache.seen(seq, 0);
   * ```
   */
  seen(seq: number, layer = 0): number {
    this.#store(seq, layer);
    return this.#seenOf(seq, layer);
  }

  /**
   * Live views of what one KV head keeps.
   * @example
   * ```ts
   * const { keys, values, positions, length } = cache.view(seq, layer, kvHead);
   * ```
   */
  view(seq: number, layer: number, kvHead: number): HeadView {
    const store = this.#store(seq, layer);
    return this.#backend.view(store, seq, this.#head(kvHead));
  }


  /**
   * Copies of the positions and scores one KV head keeps, to see or plot what the cache kept.
   * @example
   * ```ts
   * const { positions, scores } = cache.inspect(seq, layer, 0);
   * ```
   */
  inspect(seq: number, layer: number, kvHead: number): HeadInspection {
    const store = this.#store(seq, layer);
    return this.#backend.inspect(store, seq, this.#head(kvHead));
  }


  /**
   * A snapshot of memory and token counts. With packed storage on the cuda backend the byte counts come
   * from the cache's device ledger, so this waits for the work queued on the stream (call it between steps).
   * @example
   * ```ts
   * const { bytesReserved, bytesUsed, compression } = cache.stats();
   * ```
   */
  stats(): CacheStats {
    this.#life.check();
    const { kvHeads, headDim } = this.geometry;
    const bytesPerToken = 2 * headDim * bytesPerElement(this.dtype);
    const metaPerToken = 8 + 4 * this.tracker.auxWords;
    let bytesReserved = this.#seen.byteLength + this.#evictions.byteLength + this.#open.byteLength + this.#kvBytes.byteLength
      + (this.#ledger?.bytes ?? 0);
    let storeBytes = 0;
    let tokensKept = 0;
    let tokensSeen = 0;
    let evictions = 0;
    const layers: LayerStats[] = this.#stores.map((store, layer) => {
      const bytes = this.#backend.bytes(store);
      bytesReserved += bytes;
      storeBytes += bytes;
      const kept = new Array<number>(kvHeads).fill(0);
      let seen = 0;
      for (let seq = 0; seq < this.maxSequences; seq++) {
        if (this.#open[seq] !== 1) continue;
        seen += this.#seenOf(seq, layer);
        for (let h = 0; h < kvHeads; h++) kept[h]! += store.lengths[seq * kvHeads + h]!;
      }
      tokensKept += kept.reduce((a, b) => a + b, 0);
      tokensSeen += seen * kvHeads;
      evictions += this.#evictions[layer]!;
      return { layer, capacity: store.capacity, tokensKept: kept, tokensSeen: seen, evictions: this.#evictions[layer]! };
    });
    const bytesF16 = tokensSeen * 4 * headDim;
    // The device ledger (waits for the stream) counts tokens from the device lengths, which CUDA graph
    // replays advance too; the host mirror's do not.
    const ledger = this.#ledger?.read();
    const kvBytes = ledger?.kvBytes ?? this.#kvTotal;
    const bytesUsed = kvBytes + (ledger?.tokens ?? tokensKept) * metaPerToken;
    const peakBytesUsed = ledger?.peakBytesUsed ?? this.#peakBytes;
    return {
      backend: this.#backend.name,
      storage: this.storage.format,
      bytesReserved,
      bytesPerSequence: storeBytes / this.maxSequences,
      bytesUsed,
      peakBytesUsed,
      peakTokensKept: this.#peakKept,
      bytesKV: kvBytes,
      bytesF16,
      compressionVsF16: kvBytes === 0 ? 1 : bytesF16 / kvBytes,
      bytesFull: tokensSeen * bytesPerToken,
      bytesPerToken,
      tokensKept,
      tokensSeen,
      evictions,
      compression: tokensKept === 0 ? 1 : tokensSeen / tokensKept,
      openSequences: this.#open.reduce((a, b) => a + b, 0),
      layers,
    };
  }

  /**
   * Frees the cache's memory; idempotent. Any later call throws {@link DisposedError}.
   * @example
   * ```ts
   * cache.dispose();
   * ```
   */
  dispose(): void {
    if (!this.#life.end()) return;
    this.#stores.length = 0;
    this.#backend.dispose();
  }

  /** Same as {@link KVCache.dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  #seenOf(seq: number, layer: number): number {
    return this.#seen[layer * this.maxSequences + seq]!;
  }

  #clear(seq: number): void {
    const { kvHeads } = this.geometry;
    this.#stores.forEach((store, layer) => {
      for (let h = 0; h < kvHeads; h++) this.#kept -= store.lengths[seq * kvHeads + h]!;
      this.#backend.clear(store, seq);
      const at = layer * this.maxSequences + seq;
      this.#budgets?.fill(this.#layerTokens[layer]!, at * kvHeads, (at + 1) * kvHeads);
      if (this.#phase !== undefined) this.#phase[at] = PROMPT;
      this.#seen[at] = 0;
      if (this.#ledger !== undefined) {
        this.#ledger.account(store, seq, at);
      } else {
        this.#kvTotal -= this.#kvBytes[at]!;
        this.#kvBytes[at] = 0;
      }
    });
  }

  /** Bytes of keys and values a sequence holds now in one layer's store (exact for packed storage). */
  #kvBytesOf(store: LayerStore, seq: number): number {
    if (store.packed !== undefined) return packedKvBytesUsed(store, seq);
    const { kvHeads, headDim } = this.geometry;
    let kept = 0;
    for (let h = 0; h < kvHeads; h++) kept += store.lengths[seq * kvHeads + h]!;
    return kept * 2 * headDim * bytesPerElement(this.dtype);
  }

  /** Packed storage holds finite values in the f16 range: checked before anything changes. */
  #checkValues(k: CacheArray, v: CacheArray): void {
    if (!isPacked(this.storage) || k instanceof DeviceTensor || v instanceof DeviceTensor) return;
    checkPackable(this.dtype, k, 'k');
    checkPackable(this.dtype, v, 'v');
  }

  /**
   * Plans how `rows` new tokens go in: chunks (only when `chunked` and the block does not fit) and the
   * evictions before each, checked against the policy's protections and the capacity. Nothing changes
   * until the whole plan is known to be feasible, so a call that throws leaves the sequence as it was.
   */
  #plan(store: LayerStore, seq: number, layer: number, rows: number, chunked: boolean): Step[] {
    const { policy } = this;
    const { kvHeads } = this.geometry;
    // With per-head budgets (a prompt rule) each head is planned on its own; else head 0 speaks for all.
    const budgets = this.#budgets?.subarray((layer * this.maxSequences + seq) * kvHeads, (layer * this.maxSequences + seq + 1) * kvHeads);
    const lengths = Array.from(store.lengths.subarray(seq * kvHeads, seq * kvHeads + (budgets === undefined ? 1 : kvHeads)));
    const capacities = lengths.map((_, h) => store.heads?.capacities[seq * kvHeads + h] ?? store.capacity);
    let seen = this.#seenOf(seq, layer);
    const steps: Step[] = [];
    for (let done = 0; done < rows;) {
      const left = rows - done;
      const fits = !chunked || (lengths[0]! + left <= store.capacity
        && policy.evictions({ layer, length: lengths[0]!, incoming: left, seen, capacity: store.capacity }) === 0);
      const incoming = fits ? left : Math.min(left, this.#options.prefillChunks[layer]!);
      const counts = Int32Array.from(lengths, (length, h) => this.#count(layer, length, incoming, seen, capacities[h]!, budgets?.[h]));
      steps.push({ rows: incoming, counts, sinks: policy.sinks, recent: Math.max(0, policy.recent - incoming) });
      lengths.forEach((length, h) => (lengths[h] = length + incoming - counts[h]!));
      seen += incoming;
      done += incoming;
    }
    return steps;
  }

  /**
   * The tokens each head drops before `incoming` new ones join `length` kept (`budget`: the head's own, with
   * a prompt rule), as the policy says, checked against its protections and the head's `capacity`.
   */
  #count(layer: number, length: number, incoming: number, seen: number, capacity: number, budget: number | undefined): number {
    const { policy } = this;
    // Two literals, not a spread: this runs on every decode step.
    const count = policy.evictions(budget === undefined ? { layer, length, incoming, seen, capacity } : { layer, length, incoming, seen, capacity, budget });
    const candidates = evictionCandidates(policy, { length, incoming });
    if (!Number.isInteger(count) || count < 0 || count > candidates) {
      throw new BudgetError(`policy ${policy.name} asked to evict ${String(count)} tokens; ${candidates} are not protected`, 'policy');
    }
    if (length - count + incoming > capacity) {
      throw new BudgetError(`policy ${policy.name} leaves ${length - count} tokens; ${incoming} more do not fit in ${capacity}`, 'policy');
    }
    return count;
  }

  /**
   * {@link KVCache.#plan} of one decode row: without per-head budgets head 0 speaks for all, and the plan is
   * the reused {@link KVCache.#decodeStep}.
   */
  #planDecode(store: LayerStore, seq: number, layer: number): Step {
    if (this.#budgets !== undefined) return this.#plan(store, seq, layer, 1, false)[0]!;
    const first = seq * this.geometry.kvHeads;
    const capacity = store.heads?.capacities[first] ?? store.capacity;
    const step = this.#decodeStep;
    step.counts[0] = this.#count(layer, store.lengths[first]!, 1, this.#seenOf(seq, layer), capacity, undefined);
    return step;
  }

  /** Evicts what the step says, then appends its tokens with `tracker`'s append rule. */
  #apply(store: LayerStore, seq: number, layer: number, step: Step, k: CacheArray, v: CacheArray, tracker: ImportanceTracker): void {
    this.#evict(store, seq, layer, step.counts, step.sinks, step.recent, tracker);
    // Device tensors reach only the cuda backend (#checkArray), whose kernels take either kind of array.
    this.#backend.append(store, seq, k as HostArray, v as HostArray, step.rows, this.#seenOf(seq, layer), tracker);
    this.#appended(store, seq, layer, step.rows);
  }

  /** Counts `rows` tokens just appended to (layer, seq). */
  #appended(store: LayerStore, seq: number, layer: number, rows: number): void {
    this.#seen[layer * this.maxSequences + seq]! += rows;
    this.#kept += rows * this.geometry.kvHeads;
    this.#account(store, seq, layer);
  }

  /**
   * Drops `counts[h]` tokens from head `h` (a single count: the same from every head, in `tracker`'s
   * scope), protecting `sinks` and `recent`.
   */
  #evict(store: LayerStore, seq: number, layer: number, counts: Int32Array, sinks: number, recent: number, tracker: ImportanceTracker): void {
    const { kvHeads } = this.geometry;
    const uniform = counts.length === 1 || counts.every((c) => c === counts[0]);
    const dropped = counts.length === 1 ? counts[0]! * kvHeads : counts.reduce((a, b) => a + b, 0);
    if (dropped === 0) return;
    if (uniform) this.#backend.evict(store, seq, counts[0]!, sinks, recent, tracker.scope);
    else this.#backend.evictHeads!(store, seq, counts, sinks, recent);
    this.#evictions[layer]! += dropped;
    this.#kept -= dropped;
    this.#account(store, seq, layer);
  }

  /**
   * Brings the byte counts of (layer, seq) and the peaks up to date: on the host from its stores, or with a
   * device ledger by a kernel queued after the ones that changed the counts (no wait on the decode path).
   */
  #account(store: LayerStore, seq: number, layer: number): void {
    const at = layer * this.maxSequences + seq;
    this.#peakKept = Math.max(this.#peakKept, this.#kept);
    if (this.#ledger !== undefined) {
      this.#ledger.account(store, seq, at);
      return;
    }
    const kv = this.#kvBytesOf(store, seq);
    this.#kvTotal += kv - this.#kvBytes[at]!;
    this.#kvBytes[at] = kv;
    this.#peakBytes = Math.max(this.#peakBytes, this.#kvTotal + this.#kept * (8 + 4 * this.tracker.auxWords));
  }

  #store(seq: number, layer: number): LayerStore {
    this.#life.check();
    this.#checkSeq(seq);
    checkInt(layer, 'layer', 0, this.geometry.layers - 1);
    return this.#stores[layer]!;
  }

  #checkSeq(seq: number): void {
    this.#life.check();
    if (!Number.isInteger(seq) || seq < 0 || seq >= this.maxSequences) {
      throw new SequenceError(`expected a sequence id in [0, ${this.maxSequences}), got ${String(seq)}`, 'seq');
    }
    if (this.#open[seq] !== 1) throw new SequenceError(`sequence ${seq} is not open`, 'seq');
  }

  #head(kvHead: number): number {
    return checkInt(kvHead, 'kvHead', 0, this.geometry.kvHeads - 1);
  }

  #rows(array: unknown, argument: string, rowLength: number): number {
    if (!(array instanceof Float32Array) && !(array instanceof Uint16Array) && !this.#onDevice(array)) {
      throw new DTypeError('expected a Float32Array or Uint16Array', argument);
    }
    if (array.length === 0 || array.length % rowLength !== 0) {
      throw new ShapeError(`expected a positive multiple of ${rowLength} elements, got ${array.length}`, argument);
    }
    return array.length / rowLength;
  }

  #checkArray(array: unknown, argument: string, expected: number, like?: CacheArray): void {
    if (this.#onDevice(array)) {
      if (array.dtype !== 'f32' && array.dtype !== this.dtype) throw new DTypeError(`expected f32 or ${this.dtype} elements`, argument);
      if (like !== undefined && !(like instanceof DeviceTensor && like.dtype === array.dtype)) {
        throw new DTypeError('expected the same array type as q', argument);
      }
    } else if (array instanceof Float32Array) {
      if (like !== undefined && !(like instanceof Float32Array)) throw new DTypeError('expected the same array type as q', argument);
    } else if (array instanceof Uint16Array) {
      if (this.dtype === 'f32') throw new DTypeError('Uint16Array inputs need an f16 or bf16 cache', argument);
      if (like !== undefined && !(like instanceof Uint16Array)) throw new DTypeError('expected the same array type as q', argument);
    } else {
      throw new DTypeError('expected a Float32Array or Uint16Array', argument);
    }
    this.#checkLength(array, argument, expected);
  }

  /** Whether `array` is a device tensor this cache accepts (only the cuda backend takes them). */
  #onDevice(array: unknown): array is DeviceTensor {
    if (!(array instanceof DeviceTensor)) return false;
    if (this.#backend.name !== 'cuda') throw new DTypeError("device tensors need a cache created with backend: 'cuda'", 'q');
    return true;
  }

  #checkLength(array: CacheArray, argument: string, expected: number): void {
    if (array.length !== expected) throw new ShapeError(`expected ${expected} elements, got ${array.length}`, argument);
  }

  #output<T extends CacheArray>(out: T | undefined, q: T, length: number): T {
    if (q instanceof DeviceTensor) {
      // Pass `out` on the decode path: allocating one here costs a cudaMalloc per call.
      if (out === undefined) return DeviceTensor.alloc(q.dtype, length) as T;
      if (!(out instanceof DeviceTensor) || out.dtype !== q.dtype) throw new DTypeError('expected a DeviceTensor of the same dtype as q', 'out');
      this.#checkLength(out, 'out', length);
      return out;
    }
    if (out === undefined) return (q instanceof Float32Array ? new Float32Array(length) : new Uint16Array(length)) as T;
    if (!(out instanceof Float32Array || out instanceof Uint16Array) || out.constructor !== q.constructor) {
      throw new DTypeError('expected the same array type as q', 'out');
    }
    this.#checkLength(out, 'out', length);
    return out;
  }
}
