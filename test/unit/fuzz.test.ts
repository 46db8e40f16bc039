/**
 * Fuzzing of every public entry point of KVCache and of KVCache.create(): random arguments of every
 * wrong kind (wrong types, NaN, negative, fractional, huge, undefined, null, symbols, bigints, wrong
 * or foreign typed arrays, subarrays at odd offsets, detached and shared buffers, aliased outputs,
 * closed and never-opened sequences). The only acceptable outcomes are success or a KvError; any other
 * exception fails, and a crash would kill the worker. After each sequence of calls the cache must
 * still be consistent, and a sentinel sequence the calls never name must be bit-identical.
 */
import * as fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type BudgetPolicy, type ImportanceTracker, KVCache, type KVCacheOptions, KvError, backendInfo, fixedBudget, fullCache, h2o,
  keyNorm, random, ratioBudget, scissorhands, streamingLLM, tova,
} from '../../src/index.js';
import { diffSnapshots, snapshotCache } from '../../src/testing/index.js';

const BACKENDS = backendInfo().cpu.available ? (['reference', 'cpu'] as const) : (['reference'] as const);
const RUNS = Math.max(1, Math.round(300 * Number(process.env['SCISSORHANDS_PROPERTY_RUNS'] ?? 10) / 10));

const geometry = { layers: 2, queryHeads: 4, kvHeads: 2, headDim: 3 };
const Q = geometry.queryHeads * geometry.headDim;
const KV = geometry.kvHeads * geometry.headDim;
const SENTINEL = 3;

/** Scalars of every wrong kind (never the sentinel's id 3). */
const weird = fc.constantFrom<unknown>(
  undefined, null, Number.NaN, -1, -0, 0, 1, 2, 1.5, 4, 7, 99, 2 ** 31, 2 ** 31 - 1, -(2 ** 31), 2 ** 53, 1e300, Infinity, -Infinity,
  '0', '', 'abc', true, false, {}, [], [0], Symbol('s'), 1n, () => 0, new Date(0),
);

function detached(): Float32Array {
  const a = new Float32Array(KV);
  structuredClone(a.buffer, { transfer: [a.buffer] });
  return a;
}

/** Arrays of every shape and type: right, wrong length, empty, huge, foreign types, offsets, detached, shared. */
const arrayOf = (right: number): fc.Arbitrary<unknown> => fc.oneof(
  { arbitrary: fc.constant(null).map(() => new Float32Array(right).map((_, i) => Math.sin(i))), weight: 40 },
  { arbitrary: fc.constantFrom(2, 5, 40).map((rows) => new Float32Array(right * rows).map((_, i) => Math.cos(i))), weight: 10 },
  fc.constantFrom(0, 1, right - 1, right + 1, 2 * right + 1).map((n) => new Float32Array(Math.max(0, n))),
  { arbitrary: fc.constant(null).map(() => new Uint16Array(right).fill(0x3c00)), weight: 5 },
  fc.constant(null).map(() => new Float64Array(right)),
  fc.constant(null).map(() => new Int32Array(right)),
  fc.constant(null).map(() => new Uint8Array(right * 4)),
  fc.constant(null).map(() => new Float32Array(right + 7).subarray(3, 3 + right)),
  fc.constant(null).map(() => new Float32Array(new ArrayBuffer(right * 4 + 4), 4, right)),
  fc.constant(null).map(() => new Float32Array(new SharedArrayBuffer(right * 4))),
  fc.constant(null).map(() => new Float32Array(right).fill(Number.NaN)),
  fc.constant(null).map(() => new Float32Array(right).fill(Infinity)),
  fc.constant(null).map(() => new Float32Array(right).fill(3e38)),
  fc.constant(null).map(() => new Float32Array(right * 10000)),
  fc.constant(null).map(() => detached()),
  fc.constant(null).map(() => new DataView(new ArrayBuffer(right * 4))),
  fc.constant(null).map(() => Array.from({ length: right }, () => 0.5)),
  weird,
);

type Slot = 'open' | 'other' | 'closed' | 'never';
const seqArb = fc.oneof(
  { arbitrary: fc.constantFrom<Slot>('open', 'open', 'open', 'other', 'other', 'closed', 'never'), weight: 8 },
  { arbitrary: weird, weight: 1 },
);
const layerArb = fc.oneof({ arbitrary: fc.constantFrom(0, 1), weight: 8 }, { arbitrary: weird, weight: 1 });

interface Call { readonly name: string; readonly args: readonly unknown[] }

