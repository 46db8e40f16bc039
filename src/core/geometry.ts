/**
 * The attention geometry of a model, as the cache sees it.
 * @module
 */
import { ArgumentError } from './errors.js';

/**
 * Shape of a model's attention. Grouped-query attention is the normal case: query head `h` reads
 * KV head `floor(h / (queryHeads / kvHeads))`; plain multi-head attention has `kvHeads === queryHeads`.
 *
 * @example
 * ```ts
 * const llama8b: Geometry = { layers: 32, queryHeads: 32, kvHeads: 8, headDim: 128 };
 * ```
 */
export interface Geometry {
  /** Transformer layers that each hold a cache. */
  readonly layers: number;
  /** Query heads per layer. */
  readonly queryHeads: number;
  /** Key/value heads per layer; divides `queryHeads`. */
  readonly kvHeads: number;
  /** Elements per head vector. */
  readonly headDim: number;
}

/** Largest head size the kernels accept. */
export const MAX_HEAD_DIM = 512;

/**
 * Checks an integer argument.
 * @example
 * ```ts
 * const n = checkInt(options.maxSequences, 'maxSequences', 1, 1 << 16);
 * ```
 */
export function checkInt(value: unknown, argument: string, min: number, max = 2 ** 31 - 1): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ArgumentError(`expected an integer in [${min}, ${max}], got ${String(value)}`, argument);
  }
  return value;
}

/**
 * Validates a geometry and returns a frozen copy.
 * @example
 * ```ts
 * const g = checkGeometry({ layers: 2, queryHeads: 8, kvHeads: 2, headDim: 64 });
 * ```
 */
export function checkGeometry(value: unknown, argument = 'geometry'): Geometry {
  if (typeof value !== 'object' || value === null) throw new ArgumentError('expected an object', argument);
  const g = value as Record<string, unknown>;
  const layers = checkInt(g['layers'], `${argument}.layers`, 1, 4096);
  const queryHeads = checkInt(g['queryHeads'], `${argument}.queryHeads`, 1, 4096);
  const kvHeads = checkInt(g['kvHeads'], `${argument}.kvHeads`, 1, 4096);
  const headDim = checkInt(g['headDim'], `${argument}.headDim`, 1, MAX_HEAD_DIM);
  if (queryHeads % kvHeads !== 0) {
    throw new ArgumentError(`kvHeads (${kvHeads}) must divide queryHeads (${queryHeads})`, `${argument}.kvHeads`);
  }
  return Object.freeze({ layers, queryHeads, kvHeads, headDim });
}
