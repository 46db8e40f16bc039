/**
 * The engine: batched decoding of a Llama model with every attention step done by a KV cache.
 *
 * One call to {@link LlamaEngine.step} advances B sequences by one token each. The matrix products run once
 * over the weights for all B rows (`model.ts`, `matmul.ts`); attention is per sequence, because each
 * sequence's cache holds different tokens: for every layer and row the engine applies RoPE at the token's
 * true position and calls `cache.attend(seq, layer, q, k, v, out)`, which appends k and v, evicts what the
 * policy says, attends over what is kept and updates the tracker.
 * @module
 */
import type { LlamaModel } from './model.js';

/**
 * The part of the SDK's `KVCache` the engine uses (a `KVCache` satisfies it).
 * @example
 * ```ts
 * const cache: AttentionCache = KVCache.create({ geometry: engine.geometry, maxSequences: 8, ... });
 * ```
 */
export interface AttentionCache {
  open(): number;
  close(seq: number): void;
  /** Appends `k`/`v` (evicting per policy), attends with `q` over what is kept, writes `out`. */
  attend(seq: number, layer: number, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array): unknown;
  /** The same for a block of rows with a causal mask. */
  prefill(seq: number, layer: number, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array): unknown;
}

/** Options of {@link LlamaEngine.generate}. */
export interface GenerateOptions {
  /** New tokens per sequence (default 128); generation also stops at the model's context length. */
  maxNewTokens?: number;
  /** Tokens that end a sequence (default: the model's eos ids). The stop token is kept in the output. */
  stop?: readonly number[];
  /** Feed prompts through `cache.prefill` (one call per layer) instead of token by token (default false). */
  prefill?: boolean;
  /** Called with each new token of sequence `index`. */
  onToken?: (index: number, token: number) => void;
  /** Called after every decode step, while the sequences are still open (e.g. to read `cache.stats()`). */
  onStep?: () => void;
}

/** Options of {@link LlamaEngine.score}. */
export interface ScoreOptions {
  /** Windows decoded together (default: the model's `maxRows`); the cache needs that many sequences. */
  batch?: number;
  /** Called after each step with the number of tokens scored so far. */
  onProgress?: (tokens: number) => void;
  /**
   * Tokens at the start of each window fed as a prompt through `cache.prefill` (default 0: every token
   * one step at a time). Their NLLs come from the prefill's own rows; a prompt method (SnapKV, PyramidKV,
   * Ada-KV) compresses them as a prompt, and the rest of the window is decoded step by step.
   */
  prefix?: number;
}

/** Index of the largest logit (the first one on ties, as `torch.argmax`). */
export function argmax(logits: Float32Array, from: number, n: number): number {
  let best = 0;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = logits[from + i]!;
    if (v > max) {
      max = v;
      best = i;
    }
  }
  return best;
}

/** `log(sum(exp(logits))) - logits[target]`: the negative log-likelihood of `target`. */
export function nll(logits: Float32Array, from: number, n: number, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[from + i]!);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(logits[from + i]! - max);
  return max + Math.log(sum) - logits[from + target]!;
}

/**
 * A Llama model driven through a KV cache.
 * @example
 * ```ts
 * const engine = new LlamaEngine(await LlamaModel.load('models/stories260K'));
 * using cache = KVCache.create({ geometry: engine.geometry, maxSequences: 1, policy: fullCache({ maxTokens: 512 }) });
 * const [ids] = engine.generate(cache, [[1]], { maxNewTokens: 64 });
 * ```
 */
export class LlamaEngine {
  /** The attention geometry to create caches with. */
  readonly geometry: { layers: number; queryHeads: number; kvHeads: number; headDim: number };
  // Attention inputs and outputs, one row per batch row (plain arrays, apart from the shared heap).
  private readonly q: Float32Array;
  private readonly k: Float32Array;
  private readonly v: Float32Array;
  private readonly o: Float32Array;
  private readonly rowViews: { q: Float32Array; k: Float32Array; v: Float32Array; o: Float32Array }[];

  constructor(readonly model: LlamaModel) {
    const c = model.config;
    this.geometry = { layers: c.layers, queryHeads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim };
    const R = model.maxRows;
    const qd = c.heads * c.headDim;
    const kvd = c.kvHeads * c.headDim;
    this.q = new Float32Array(R * qd);
    this.k = new Float32Array(R * kvd);
    this.v = new Float32Array(R * kvd);
    this.o = new Float32Array(R * qd);
    this.rowViews = Array.from({ length: R }, (_, r) => ({
      q: this.q.subarray(r * qd, (r + 1) * qd),
      k: this.k.subarray(r * kvd, (r + 1) * kvd),
      v: this.v.subarray(r * kvd, (r + 1) * kvd),
      o: this.o.subarray(r * qd, (r + 1) * qd),
    }));
  }

  /** Maximum rows of one step (the model's `maxRows`). */
  get maxBatch(): number {
    return this.model.maxRows;
  }