const callArb: fc.Arbitrary<Call> = fc.oneof(
  fc.tuple(seqArb, layerArb, arrayOf(Q), arrayOf(KV), arrayOf(KV), fc.option(fc.oneof(arrayOf(Q), fc.constant('alias-q')))).map(([s, l, q, k, v, out]) => ({ name: 'attend', args: out === null ? [s, l, q, k, v] : [s, l, q, k, v, out] })),
  fc.tuple(seqArb, layerArb, arrayOf(Q), arrayOf(KV), arrayOf(KV), fc.option(arrayOf(Q))).map(([s, l, q, k, v, out]) => ({ name: 'prefill', args: out === null ? [s, l, q, k, v] : [s, l, q, k, v, out] })),
  fc.tuple(seqArb, layerArb, arrayOf(KV), arrayOf(KV)).map(([s, l, k, v]) => ({ name: 'append', args: [s, l, k, v] })),
  fc.tuple(seqArb, layerArb, fc.oneof({ arbitrary: fc.constant('probs-right'), weight: 3 }, { arbitrary: arrayOf(geometry.queryHeads), weight: 1 }), fc.option(weird, { freq: 4 })).map(([s, l, p, stride]) => ({ name: 'observe', args: stride === null ? [s, l, p] : [s, l, p, stride] })),
  fc.tuple(seqArb, layerArb, fc.option(weird)).map(([s, l, h]) => ({ name: 'length', args: h === null ? [s, l] : [s, l, h] })),
  fc.tuple(seqArb, fc.option(layerArb)).map(([s, l]) => ({ name: 'seen', args: l === null ? [s] : [s, l] })),
  fc.tuple(seqArb, layerArb, fc.oneof(fc.constantFrom(0, 1), weird)).map(([s, l, h]) => ({ name: 'view', args: [s, l, h] })),
  fc.tuple(seqArb, layerArb, fc.oneof(fc.constantFrom(0, 1), weird)).map(([s, l, h]) => ({ name: 'inspect', args: [s, l, h] })),
  seqArb.map((s) => ({ name: 'reset', args: [s] })),
  seqArb.map((s) => ({ name: 'close', args: [s] })),
  seqArb.map((s) => ({ name: 'isOpen', args: [s] })),
  fc.constant({ name: 'open', args: [] }),
  fc.constant({ name: 'stats', args: [] }),
);

function describeArg(a: unknown): string {
  if (ArrayBuffer.isView(a)) return `${a.constructor.name}(${'length' in a ? String((a as { length: number }).length) : a.byteLength}@${a.byteOffset})`;
  if (typeof a === 'symbol' || typeof a === 'bigint' || typeof a === 'function') return String(a);
  return JSON.stringify(a) ?? String(a);
}

/** Resolves symbolic sequence slots against the cache's current state. */
function resolve(cache: KVCache, call: Call): unknown[] {
  const open = Array.from({ length: cache.maxSequences }, (_, s) => s).filter((s) => s !== SENTINEL && cache.isOpen(s));
  const closed = Array.from({ length: cache.maxSequences }, (_, s) => s).filter((s) => s !== SENTINEL && !cache.isOpen(s));
  return call.args.map((a, i) => {
    if (i !== 0 || call.name === 'open' || call.name === 'stats') return a;
    switch (a) {
      case 'open': return open[0] ?? closed[0] ?? 0;
      case 'other': return open[1] ?? open[0] ?? 0;
      case 'closed': return closed[0] ?? 0;
      case 'never': return cache.maxSequences + 5;
      default: return a;
    }
  });
}

function invoke(cache: KVCache, call: Call): void {
  const args = resolve(cache, call);
  if (args[5] === 'alias-q') args[5] = args[2];
  if (args[2] === 'probs-right') {
    let length = 0;
    try {
      length = cache.length(args[0] as number, args[1] as number);
    } catch {
      // a bad sequence or layer: the observe call below reports it
    }
    args[2] = new Float32Array(geometry.queryHeads * length).fill(length === 0 ? 0 : 1 / length);
  }
  // Never close or reset the sentinel by a weird id that happens to equal it.
  if ((call.name === 'close' || call.name === 'reset') && args[0] === SENTINEL) return;
  if (call.name !== 'open' && call.name !== 'stats' && call.name !== 'isOpen' && args[0] === SENTINEL) return;
  try {
    (cache[call.name as keyof KVCache] as (...a: unknown[]) => unknown).apply(cache, args);
  } catch (error) {
    if (error instanceof KvError) return;
    throw new Error(`${call.name}(${args.map(describeArg).join(', ')}) threw ${String(error)}, not a KvError`, { cause: error });
  }
}

function checkConsistent(cache: KVCache): void {
  const stats = cache.stats();
  let kept = 0;
  for (let seq = 0; seq < cache.maxSequences; seq++) {
    if (!cache.isOpen(seq)) continue;
    for (let layer = 0; layer < geometry.layers; layer++) {
      for (let h = 0; h < geometry.kvHeads; h++) {
        const { positions } = cache.inspect(seq, layer, h);
        kept += positions.length;
        expect(positions.length).toBeLessThanOrEqual(stats.layers[layer]!.capacity);
        for (let j = 1; j < positions.length; j++) expect(positions[j]!).toBeGreaterThan(positions[j - 1]!);
      }
    }
  }
  expect(stats.tokensKept).toBe(kept);
  expect(stats.bytesUsed).toBeLessThanOrEqual(stats.bytesReserved);
}

