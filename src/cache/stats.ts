/**
 * What a cache reports about its memory and what it kept.
 * @module
 */

/**
 * Per-layer figures, summed over the open sequences.
 * @example
 * ```ts
 * for (const l of cache.stats().layers) console.log(l.layer, l.tokensKept);
 * ```
 */
export interface LayerStats {
  readonly layer: number;
  /**
   * Token slots reserved per (sequence, KV head); with per-head budgets (`adaKV`), the most one head
   * may own (the heads of a sequence share `(budget + chunk) x kvHeads` slots: see `bytesPerSequence`).
   */
  readonly capacity: number;
  /** Tokens kept per KV head, summed over open sequences. */
  readonly tokensKept: readonly number[];
  /** Tokens seen, summed over open sequences. */
  readonly tokensSeen: number;
  /** Token-head entries dropped since creation. */
  readonly evictions: number;
}

/**
 * A snapshot of a cache's memory use.
 * @example
 * ```ts
 * const s = cache.stats();
 * console.log(`${(s.bytesUsed / 2 ** 20).toFixed(1)} MiB used, ${s.compression.toFixed(1)}x fewer tokens`);
 * ```
 */
export interface CacheStats {
  readonly backend: string;
  /** Storage format of keys and values: `'dense'` or the packed format. */
  readonly storage: 'dense' | 'int2' | 'int4' | 'int8';
  /** Bytes reserved at creation (keys, values, positions, scores, tracker state, lengths); constant. */
  readonly bytesReserved: number;
  /**
   * Bytes the layer stores reserve per sequence slot (all layers; keys and values in their storage
   * format, positions, scores, tracker words, lengths, clock): what a `byteBudget` bounds.
   */
  readonly bytesPerSequence: number;
  /**
   * Bytes that hold kept tokens: keys and values exactly as stored ({@link CacheStats.bytesKV}), plus
   * the per-token metadata (position, score and tracker words).
   */
  readonly bytesUsed: number;
  /**
   * Bytes of keys and values held now, exactly: for packed storage the codes, the value groups' scales
   * and zero points, the key runs' scales and zero points (with their length and generation words) and
   * the residual window's rows.
   */
  readonly bytesKV: number;
  /** Bytes a dense f16 cache of every token seen would hold in keys and values (`tokensSeen * 4 * headDim`). */
  readonly bytesF16: number;
  /**
   * `bytesF16 / bytesKV` (1 when nothing is kept): the effective compression against a dense f16 cache of
   * the same length, fewer tokens and fewer bits together.
   */
  readonly compressionVsF16: number;
  /** Largest `bytesUsed` since creation (closing sequences does not lower it). */
  readonly peakBytesUsed: number;
  /** Largest `tokensKept` since creation. */
  readonly peakTokensKept: number;
  /** Bytes a full dense cache of the same dtype would need for every token seen (keys and values only). */
  readonly bytesFull: number;
  /**
   * Bytes of keys and values per token and KV head in the element type (a dense token; with packed
   * storage, residual-window tokens cost this and packed ones less: see {@link CacheStats.bytesKV}).
   */
  readonly bytesPerToken: number;
  /** Token-head entries kept, over layers, heads and open sequences. */
  readonly tokensKept: number;
  /** Token-head entries seen, over layers, heads and open sequences. */
  readonly tokensSeen: number;
  /** Token-head entries dropped since creation. */
  readonly evictions: number;
  /** `tokensSeen / tokensKept` (1 when nothing is kept). */
  readonly compression: number;
  readonly openSequences: number;
  readonly layers: readonly LayerStats[];
}