  /** Computes q, k (both rotated) and v of `rows` rows into the attention arrays. */
  private projectQkv(layer: number, rows: number, positionOf: (r: number) => number): void {
    const m = this.model;
    const c = m.config;
    const qd = c.heads * c.headDim;
    const kvd = c.kvHeads * c.headDim;
    const width = qd + 2 * kvd;
    const w = m.layerWeights[layer]!;
    m.rmsNorm(w.attnNorm, rows);
    m.project({ x: m.hn, rows, n: c.hidden, w: w.qkv, out: width, y: m.qkv });
    for (let r = 0; r < rows; r++) {
      const base = m.qkv + r * width;
      const pos = positionOf(r);
      m.rope(base, c.heads, pos, this.q, r * qd);
      m.rope(base + qd, c.kvHeads, pos, this.k, r * kvd);
      this.v.set(m.heap.subarray(base + qd + kvd, base + width), r * kvd);
    }
  }

  /** Output projection of the attention rows and the MLP. */
  private finishLayer(layer: number, rows: number): void {
    const m = this.model;
    const c = m.config;
    const qd = c.heads * c.headDim;
    m.heap.set(this.o.subarray(0, rows * qd), m.att);
    m.project({ x: m.att, rows, n: qd, w: m.layerWeights[layer]!.o, out: c.hidden, y: m.tmp });
    m.addResidual(m.tmp, rows);
    m.mlp(layer, rows);
  }

  /**
   * One decode step: row `r` feeds `tokens[r]` at position `positions[r]` to sequence `seqs[r]` of
   * `cache`. Returns the logits, `rows` rows of `vocabSize` (a view, valid until the next call).
   * @example
   * ```ts
   * const logits = engine.step(cache, [a, b], [tokA, tokB], [posA, posB]);
   * ```
   */
  step(cache: AttentionCache, seqs: ArrayLike<number>, tokens: ArrayLike<number>, positions: ArrayLike<number>): Float32Array {
    const rows = seqs.length;
    const m = this.model;
    const c = m.config;
    if (rows < 1 || rows > m.maxRows) throw new RangeError(`a step takes 1..${m.maxRows} rows, got ${rows}`);
    if (tokens.length !== rows || positions.length !== rows) throw new RangeError('seqs, tokens and positions must have the same length');
    for (let r = 0; r < rows; r++) {
      const p = positions[r]!;
      if (!Number.isInteger(p) || p < 0 || p >= c.maxPositions) throw new RangeError(`position ${p} is outside 0..${c.maxPositions - 1}`);
    }
    m.embedTokens(tokens, rows);
    for (let layer = 0; layer < c.layers; layer++) {
      this.projectQkv(layer, rows, (r) => positions[r]!);
      for (let r = 0; r < rows; r++) {
        const v = this.rowViews[r]!;
        cache.attend(seqs[r]!, layer, v.q, v.k, v.v, v.o);
      }
      this.finishLayer(layer, rows);
    }
    m.head(rows);
    return m.heap.subarray(m.logits, m.logits + rows * c.vocabSize);
  }

  /**
   * Feeds a prompt to one sequence with `cache.prefill` (causal attention inside each chunk of
   * `maxBatch` tokens), starting at position `start`. Returns the logits of the last token (a view).
   * With `onRows`, every row's logits are computed and handed over, chunk by chunk (`first` is the
   * chunk's first token index in `tokens`).
   * @example
   * ```ts
   * const logits = engine.prefill(cache, seq, promptIds);
   * ```
   */
  prefill(
    cache: AttentionCache, seq: number, tokens: readonly number[], start = 0,
    onRows?: (logits: Float32Array, first: number, rows: number) => void,
  ): Float32Array {
    const m = this.model;
    const c = m.config;
    if (tokens.length === 0) throw new RangeError('prefill needs at least one token');
    if (start + tokens.length > c.maxPositions) throw new RangeError(`the prompt runs past the context (${c.maxPositions})`);
    const qd = c.heads * c.headDim;
    const kvd = c.kvHeads * c.headDim;
    let rows = 0;
    for (let at = 0; at < tokens.length; at += rows) {
      rows = Math.min(m.maxRows, tokens.length - at);
      m.embedTokens(tokens.slice(at, at + rows), rows);
      for (let layer = 0; layer < c.layers; layer++) {
        this.projectQkv(layer, rows, (r) => start + at + r);
        cache.prefill(seq, layer, this.q.subarray(0, rows * qd), this.k.subarray(0, rows * kvd), this.v.subarray(0, rows * kvd), this.o.subarray(0, rows * qd));
        this.finishLayer(layer, rows);
      }
      if (onRows !== undefined) {
        m.head(rows);
        onRows(m.heap.subarray(m.logits, m.logits + rows * c.vocabSize), at, rows);
      }
    }
    if (onRows !== undefined) return m.heap.subarray(m.logits + (rows - 1) * c.vocabSize, m.logits + rows * c.vocabSize);
    // Only the last row's logits are needed: move its hidden state to row 0.
    m.heap.copyWithin(m.x, m.x + (rows - 1) * c.hidden, m.x + rows * c.hidden);
    m.head(1);
    return m.heap.subarray(m.logits, m.logits + c.vocabSize);
  }

