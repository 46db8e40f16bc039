/**
 * One test per error code: the class thrown, its stable `code`, and the `argument` it names, through
 * the public surface, on every available backend.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  ArgumentError, BackendError, type BudgetPolicy, BudgetError, CapacityError, DTypeError, DisposedError, KVCache, type KVCacheOptions,
  KvError, KvErrorCode, type HostArray, LoadError, SequenceError, ShapeError, backendInfo, fixedBudget, fullCache, h2o,
} from '../../src/index.js';

const BACKENDS = backendInfo().cpu.available ? (['reference', 'cpu'] as const) : (['reference'] as const);
const geometry = { layers: 2, queryHeads: 4, kvHeads: 2, headDim: 8 };

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error('expected a throw');
}

/** Asserts the error's class (and that it is a KvError and an Error), code and argument. */
function expectKvError(
  error: unknown, type: abstract new (...args: never[]) => KvError, code: KvErrorCode, argument: string | undefined,
  base: abstract new (...args: never[]) => KvError = KvError,
): void {
  expect(error).toBeInstanceOf(type);
  expect(error).toBeInstanceOf(base);
  expect(error).toBeInstanceOf(Error);
  const e = error as KvError;
  expect(e.code).toBe(code);
  expect(e.argument).toBe(argument);
  expect(e.name).toBe(type.name);
  if (argument !== undefined) expect(e.message.startsWith(`${argument}: `)).toBe(true);
}

describe.each(BACKENDS)('error codes on the %s backend', (backend) => {
  const make = (options: Partial<KVCacheOptions> = {}): KVCache =>
    KVCache.create({ geometry, policy: fixedBudget({ tokens: 8, recent: 2 }), tracker: h2o(), backend, ...options });
  const q = new Float32Array(geometry.queryHeads * geometry.headDim);
  const k = new Float32Array(geometry.kvHeads * geometry.headDim);

  it('KV_SHAPE: a q of the wrong length (ShapeError naming q)', () => {
    using cache = make();
    const seq = cache.open();
    expectKvError(caught(() => cache.attend(seq, 0, q.subarray(1), k, k)), ShapeError, KvErrorCode.Shape, 'q');
    expectKvError(caught(() => cache.prefill(seq, 0, q, new Float32Array(k.length + 1), k)), ShapeError, KvErrorCode.Shape, 'k');
    expectKvError(caught(() => cache.observe(seq, 0, new Float32Array(3))), ShapeError, KvErrorCode.Shape, 'probs');
  });

  it('KV_DTYPE: Uint16Array inputs on an f32 cache, an unknown dtype (DTypeError naming the argument)', () => {
    using cache = make();
    const seq = cache.open();
    expectKvError(caught(() => cache.attend(seq, 0, new Uint16Array(q.length) as HostArray, k as HostArray, k as HostArray)), DTypeError, KvErrorCode.DType, 'q');
    expectKvError(caught(() => cache.append(seq, 0, k, new Float64Array(k.length) as unknown as Float32Array)), DTypeError, KvErrorCode.DType, 'v');
    expectKvError(caught(() => make({ dtype: 'f64' as 'f32' })), DTypeError, KvErrorCode.DType, 'dtype');
  });

  it('KV_ARGUMENT: a layer out of range, a geometry whose kvHeads do not divide queryHeads (ArgumentError)', () => {
    using cache = make();
    const seq = cache.open();
    expectKvError(caught(() => cache.attend(seq, geometry.layers, q, k, k)), ArgumentError, KvErrorCode.Argument, 'layer');
    expectKvError(caught(() => cache.view(seq, 0, geometry.kvHeads)), ArgumentError, KvErrorCode.Argument, 'kvHead');
    expectKvError(caught(() => make({ geometry: { ...geometry, kvHeads: 3 } })), ArgumentError, KvErrorCode.Argument, 'geometry.kvHeads');
    expectKvError(caught(() => make({ maxSequences: 0 })), ArgumentError, KvErrorCode.Argument, 'maxSequences');
  });

  it('KV_BUDGET: a budget below the protected windows, a full cache that cannot take a step (BudgetError)', () => {
    expectKvError(caught(() => fixedBudget({ tokens: 4, sinks: 2, recent: 4 })), BudgetError, KvErrorCode.Budget, 'tokens');
    const tight: BudgetPolicy = { name: 'tight', sinks: 4, recent: 4, capacity: () => 6, evictions: () => 0 };
    expectKvError(caught(() => make({ policy: tight })), BudgetError, KvErrorCode.Budget, 'policy');
    using cache = make({ policy: fullCache({ maxTokens: 2 }) });
    const seq = cache.open();
    cache.attend(seq, 0, q, k, k);
    cache.attend(seq, 0, q, k, k);
    expectKvError(caught(() => cache.attend(seq, 0, q, k, k)), BudgetError, KvErrorCode.Budget, 'policy');
    expect(cache.length(seq, 0)).toBe(2);
  });

  // Bug (reported): prefill goes chunk by chunk and only finds out that the policy refuses room when a
  // later chunk does not fit, so the rows before it stay appended (seen advanced, their outputs lost)
  // although the call threw. attend() and append() throw before changing anything; prefill should too.
  it('KV_BUDGET from a prefill that cannot fit leaves the sequence unchanged', () => {
    using cache = make({ policy: fullCache({ maxTokens: 5 }) });
    const seq = cache.open();
    const rows = 8;
    const error = caught(() => cache.prefill(seq, 0, new Float32Array(rows * q.length), new Float32Array(rows * k.length), new Float32Array(rows * k.length)));
    expectKvError(error, BudgetError, KvErrorCode.Budget, 'policy');
    expect({ length: cache.length(seq, 0), seen: cache.seen(seq, 0) }).toEqual({ length: 0, seen: 0 });
  });

  it('KV_SEQUENCE: a sequence that is not open, or not a sequence id (SequenceError naming seq)', () => {
    using cache = make({ maxSequences: 2 });
    expectKvError(caught(() => cache.attend(1, 0, q, k, k)), SequenceError, KvErrorCode.Sequence, 'seq');
    expectKvError(caught(() => cache.close(7)), SequenceError, KvErrorCode.Sequence, 'seq');
    expectKvError(caught(() => cache.reset(Number.NaN)), SequenceError, KvErrorCode.Sequence, 'seq');
  });

  it('KV_CAPACITY: opening more sequences than maxSequences (CapacityError)', () => {
    using cache = make({ maxSequences: 2 });
    cache.open();
    cache.open();
    expectKvError(caught(() => cache.open()), CapacityError, KvErrorCode.Capacity, undefined);
  });

  it('KV_DISPOSED: any call after dispose() (DisposedError)', () => {
    const cache = make();
    cache.dispose();
    expectKvError(caught(() => cache.open()), DisposedError, KvErrorCode.Disposed, undefined);
    expectKvError(caught(() => cache.stats()), DisposedError, KvErrorCode.Disposed, undefined);
  });
});

