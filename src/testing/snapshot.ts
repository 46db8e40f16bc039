/**
 * Bit-exact snapshots of what a cache keeps, to compare two caches or one cache at two moments.
 * @module
 */
import type { KVCache } from '../cache/kv-cache.js';
import type { CacheStats } from '../cache/stats.js';
import { arrayBits } from './data.js';

/**
 * What one KV head of one (sequence, layer) keeps, as bits.
 * @example
 * ```ts
 * const head: HeadSnapshot = snapshotCache(cache).sequences[0]![0]![0]!;
 * ```
 */
export interface HeadSnapshot {
  readonly positions: readonly number[];
  /** Score bits (f32 patterns), so that NaN and -0 compare exactly. */
  readonly scores: readonly number[];
  readonly keys: readonly number[];
  readonly values: readonly number[];
}

/**
 * A cache's stats and, per open sequence, layer and KV head, everything it keeps.
 * @example
 * ```ts
 * const before = snapshotCache(cache);
 * ```
 */
export interface CacheSnapshot {
  readonly stats: CacheStats;
  /** Open sequence ids and their seen counts per layer. */
  readonly open: readonly { readonly seq: number; readonly seen: readonly number[] }[];
  /** `[seq][layer][kvHead]`, `undefined` for closed slots. */
  readonly sequences: readonly (readonly (readonly HeadSnapshot[])[] | undefined)[];
}

/**
 * Captures everything a cache keeps (bit-exact) and its stats.
 * @example
 * ```ts
 * import { snapshotCache, diffSnapshots } from 'scissorhands/testing';
 * const a = snapshotCache(cache);
 * // ... operations on another sequence ...
 * expect(diffSnapshots(a, snapshotCache(cache), { sequences: [0] })).toBeUndefined();
 * ```
 */
export function snapshotCache(cache: KVCache): CacheSnapshot {
  const { layers, kvHeads } = cache.geometry;
  const open: { seq: number; seen: number[] }[] = [];
  const sequences: (HeadSnapshot[][] | undefined)[] = [];
  for (let seq = 0; seq < cache.maxSequences; seq++) {
    if (!cache.isOpen(seq)) {
      sequences.push(undefined);
      continue;
    }
    const seen: number[] = [];
    const perLayer: HeadSnapshot[][] = [];
    for (let layer = 0; layer < layers; layer++) {
      seen.push(cache.seen(seq, layer));
      const heads: HeadSnapshot[] = [];
      for (let h = 0; h < kvHeads; h++) {
        const view = cache.view(seq, layer, h);
        const { positions, scores } = cache.inspect(seq, layer, h);
        heads.push({
          positions: Array.from(positions),
          scores: Array.from(new Uint32Array(scores.buffer, scores.byteOffset, scores.length)),
          keys: Array.from(arrayBits(view.keys)),
          values: Array.from(arrayBits(view.values)),
        });
      }
      perLayer.push(heads);
    }
    open.push({ seq, seen });
    sequences.push(perLayer);
  }
  return { stats: cache.stats(), open, sequences };
}

function firstDifference(a: unknown, b: unknown, path: string): string | undefined {
  if (Object.is(a, b)) return undefined;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) {
    return `${path}: ${JSON.stringify(a)} != ${JSON.stringify(b)}`;
  }
  if (Array.isArray(a) !== Array.isArray(b)) return `${path}: array vs object`;
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  for (const key of keys) {
    const d = firstDifference((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key], `${path}.${key}`);
    if (d !== undefined) return d;
  }
  return undefined;
}

/**
 * The first difference between two snapshots, or `undefined` when they are identical. With
 * `sequences`, only those sequences' kept data (and not the stats) are compared.
 * @example
 * ```ts
 * const d = diffSnapshots(snapshotCache(a), snapshotCache(b));
 * if (d !== undefined) throw new Error(d);
 * ```
 */
export function diffSnapshots(a: CacheSnapshot, b: CacheSnapshot, only: { readonly sequences?: readonly number[] } = {}): string | undefined {
  if (only.sequences === undefined) return firstDifference(a, b, 'snapshot');
  for (const seq of only.sequences) {
    const d = firstDifference(a.sequences[seq], b.sequences[seq], `sequences[${seq}]`);
    if (d !== undefined) return d;
  }
  return undefined;
}
