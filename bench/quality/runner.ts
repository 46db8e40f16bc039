/**
 * Teacher-forced scoring of many configurations: real eviction through the SDK's `KVCache` (the model
 * attends only to what each cache kept), several configurations decoded in one batch.
 * @module
 */
import { KVCache, type BackendName, type DType, type StorageOptions } from '../../src/index.js';
import type { LlamaEngine } from '../../examples/llama/engine.js';
import type { Configuration } from './methods.js';
import { Multiplexer } from './multiplex.js';

/** Per-window results of one configuration. */
export interface ConfigurationResult {
  readonly configuration: Configuration;
  /** Mean NLL (nats) of each window's predictions, summed in f64. */
  readonly perWindowMeanNll: number[];
  /** Wall time of the group this configuration ran in, divided evenly among its members. */
  readonly seconds: number;
  /** Backend that ran the cache. */
  readonly backend: string;
  /** Token slots the cache reserved per (window, layer, KV head): the most it can ever hold. */
  readonly capacity: number;
  /** Tokens evicted, summed over windows, layers and KV heads (0 for the full cache). */
  readonly evictions: number;
  /** Memory at the end of a window (the last batch of windows, all layers): bytes of keys and values held. */
  readonly bytesKV: number;
  /** A dense f16 cache of the whole window over those bytes: fewer tokens and fewer bits together. */
  readonly compressionVsF16: number;
}

/** How the runs are batched. */
export interface RunnerOptions {
  /** Windows decoded together per configuration. */
  readonly batch: number;
  /** Configurations decoded together (rows per step: `parallel * batch`). */
  readonly parallel: number;
  readonly backend: BackendName;
  /** Storage of every cache (default dense): `{ format: 'int4' }` scores 4-bit storage (docs/packing.md). */
  readonly storage?: StorageOptions;
  /** Element type of the caches (default f32; with packed storage, the residual window's type). */
  readonly dtype?: DType;
  /** Tokens at the start of each window fed as a prompt through `cache.prefill` (`ScoreOptions.prefix`); default 0. */
  readonly prefix?: number;
  /** Tokens scored so far, after each step. */
  readonly onProgress?: (tokens: number) => void;
  /** Each configuration's result as soon as its group finishes. */
  readonly onResult?: (result: ConfigurationResult) => void;
}

/**
 * Scores every window under every configuration, `parallel` configurations and `batch` windows per
 * engine step (the model must hold `parallel * batch` rows).
 * @example
 * ```ts
 * const results = runConfigurations(engine, configs, corpus.windows, { batch: 16, parallel: 4, backend: 'auto' });
 * ```
 */
export function runConfigurations(
  engine: LlamaEngine, configurations: readonly Configuration[], windows: readonly (readonly number[])[], options: RunnerOptions,
): ConfigurationResult[] {
  const results: ConfigurationResult[] = [];
  const batch = Math.min(options.batch, windows.length);
  // Packed storage: groups of 32 channels, or the largest of 16 and 8 that divides the head size.
  const storage = options.storage === undefined || options.storage.format === 'dense'
    ? options.storage
    : { groupSize: [32, 16, 8].find((g) => engine.geometry.headDim % g === 0) ?? 32, ...options.storage };
  let scoredBefore = 0;
  for (let first = 0; first < configurations.length; first += options.parallel) {
    const group = configurations.slice(first, first + options.parallel);
    const start = performance.now();
    const caches = group.map((c) => {
      const { tracker, policy, prompt } = c.make();
      return KVCache.create({
        geometry: engine.geometry, maxSequences: batch, tracker, policy, backend: options.backend, dtype: options.dtype ?? 'f32',
        ...(storage === undefined ? {} : { storage }),
        ...(prompt === undefined ? {} : { prompt }),
      });
    });
    try {
      const mux = new Multiplexer(caches);
      const sums = group.map(() => new Array<number>(windows.length).fill(0));
      for (let w0 = 0; w0 < windows.length; w0 += batch) {
        const chunk = windows.slice(w0, w0 + batch);
        const rows = group.flatMap(() => chunk);
        const routes = group.flatMap((_, c) => chunk.map(() => c));
        mux.route(routes);
        const nlls = engine.score(mux, rows, {
          batch: rows.length,
          prefix: options.prefix ?? 0,
          onProgress: (n) => options.onProgress?.(scoredBefore + n),
        });
        scoredBefore += rows.reduce((s, r) => s + r.length - 1, 0);
        nlls.forEach((a, r) => {
          const c = routes[r]!;
          let sum = 0;
          for (let i = 0; i < a.length; i++) sum += a[i]!;
          sums[c]![w0 + (r % chunk.length)] = sum / a.length;
        });
      }
      const seconds = (performance.now() - start) / 1000 / group.length;
      group.forEach((configuration, c) => {
        const stats = caches[c]!.stats();
        const capacity = Math.max(...stats.layers.map((l) => l.capacity));
        const end = mux.statsAtEnd[c]!;
        const result = {
          configuration, perWindowMeanNll: sums[c]!, seconds, backend: stats.backend, capacity, evictions: stats.evictions,
          bytesKV: end.bytesKV, compressionVsF16: end.compressionVsF16,
        };
        results.push(result);
        options.onResult?.(result);
      });
    } finally {
      for (const cache of caches) cache.dispose();
    }
  }
  return results;
}
