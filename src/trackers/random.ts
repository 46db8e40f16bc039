/**
 * The random baseline tracker.
 * @module
 */
import { intOption, readOptions } from '../core/options.js';
import { ignoreObservation, type BuiltinTracker } from './builtin.js';
import { TrackerKind, type AppendedToken } from './tracker.js';

/**
 * Options of {@link random}.
 * @example
 * ```ts
 * const options: RandomOptions = { seed: 42 };
 * ```
 */
export interface RandomOptions {
  /** Seed, an unsigned 32-bit integer; default 0. */
  readonly seed?: number;
}

const UINT32_MAX = 0xffffffff;

/** A 32-bit integer finaliser (lowbias32): every input bit flips about half the output bits. */
function mix(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/**
 * The score the {@link random} tracker gives a token: a uniform value in `[0, 1)` with 24 bits (so it
 * is exact in f32), a pure function of its arguments so that every backend draws the same numbers.
 * `h = mix(mix(mix(seed ^ layer) ^ kvHead) ^ position)`, score `(h >>> 8) / 2^24`.
 * @example
 * ```ts
 * randomScore(0, 3, 1, 1000); // the same number on every run and backend
 * ```
 */
export function randomScore(seed: number, layer: number, kvHead: number, position: number): number {
  const h = mix(mix(mix(seed ^ layer) ^ kvHead) ^ position);
  return (h >>> 8) / 2 ** 24;
}

/**
 * A seeded uniform score per (layer, KV head, position): the baseline every method should beat. Heads
 * draw independently; the same seed gives the same choices on every backend.
 *
 * @example
 * ```ts
 * const tracker = random({ seed: 7 });
 * const policy = fixedBudget({ tokens: 512, recent: 1 });
 * ```
 */
export function random(options: RandomOptions = {}): BuiltinTracker {
  const o = readOptions(options, ['seed']);
  const seed = intOption(o, 'seed', 0, 0, UINT32_MAX);
  return Object.freeze({
    name: 'random',
    input: 'none',
    scope: 'head',
    auxWords: 0,
    gqa: 'mean',
    kernel: Object.freeze({ kind: TrackerKind.Random, window: 0, seed }),
    onAppend(t: AppendedToken): void {
      t.scores[t.index] = randomScore(seed, t.layer, t.kvHead, t.position);
    },
    onObserve: ignoreObservation,
  });
}