const TRACKERS: readonly (() => ImportanceTracker)[] = [
  () => scissorhands({ window: 3 }), () => h2o(), () => tova(), () => streamingLLM(), () => keyNorm(), () => random({ seed: 1 }),
];
const POLICIES: readonly (() => BudgetPolicy)[] = [
  () => fixedBudget({ tokens: 6, sinks: 1, recent: 2, drop: 2 }), () => ratioBudget({ ratio: 0.5, maxTokens: 12, recent: 1 }),
  () => fullCache({ maxTokens: 5 }),
];

describe.each(BACKENDS)('fuzzing KVCache on the %s backend', (backend) => {
  it('every entry point: only success or a KvError, the cache stays consistent, the sentinel untouched', () => {
    fc.assert(
      fc.property(
        fc.nat({ max: TRACKERS.length - 1 }), fc.nat({ max: POLICIES.length - 1 }), fc.constantFrom('f32', 'f16', 'bf16' as const),
        fc.array(callArb, { minLength: 1, maxLength: 40 }),
        (t, p, dtype, calls) => {
          using cache = KVCache.create({ geometry, tracker: TRACKERS[t]!(), policy: POLICIES[p]!(), dtype, maxSequences: 4, backend });
          for (let s = 0; s < 4; s++) cache.open();
          const k = new Float32Array(KV).map((_, i) => i / 7);
          cache.prefill(SENTINEL, 0, new Float32Array(Q).fill(0.25), k, k);
          cache.close(2);
          const before = snapshotCache(cache);
          for (const call of calls) invoke(cache, call);
          checkConsistent(cache);
          expect(diffSnapshots(before, snapshotCache(cache), { sequences: [SENTINEL] })).toBeUndefined();
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('KVCache.create(): only a cache or a KvError, whatever the options', () => {
    const options = fc.record({
      geometry: fc.oneof(
        fc.constant(geometry),
        fc.record({ layers: fc.oneof(fc.constantFrom(1, 2), weird), queryHeads: fc.oneof(fc.constantFrom(2, 4), weird), kvHeads: fc.oneof(fc.constantFrom(1, 2), weird), headDim: fc.oneof(fc.constantFrom(1, 3, 512, 513), weird) }),
        weird,
      ),
      policy: fc.oneof(
        fc.constant(null).map(() => fixedBudget({ tokens: 4, recent: 1 })),
        fc.record({ name: fc.constant('odd'), sinks: fc.oneof(fc.constantFrom(0, 1), weird), recent: fc.oneof(fc.constantFrom(0, 1), weird), capacityValue: weird })
          .map(({ capacityValue, ...rest }) => ({ ...rest, capacity: () => capacityValue, evictions: () => 0 })),
        weird,
      ),
      tracker: fc.oneof(
        fc.constant(undefined),
        fc.constant(null).map(() => h2o()),
        fc.record({ scope: fc.oneof(fc.constant('head'), weird), gqa: fc.oneof(fc.constant('mean'), weird), auxWords: fc.oneof(fc.constant(0), weird), input: fc.oneof(fc.constant('none'), weird) })
          .map((o) => ({ name: 'odd', ...o, onAppend: () => {}, onObserve: () => {} })),
        weird,
      ),
      maxSequences: fc.oneof(fc.constantFrom(1, 3), weird),
      dtype: fc.oneof(fc.constantFrom('f32', 'f16', 'bf16'), weird),
      backend: fc.oneof(fc.constant(backend), weird),
      scale: fc.oneof(fc.constant(undefined), fc.constant(0.5), weird),
      prefillChunk: fc.oneof(fc.constant(undefined), fc.constant(2), weird),
    }, { requiredKeys: [] });
    fc.assert(
      fc.property(fc.oneof({ arbitrary: options, weight: 5 }, { arbitrary: weird, weight: 1 }), (raw) => {
        let cache: KVCache | undefined;
        try {
          cache = KVCache.create(raw as KVCacheOptions);
        } catch (error) {
          if (!(error instanceof KvError)) throw new Error(`create(${describeArg(raw)}) threw ${String(error)}, not a KvError`, { cause: error });
          return;
        }
        try {
          const seq = cache.open();
          const d = cache.geometry.headDim;
          cache.attend(seq, 0, new Float32Array(cache.geometry.queryHeads * d), new Float32Array(cache.geometry.kvHeads * d), new Float32Array(cache.geometry.kvHeads * d));
        } catch (error) {
          if (!(error instanceof KvError)) throw new Error(`a cache made from ${describeArg(raw)} threw ${String(error)} on its first step`, { cause: error });
        } finally {
          cache.dispose();
        }
      }),
      { numRuns: RUNS * 2 },
    );
  });
});
