/**
 * One engine pass for several caches: the engine decodes rows of many (configuration, window) pairs in
 * one batch (one pass over the weights per step), and each row's attention goes to its own
 * configuration's `KVCache`.
 * @module
 */
import type { CacheStats, KVCache } from '../../src/index.js';
import type { AttentionCache } from '../../examples/llama/engine.js';

/**
 * Routes the engine's sequences to several caches. Before each `engine.score` call, {@link route}
 * lists, for every window passed (in order), which cache it belongs to; the engine opens sequences in
 * window order, so the n-th `open()` goes to the n-th listed cache.
 * @example
 * ```ts
 * const mux = new Multiplexer([cacheA, cacheB]);
 * mux.route([0, 0, 1, 1]);
 * engine.score(mux, [w0, w1, w0, w1]);
 * ```
 */
export class Multiplexer implements AttentionCache {
  #queue: number[] = [];
  #opened = 0;
  #closing = new Set<KVCache>();
  readonly #map = new Map<number, { cache: KVCache; seq: number }>();
  #next = 0;
  readonly #full: (CacheStats | undefined)[];

  constructor(readonly caches: readonly KVCache[]) {
    this.#full = caches.map(() => undefined);
  }

  /**
   * Each cache's stats just before its first sequence of the last `score` call closed: every window of
   * the call then holds what it kept at its end, so `compressionVsF16` is the memory of a whole window.
   */
  get statsAtEnd(): readonly (CacheStats | undefined)[] {
    return this.#full;
  }

  /** The caches, one per window of the next `score` call, in window order. */
  route(cacheIndexes: readonly number[]): void {
    this.#queue = [...cacheIndexes];
    this.#opened = 0;
    this.#closing = new Set();
  }

  open(): number {
    const index = this.#queue[this.#opened++];
    if (index === undefined) throw new Error('Multiplexer: more sequences opened than routed');
    const cache = this.caches[index]!;
    const id = this.#next++;
    this.#map.set(id, { cache, seq: cache.open() });
    return id;
  }

  close(id: number): void {
    const entry = this.#entry(id);
    if (!this.#closing.has(entry.cache)) {
      this.#closing.add(entry.cache);
      this.#full[this.caches.indexOf(entry.cache)] = entry.cache.stats();
    }
    entry.cache.close(entry.seq);
    this.#map.delete(id);
  }

  attend(id: number, layer: number, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array): unknown {
    const { cache, seq } = this.#entry(id);
    return cache.attend(seq, layer, q, k, v, out);
  }

  prefill(id: number, layer: number, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array): unknown {
    const { cache, seq } = this.#entry(id);
    return cache.prefill(seq, layer, q, k, v, out);
  }

  #entry(id: number): { cache: KVCache; seq: number } {
    const entry = this.#map.get(id);
    if (!entry) throw new Error(`Multiplexer: sequence ${id} is not open`);
    return entry;
  }
}
