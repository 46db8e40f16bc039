/**
 * Bad arguments: the native backend throws the same typed errors as the reference, and nothing passed
 * to the raw addon (wrong types, short or detached arrays, corrupt store state, hostile getters) can
 * crash the process or touch memory out of bounds.
 */
import { describe, expect, it } from 'vitest';
import type { Backend, LayerStore } from '../../src/backend/backend.js';
import {
  ArgumentError, BudgetError, DTypeError, DisposedError, KvError, KvErrorCode, ShapeError,
} from '../../src/core/errors.js';
import type { NativeStore, NativeTracker } from '../../src/native/binding.js';
import { loadNative } from '../../src/native/loader.js';
import { TrackerKind } from '../../src/trackers/tracker.js';
import { h2o, scissorhands } from '../../src/trackers/index.js';
import { caught, cpu, expectKvError, reference } from './helpers.js';
import { createCpuBackend } from '../../src/backend/cpu.js';

const spec = { layer: 0, dtype: 'f16' as const, maxSequences: 2, kvHeads: 2, headDim: 4, capacity: 8, auxWords: 0 };
const attention = { queryHeads: 4, scale: 0.5 };

/** A store of each backend holding 3 tokens in sequence 0. */
function storeOf(backend: Backend): LayerStore {
  const store = backend.allocate(spec);
  backend.append(store, 0, new Float32Array(3 * 2 * 4), new Float32Array(3 * 2 * 4), 3, 0, h2o());
  return store;
}

/** Calls that must fail, each with the error both backends give. */
const BAD_CALLS: readonly [string, (b: Backend, s: LayerStore) => void, string, string][] = [
  ['seq past the end', (b, s) => b.decode(s, 2, new Float32Array(16), new Float32Array(16), attention, h2o()), KvErrorCode.Argument, 'seq'],
  ['negative seq', (b, s) => b.evict(s, -1, 0, 0, 0, 'head'), KvErrorCode.Argument, 'seq'],
  ['NaN seq', (b, s) => b.observe(s, NaN, new Float32Array(32), 8, 4, h2o()), KvErrorCode.Argument, 'seq'],
  ['fractional seq', (b, s) => b.append(s, 0.5, new Float32Array(8), new Float32Array(8), 1, 0, h2o()), KvErrorCode.Argument, 'seq'],
  ['seq as a string', (b, s) => b.evict(s, '0' as unknown as number, 0, 0, 0, 'head'), KvErrorCode.Argument, 'seq'],
  ['k of the wrong type', (b, s) => b.append(s, 0, new Float64Array(8) as unknown as Float32Array, new Float32Array(8), 1, 0, h2o()), KvErrorCode.DType, 'k'],
  ['k not an array', (b, s) => b.append(s, 0, {} as Float32Array, new Float32Array(8), 1, 0, h2o()), KvErrorCode.DType, 'k'],
  ['short v', (b, s) => b.append(s, 0, new Float32Array(8), new Float32Array(7), 1, 0, h2o()), KvErrorCode.Shape, 'v'],
  ['count past the capacity', (b, s) => b.append(s, 0, new Float32Array(48), new Float32Array(48), 6, 0, h2o()), KvErrorCode.Budget, 'count'],
  ['negative count', (b, s) => b.append(s, 0, new Float32Array(0), new Float32Array(0), -1, 0, h2o()), KvErrorCode.Argument, 'count'],
  ['position overflow', (b, s) => b.append(s, 0, new Float32Array(16), new Float32Array(16), 2, 2 ** 31 - 1, h2o()), KvErrorCode.Argument, 'firstPosition'],
  ['tracker with other aux words', (b, s) => b.append(s, 0, new Float32Array(8), new Float32Array(8), 1, 0, scissorhands()), KvErrorCode.Argument, 'tracker'],
  ['short q', (b, s) => b.decode(s, 0, new Float32Array(15), new Float32Array(16), attention, h2o()), KvErrorCode.Shape, 'q'],
  ['out unlike q', (b, s) => b.decode(s, 0, new Uint16Array(16), new Float32Array(16), attention, h2o()), KvErrorCode.DType, 'out'],
  ['f16 bits for an f32 store', (b) => {
    const s = b.allocate({ ...spec, dtype: 'f32' });
    b.append(s, 0, new Uint16Array(8), new Uint16Array(8), 1, 0, h2o());
  }, KvErrorCode.DType, 'k'],
  ['queryHeads not a multiple of kvHeads', (b, s) => b.decode(s, 0, new Float32Array(12), new Float32Array(12), { queryHeads: 3, scale: 1 }, h2o()), KvErrorCode.Argument, 'attention.queryHeads'],
  ['NaN scale', (b, s) => b.decode(s, 0, new Float32Array(16), new Float32Array(16), { queryHeads: 4, scale: NaN }, h2o()), KvErrorCode.Argument, 'attention.scale'],
  ['infinite scale', (b, s) => b.prefill(s, 0, new Float32Array(16), 1, new Float32Array(16), { queryHeads: 4, scale: Infinity }, h2o()), KvErrorCode.Argument, 'attention.scale'],
  ['decode of an empty sequence', (b, s) => b.decode(s, 1, new Float32Array(16), new Float32Array(16), attention, h2o()), KvErrorCode.Argument, 'rows'],
  ['more prefill rows than tokens', (b, s) => b.prefill(s, 0, new Float32Array(64), 4, new Float32Array(64), attention, h2o()), KvErrorCode.Argument, 'rows'],
  ['zero prefill rows', (b, s) => b.prefill(s, 0, new Float32Array(0), 0, new Float32Array(0), attention, h2o()), KvErrorCode.Argument, 'rows'],
  ['probs of the wrong type', (b, s) => b.observe(s, 0, new Float64Array(32) as unknown as Float32Array, 8, 4, h2o()), KvErrorCode.DType, 'probs'],
  ['stride shorter than the tokens', (b, s) => b.observe(s, 0, new Float32Array(8), 2, 4, h2o()), KvErrorCode.Shape, 'stride'],
  ['short probs', (b, s) => b.observe(s, 0, new Float32Array(31), 8, 4, h2o()), KvErrorCode.Shape, 'probs'],
  ['evicting more than the candidates', (b, s) => b.evict(s, 0, 2, 1, 1, 'head'), KvErrorCode.Budget, 'count'],
  ['unknown scope', (b, s) => b.evict(s, 0, 1, 0, 0, 'all' as 'head'), KvErrorCode.Argument, 'scope'],
  ['layer scope over unequal heads', (b, s) => {
    s.lengths[1] = 2;
    b.evict(s, 0, 1, 0, 0, 'layer');
  }, KvErrorCode.Argument, 'scope'],
];