  /**
   * Greedy generation for up to `maxBatch` prompts at once, each in its own sequence of `cache`
   * (opened here and closed at the end). Returns each prompt followed by its new tokens.
   * @example
   * ```ts
   * const [ids] = engine.generate(cache, [tokenizer.encode('Once upon a time')], { maxNewTokens: 100 });
   * ```
   */
  generate(cache: AttentionCache, prompts: readonly (readonly number[])[], options: GenerateOptions = {}): number[][] {
    const c = this.model.config;
    if (prompts.length < 1 || prompts.length > this.maxBatch) throw new RangeError(`generate takes 1..${this.maxBatch} prompts`);
    if (prompts.some((p) => p.length === 0)) throw new RangeError('every prompt needs at least one token (e.g. BOS)');
    const maxNew = options.maxNewTokens ?? 128;
    const stop = new Set(options.stop ?? c.eos);
    const states = prompts.map((p) => ({ seq: -1, ids: [...p], fed: 0, added: 0, done: maxNew <= 0 }));
    try {
      for (const s of states) s.seq = cache.open();
      if (options.prefill) {
        for (const s of states) {
          if (s.done || s.ids.length < 2) continue;
          this.prefill(cache, s.seq, s.ids.slice(0, -1));
          s.fed = s.ids.length - 1;
        }
      }
      const seqs: number[] = [];
      const tokens: number[] = [];
      const positions: number[] = [];
      const active: typeof states = [];
      for (;;) {
        active.length = seqs.length = tokens.length = positions.length = 0;
        for (const s of states) {
          if (s.done) continue;
          active.push(s);
          seqs.push(s.seq);
          tokens.push(s.ids[s.fed]!);
          positions.push(s.fed);
        }
        if (active.length === 0) break;
        const logits = this.step(cache, seqs, tokens, positions);
        for (const [r, s] of active.entries()) {
          s.fed++;
          if (s.fed < s.ids.length) continue; // still reading the prompt
          const next = argmax(logits, r * c.vocabSize, c.vocabSize);
          s.ids.push(next);
          s.added++;
          options.onToken?.(states.indexOf(s), next);
          if (stop.has(next) || s.added >= maxNew || s.fed >= c.maxPositions) s.done = true;
        }
        options.onStep?.();
      }
      return states.map((s) => s.ids);
    } finally {
      for (const s of states) if (s.seq >= 0) cache.close(s.seq);
    }
  }

  /**
   * Teacher-forced scoring: for each window, the negative log-likelihood of every token after the
   * first given the tokens before it, decoding token by token through the cache (so eviction happens
   * exactly as it would during generation), after an optional prompt prefix fed through prefill
   * (`options.prefix`). Windows are decoded `batch` at a time in one pass over the weights per step. Returns one array of `window.length - 1` NLLs (nats) per window.
   * @example
   * ```ts
   * const [nlls] = engine.score(cache, [[0, ...ids]]);
   * const ppl = Math.exp(nlls.reduce((a, b) => a + b) / nlls.length);
   * ```
   */
  score(cache: AttentionCache, windows: readonly (readonly number[])[], options: ScoreOptions = {}): Float64Array[] {
    const c = this.model.config;
    const batch = Math.min(options.batch ?? this.maxBatch, this.maxBatch);
    const results = windows.map((w) => new Float64Array(Math.max(0, w.length - 1)));
    let scored = 0;
    for (let first = 0; first < windows.length; first += batch) {
      const group = windows.slice(first, first + batch).map((w, i) => ({ w, out: results[first + i]!, seq: -1 }));
      for (const g of group) {
        if (g.w.length - 1 > c.maxPositions) throw new RangeError(`a window of ${g.w.length} tokens feeds more than the context (${c.maxPositions})`);
        g.seq = cache.open();
      }
      try {
        const prefix = options.prefix ?? 0;
        for (const g of group) {
          const p = Math.min(prefix, g.w.length - 1);
          if (p <= 0) continue;
          this.prefill(cache, g.seq, g.w.slice(0, p), 0, (logits, first, rows) => {
            for (let r = 0; r < rows; r++) g.out[first + r] = nll(logits, r * c.vocabSize, c.vocabSize, g.w[first + r + 1]!);
          });
          scored += p;
          options.onProgress?.(scored);
        }
        const longest = Math.max(...group.map((g) => g.w.length));
        for (let t = Math.max(0, prefix); t + 1 < longest; t++) {
          const live = group.filter((g) => t + 1 < g.w.length);
          const logits = this.step(cache, live.map((g) => g.seq), live.map((g) => g.w[t]!), live.map(() => t));
          for (const [r, g] of live.entries()) g.out[t] = nll(logits, r * c.vocabSize, c.vocabSize, g.w[t + 1]!);
          scored += live.length;
          options.onProgress?.(scored);
        }
      } finally {
        for (const g of group) if (g.seq >= 0) cache.close(g.seq);
      }
    }
    return results;
  }
}