describe('error codes that do not depend on a backend', () => {
  it("KV_BACKEND: asking for 'cuda' in a build without it, or for an unknown backend (BackendError naming backend)", () => {
    const options = { geometry, policy: fixedBudget({ tokens: 16 }) };
    expectKvError(caught(() => KVCache.create({ ...options, backend: 'cuda' })), BackendError, KvErrorCode.Backend, 'backend');
    expectKvError(caught(() => KVCache.create({ ...options, backend: 'tpu' as 'cpu' })), BackendError, KvErrorCode.Backend, 'backend');
    expect(backendInfo().cuda.available).toBe(false);
  });

  describe('KV_LOAD', () => {
    afterEach(() => {
      vi.doUnmock('node:fs');
      vi.resetModules();
    });

    // The loader has no entry point that takes candidate paths, so this test hides the addon from a
    // fresh copy of the module graph (node:fs reports no .node file) instead: the real, already loaded
    // addon of the other tests is untouched.
    it("asking for 'cpu' when no addon can be found (LoadError, message lists every candidate and says what to do)", async () => {
      vi.resetModules();
      vi.doMock('node:fs', async (importOriginal) => {
        const fs = await importOriginal<typeof import('node:fs')>();
        return { ...fs, existsSync: (path: import('node:fs').PathLike) => !String(path).endsWith('.node') && fs.existsSync(path) };
      });
      const fresh = await import('../../src/index.js');
      expect(fresh.backendInfo().cpu.available).toBe(false);
      expect(fresh.backendInfo().auto).toBe('reference');
      const error = caught(() => fresh.KVCache.create({ geometry, policy: fresh.fixedBudget({ tokens: 16 }), backend: 'cpu' }));
      expectKvError(error, fresh.LoadError, KvErrorCode.Load, undefined, fresh.KvError);
      expect((error as Error).message).toMatch(/Release.*not built/s);
      expect((error as Error).message).toMatch(/npm rebuild scissorhands/);
      // 'auto' falls back to the reference backend.
      using cache = fresh.KVCache.create({ geometry, policy: fresh.fixedBudget({ tokens: 16 }) });
      expect(cache.backend).toBe('reference');
      expect(LoadError.name).toBe('LoadError');
    });
  });
});