describe('the cpu backend throws what the reference throws', () => {
  it.each(BAD_CALLS)('%s', (_name, call, code, argument) => {
    const expected = caught(() => call(reference, storeOf(reference)));
    expect(expected, String(expected)).toBeInstanceOf(KvError);
    expect([(expected as KvError).code, (expected as KvError).argument]).toEqual([code, argument]);
    const native = storeOf(cpu);
    const before = JSON.stringify(Object.values(native).map((x) => (ArrayBuffer.isView(x) ? Array.from(x as Uint8Array) : x)));
    const error = caught(() => call(cpu, native));
    expect(error, String(error)).toBeInstanceOf(expected!.constructor as typeof KvError);
    expect([(error as KvError).code, (error as KvError).argument], String(error)).toEqual([code, argument]);
    // A rejected call changes nothing (the layer-scope case edits lengths itself before the call).
    if (argument !== 'scope') {
      expect(JSON.stringify(Object.values(native).map((x) => (ArrayBuffer.isView(x) ? Array.from(x as Uint8Array) : x)))).toBe(before);
    }
  });

  it('use after dispose throws DisposedError, and dispose is idempotent', () => {
    const backend = createCpuBackend();
    const store = storeOf(backend);
    backend.dispose();
    backend.dispose();
    expectKvError(() => backend.evict(store, 0, 0, 0, 0, 'head'), KvErrorCode.Disposed, undefined, DisposedError);
    expectKvError(() => backend.allocate(spec), KvErrorCode.Disposed, undefined, DisposedError);
  });
});

