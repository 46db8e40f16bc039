/**
 * Operations on a cache as data, so that a model, an oracle and the cache under test can all replay them.
 * @module
 */
import type { KVCache } from '../cache/kv-cache.js';
import type { HostArray } from '../core/dtype.js';

/**
 * One call on a {@link KVCache}, as data.
 * @example
 * ```ts
 * const op: CacheOperation = { op: 'attend', seq: 0, layer: 1, q, k, v };
 * ```
 */
export type CacheOperation =
  | { readonly op: 'open' }
  | { readonly op: 'close'; readonly seq: number }
  | { readonly op: 'reset'; readonly seq: number }
  | {
    readonly op: 'attend' | 'prefill'; readonly seq: number; readonly layer: number;
    readonly q: HostArray; readonly k: HostArray; readonly v: HostArray; readonly out?: HostArray;
  }
  | { readonly op: 'append'; readonly seq: number; readonly layer: number; readonly k: HostArray; readonly v: HostArray }
  | { readonly op: 'observe'; readonly seq: number; readonly layer: number; readonly probs: Float32Array; readonly stride?: number };

/**
 * Runs an operation on a cache; returns what the call returns (a sequence id, an output, or nothing).
 * @example
 * ```ts
 * const seq = applyOperation(cache, { op: 'open' }) as number;
 * ```
 */
export function applyOperation(cache: KVCache, op: CacheOperation): number | HostArray | undefined {
  switch (op.op) {
    case 'open': return cache.open();
    case 'close': cache.close(op.seq); return undefined;
    case 'reset': cache.reset(op.seq); return undefined;
    case 'attend': return op.out === undefined ? cache.attend(op.seq, op.layer, op.q, op.k, op.v) : cache.attend(op.seq, op.layer, op.q, op.k, op.v, op.out);
    case 'prefill': return op.out === undefined ? cache.prefill(op.seq, op.layer, op.q, op.k, op.v) : cache.prefill(op.seq, op.layer, op.q, op.k, op.v, op.out);
    case 'append': cache.append(op.seq, op.layer, op.k, op.v); return undefined;
    case 'observe':
      if (op.stride === undefined) cache.observe(op.seq, op.layer, op.probs);
      else cache.observe(op.seq, op.layer, op.probs, op.stride);
      return undefined;
  }
}

/**
 * A copy of an operation with fresh copies of its arrays (so that two caches never share an input).
 * @example
 * ```ts
 * applyOperation(oracle, cloneOperation(op));
 * ```
 */
export function cloneOperation(op: CacheOperation): CacheOperation {
  const copy = <T extends HostArray | Float32Array>(a: T): T => a.slice() as T;
  switch (op.op) {
    case 'attend':
    case 'prefill':
      return { ...op, q: copy(op.q), k: copy(op.k), v: copy(op.v), ...(op.out === undefined ? {} : { out: copy(op.out) }) };
    case 'append': return { ...op, k: copy(op.k), v: copy(op.v) };
    case 'observe': return { ...op, probs: copy(op.probs) };
    default: return op;
  }
}

/**
 * A short description of an operation (array sizes rather than contents).
 * @example
 * ```ts
 * describeOperation({ op: 'close', seq: 1 }); // 'close(seq 1)'
 * ```
 */
export function describeOperation(op: CacheOperation): string {
  const arr = (a: HostArray): string => `${a instanceof Float32Array ? 'f32' : 'u16'}[${a.length}]`;
  switch (op.op) {
    case 'open': return 'open()';
    case 'close':
    case 'reset': return `${op.op}(seq ${op.seq})`;
    case 'attend':
    case 'prefill': return `${op.op}(seq ${op.seq}, layer ${op.layer}, q ${arr(op.q)}, k ${arr(op.k)}, v ${arr(op.v)}${op.out === undefined ? '' : ', out'})`;
    case 'append': return `append(seq ${op.seq}, layer ${op.layer}, k ${arr(op.k)}, v ${arr(op.v)})`;
    case 'observe': return `observe(seq ${op.seq}, layer ${op.layer}, probs f32[${op.probs.length}]${op.stride === undefined ? '' : `, stride ${op.stride}`})`;
  }
}