describe('the raw addon rejects anything malformed with a typed error', () => {
  const binding = loadNative();
  const tracker: NativeTracker = { kind: TrackerKind.H2O, window: 0, seed: 0, gqa: 'mean', observes: true };

  /** A fresh valid store (as plain properties, so tests can break any of them). */
  function fresh(): Record<string, unknown> & NativeStore {
    return { ...storeOf(cpu) } as Record<string, unknown> & NativeStore;
  }

  function decode(store: unknown, t: unknown = tracker): void {
    binding.decode(store as NativeStore, 0, new Float32Array(16), new Float32Array(16), 4, 0.5, t as NativeTracker, null);
  }

  it('a store that is not one', () => {
    expectKvError(() => decode(null), KvErrorCode.Argument, 'store', ArgumentError);
    expectKvError(() => decode(42), KvErrorCode.Argument, 'store');
    expectKvError(() => (binding.decode as () => void)(), KvErrorCode.Argument, 'store');
  });

  it.each([
    ['dtype', 'f64', KvErrorCode.DType],
    ['dtype', undefined, KvErrorCode.DType],
    ['headDim', 0, KvErrorCode.Argument],
    ['headDim', 513, KvErrorCode.Argument],
    ['headDim', 4.5, KvErrorCode.Argument],
    ['headDim', NaN, KvErrorCode.Argument],
    ['capacity', '8', KvErrorCode.Argument],
    ['kvHeads', -2, KvErrorCode.Argument],
    ['maxSequences', Infinity, KvErrorCode.Argument],
    ['auxWords', 1, KvErrorCode.Shape],
    ['layer', -1, KvErrorCode.Argument],
    ['keys', undefined, KvErrorCode.DType],
    ['keys', new Uint16Array(128), KvErrorCode.DType],
    ['keys', new Uint8Array(255), KvErrorCode.Shape],
    ['values', new Uint8ClampedArray(256), KvErrorCode.DType],
    ['positions', new Float32Array(32), KvErrorCode.DType],
    ['scores', new Float32Array(31), KvErrorCode.Shape],
    ['aux', [], KvErrorCode.DType],
    ['lengths', new Int32Array(3), KvErrorCode.Shape],
    ['steps', new Float32Array(2), KvErrorCode.DType],
  ])('store.%s = %o', (field, value, code) => {
    const store = fresh();
    store[field] = value;
    const argument = field === 'auxWords' ? 'store.aux' : `store.${field}`;
    expectKvError(() => decode(store), code, argument);
  });

  it('sizes whose products overflow', () => {
    const store = fresh();
    Object.assign(store, { maxSequences: 2 ** 31 - 1, kvHeads: 4096, capacity: 2 ** 31 - 1 });
    expectKvError(() => decode(store), KvErrorCode.Shape, 'store.capacity');
  });

  it('corrupt store state: lengths out of range, a clock that is not an integer', () => {
    for (const length of [-1, 9, 2 ** 31 - 1]) {
      const store = fresh();
      store.lengths[1] = length;
      expectKvError(() => decode(store), KvErrorCode.Argument, 'store.lengths');
      expectKvError(() => binding.evict(store, 0, 0, 0, 0, 'head'), KvErrorCode.Argument, 'store.lengths');
    }
    for (const step of [NaN, -1, 0.5, Infinity, 2 ** 53]) {
      const store = fresh();
      store.steps[0] = step;
      expectKvError(() => decode(store), KvErrorCode.Argument, 'store.steps');
    }
  });

  it('keys that do not start on an element boundary', () => {
    const store = fresh();
    (store as Record<string, unknown>)['keys'] = new Uint8Array(new ArrayBuffer(257), 1, 256);
    expectKvError(() => decode(store), KvErrorCode.Argument, 'store.keys');
  });

  it('detached buffers', () => {
    const store = fresh();
    const values = store.values.buffer as ArrayBuffer;
    structuredClone(values, { transfer: [values] });
    expectKvError(() => decode(store), KvErrorCode.Shape, 'store.values');
    const q = new Float32Array(16);
    structuredClone(q.buffer, { transfer: [q.buffer] });
    expectKvError(() => binding.decode(fresh(), 0, q, new Float32Array(16), 4, 0.5, tracker, null), KvErrorCode.Shape, 'q');
  });

  it('a getter that detaches an array already read is caught before any pointer is used', () => {
    const store = fresh();
    const keys = store.keys;
    const positions = store.positions;
    Object.defineProperty(store, 'positions', {
      get() {
        structuredClone(keys.buffer, { transfer: [keys.buffer as ArrayBuffer] });
        return positions;
      },
    });
    expectKvError(() => decode(store), KvErrorCode.Shape, 'store.keys');
  });

  it('a getter that throws surfaces its own error', () => {
    const store = fresh();
    Object.defineProperty(store, 'scores', { get() { throw new RangeError('boom'); } });
    const error = caught(() => decode(store));
    expect(error).toBeInstanceOf(RangeError);
    expect((error as Error).message).toBe('boom');
  });

  it('a Proxy store works like the object it wraps', () => {
    const store = new Proxy(fresh(), {});
    const out = new Float32Array(16);
    binding.decode(store, 0, new Float32Array(16).fill(1), out, 4, 0.5, tracker, null);
    expect(out.every((x) => x === 0)).toBe(true);
  });

  it.each([
    [{ ...tracker, kind: 7 }, 'tracker.kind'],
    [{ ...tracker, kind: -1 }, 'tracker.kind'],
    [{ ...tracker, window: -1 }, 'tracker.window'],
    [{ ...tracker, kind: TrackerKind.Scissorhands, window: 0 }, 'tracker.window'],
    [{ ...tracker, kind: TrackerKind.Scissorhands, window: 33 }, 'tracker.window'],
    [{ ...tracker, seed: 2 ** 32 }, 'tracker.seed'],
    [{ ...tracker, gqa: 'sum' }, 'tracker.gqa'],
    [{ ...tracker, observes: 1 }, 'tracker.observes'],
    [null, 'tracker'],
  ])('tracker %j', (t, argument) => {
    expectKvError(() => decode(fresh(), t), KvErrorCode.Argument, argument);
  });

  it('optional outputs of the wrong size or type', () => {
    const k = new Float32Array(8);
    expectKvError(() => binding.append(fresh(), 0, k, k, 1, 0, tracker, new Float32Array(7)), KvErrorCode.Shape, 'keysOut');
    expectKvError(() => binding.decode(fresh(), 0, new Float32Array(16), new Float32Array(16), 4, 1, tracker, new Float32Array(15)), KvErrorCode.Shape, 'probsOut');
    expectKvError(
      () => binding.prefill(fresh(), 0, new Float32Array(32), 2, new Float32Array(32), 4, 1, tracker, 0, 2, new Float32Array(16)),
      KvErrorCode.Shape, 'probsOut', ShapeError,
    );
    expectKvError(() => binding.observe(fresh(), 0, new Float32Array(32), 8, 4, tracker, new Uint32Array(16) as unknown as Float32Array), KvErrorCode.DType, 'probsOut', DTypeError);
  });

  it('prefill row ranges', () => {
    const q = new Float32Array(32);
    const call = (begin: number, end: number): void => binding.prefill(fresh(), 0, q, 2, new Float32Array(32), 4, 1, tracker, begin, end, null);
    expectKvError(() => call(-1, 1), KvErrorCode.Argument, 'rowBegin');
    expectKvError(() => call(2, 2), KvErrorCode.Argument, 'rowBegin');
    expectKvError(() => call(1, 1), KvErrorCode.Argument, 'rowEnd');
    expectKvError(() => call(0, 3), KvErrorCode.Argument, 'rowEnd');
  });

  it('budget errors carry BudgetError', () => {
    expectKvError(() => binding.evict(fresh(), 0, 4, 0, 0, 'head'), KvErrorCode.Budget, 'count', BudgetError);
  });

  it('the error factory must be a function', () => {
    expectKvError(() => binding.setErrorFactory(42 as unknown as () => Error), KvErrorCode.Argument, 'factory');
  });
});
