/**
 * The packing rules of docs/packing.md on the reference backend: the residual window, key runs, eviction
 * inside a run (kept codes are never re-quantised), run merges when the run table is full, and the
 * cache-level behaviour (typed errors before anything changes, exact bytes).
 */
import { describe, expect, it } from 'vitest';
import {
  ArgumentError, KVCache, adaKV, createReferenceBackend, createReferencePacker, fixedBudget, h2o, resolveStorage, snapKV, streamingLLM,
  type LayerStore, type PackedStorage,
} from '../../../src/index.js';
import { resolveOptions } from '../../../src/cache/options.js';
import { Rng } from '../../../src/testing/rng.js';

const backend = createReferenceBackend();
const packer = createReferencePacker();

function store(capacity: number, storage: PackedStorage, headDim = 16, kvHeads = 1): LayerStore {
  return backend.allocate({ layer: 0, dtype: 'f32', maxSequences: 1, kvHeads, headDim, capacity, auxWords: 0, storage });
}

function append(s: LayerStore, count: number, first: number, rng: Rng): Float32Array {
  const k = Float32Array.from({ length: count * s.kvHeads * s.headDim }, () => rng.range(-2, 2));
  backend.append(s, 0, k, k, count, first, streamingLLM());
  return k;
}

const bits = (x: ArrayLike<number>): number[] => Array.from(new Uint32Array(Float32Array.from(x).buffer));

describe('the residual window and key runs', () => {
  const storage = resolveStorage({ format: 'int4', groupSize: 8, residual: 4 }, 16) as PackedStorage;

  it('packs the oldest group once the window holds residual + groupSize tokens, one run per group', () => {
    const s = store(40, storage);
    const p = s.packed!;
    expect([p.packedSlots, p.residualSlots, p.maxRuns]).toEqual([36, 12, 10]);
    const rng = new Rng(1);
    append(s, 11, 0, rng);
    expect([s.lengths[0], p.packed[0], p.runs[0]]).toEqual([11, 0, 0]);
    append(s, 1, 11, rng);
    expect([s.lengths[0], p.packed[0], p.runs[0]]).toEqual([12, 8, 1]);
    append(s, 18, 12, rng);
    expect([s.lengths[0], p.packed[0], p.runs[0], Array.from(p.runLengths.subarray(0, 3))]).toEqual([30, 24, 3, [8, 8, 8]]);
  });

  it('a run is the packer\'s per-channel quantisation of its tokens; values are per token', () => {
    const s = store(40, storage);
    const k = append(s, 12, 0, new Rng(2));
    const view = backend.view(s, 0, 0);
    const keys = packer.unpack(packer.pack(k.subarray(0, 8 * 16), { format: 'int4', shape: [8, 16], axis: 0, groupSize: 8 })) as Float32Array;
    const values = packer.unpack(packer.pack(k.subarray(0, 8 * 16), { format: 'int4', shape: [8, 16], axis: 1, groupSize: 8 })) as Float32Array;
    expect(bits(view.keys.subarray(0, 8 * 16))).toEqual(bits(keys));
    expect(bits(view.values.subarray(0, 8 * 16))).toEqual(bits(values));
    // The residual window keeps the appended values exactly.
    expect(bits(view.keys.subarray(8 * 16))).toEqual(bits(k.subarray(8 * 16)));
  });

  it('a store whose capacity is below residual + groupSize never packs', () => {
    const s = store(11, storage);
    expect([s.packed!.packedSlots, s.packed!.residualSlots, s.packed!.maxRuns]).toEqual([0, 11, 0]);
    append(s, 11, 0, new Rng(3));
    expect(s.packed!.packed[0]).toBe(0);
  });
});

describe('eviction inside a packed run', () => {
  const storage = resolveStorage({ format: 'int2', groupSize: 8, residual: 0 }, 16) as PackedStorage;

  it('drops the token, keeps every other code and the run\'s scales: the kept keys dequantise to the same bits', () => {
    const s = store(32, storage);
    append(s, 24, 0, new Rng(4));
    const before = backend.view(s, 0, 0);
    const keys = Array.from(before.keys as Float32Array);
    // Scores: drop slots 3 and 9 (inside runs 0 and 1), then all of run 2.
    s.scores.fill(1);
    s.scores[3] = 0;
    s.scores[9] = 0;
    backend.evict(s, 0, 2, 0, 0, 'head');
    const after = backend.view(s, 0, 0);
    expect(Array.from(after.positions)).toEqual([...Array(24).keys()].filter((p) => p !== 3 && p !== 9));
    const kept = [...Array(24).keys()].filter((p) => p !== 3 && p !== 9);
    kept.forEach((p, j) => expect(bits((after.keys as Float32Array).subarray(j * 16, (j + 1) * 16))).toEqual(bits(keys.slice(p * 16, (p + 1) * 16))));
    expect(Array.from(s.packed!.runLengths.subarray(0, 3))).toEqual([7, 7, 8]);
    expect(Array.from(after.requantised!)).toEqual(new Array(22).fill(0));
    // An emptied run leaves the table.
    s.scores.fill(1);
    s.scores.fill(0, 14, 22);
    backend.evict(s, 0, 8, 0, 0, 'head');
    expect([s.packed!.runs[0], Array.from(s.packed!.runLengths.subarray(0, 2))]).toEqual([2, [7, 7]]);
  });
});

describe('run merges', () => {
  const storage = resolveStorage({ format: 'int4', groupSize: 8, residual: 0 }, 16) as PackedStorage;

  it('when the table is full, the two neighbouring runs with the fewest tokens together become one, re-quantised', () => {
    const s = store(24, storage); // 24 packed slots, a table of 6 runs
    const p = s.packed!;
    const rng = new Rng(5);
    const runs = (): number[] => Array.from(p.runLengths.subarray(0, p.runs[0]));
    /** Evicts the given slots (every other slot scores higher). */
    const drop = (slots: number[]): void => {
      s.scores.fill(1);
      for (const slot of slots) s.scores[slot] = 0;
      backend.evict(s, 0, slots.length, 0, 0, 'head');
    };
    let next = 0;
    const add = (n: number): void => {
      append(s, n, next, rng);
      next += n;
    };
    add(24);
    drop([0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 16, 17, 18]);
    expect(runs()).toEqual([2, 3, 5]);
    add(8);
    drop([10, 11, 12, 13, 14, 15, 16]);
    add(8);
    drop([12, 13, 14, 15, 16, 17, 18]);
    add(8);
    drop([16, 17, 18, 19]);
    expect(runs()).toEqual([2, 3, 5, 1, 1, 4]);
    const before = Array.from(backend.view(s, 0, 0).keys as Float32Array);
    add(8); // the table is full: runs 3 and 4 (1 + 1 tokens, the fewest) merge first
    const after = backend.view(s, 0, 0);
    expect(runs()).toEqual([2, 3, 5, 2, 4, 8]);
    expect(Array.from(after.requantised!)).toEqual([...new Array(10).fill(0), 1, 1, ...new Array(12).fill(0)]);
    const merged = packer.unpack(packer.pack(Float32Array.from(before.slice(10 * 16, 12 * 16)), { format: 'int4', shape: [2, 16], axis: 0, groupSize: 2 })) as Float32Array;
    expect(bits((after.keys as Float32Array).subarray(10 * 16, 12 * 16))).toEqual(bits(merged));
    // Runs not merged keep their bits.
    expect(bits((after.keys as Float32Array).subarray(0, 10 * 16))).toEqual(bits(before.slice(0, 10 * 16)));
    expect(bits((after.keys as Float32Array).subarray(12 * 16, 16 * 16))).toEqual(bits(before.slice(12 * 16, 16 * 16)));
  });
});

describe('KVCache with packed storage', () => {
  const geometry = { layers: 1, queryHeads: 2, kvHeads: 1, headDim: 32 };

  it('rejects a group size that does not divide the head size, or is not a multiple of 8', () => {
    for (const groupSize of [24, 12, 64]) {
      expect(() => KVCache.create({ geometry, policy: fixedBudget({ tokens: 16 }), storage: { format: 'int4', groupSize } }))
        .toThrow(ArgumentError);
    }
    expect(() => KVCache.create({ geometry, policy: fixedBudget({ tokens: 16 }), storage: { format: 'int5' as 'int4' } })).toThrow(/storage.format/);
  });

  it('packed storage passes the options on every backend; prompt compression (per-head layouts) still needs dense rows', () => {
    const packed = { geometry: { ...geometry, headDim: 64 }, policy: fixedBudget({ tokens: 16 }), storage: { format: 'int4' } } as const;
    for (const backend of ['reference', 'cpu', 'cuda', 'auto'] as const) {
      expect(resolveOptions({ ...packed, backend }, () => h2o()).storage).toMatchObject({ format: 'int4', bits: 4 });
      // Refused before any backend is loaded, so the same typed error with or without a GPU.
      for (const policy of [snapKV({ tokens: 16, window: 4 }), adaKV({ tokens: 16, window: 4 })]) {
        expect(() => KVCache.create({ ...packed, backend, policy }))
          .toThrow(expect.objectContaining({ code: 'KV_ARGUMENT', argument: 'storage' }));
      }
    }
  });

  it('NaN, infinite or out-of-range keys and values throw before anything changes', () => {
    using cache = KVCache.create({ geometry, policy: fixedBudget({ tokens: 8, recent: 1 }), dtype: 'f16', storage: { format: 'int4', residual: 0 }, tracker: h2o() });
    const seq = cache.open();
    const q = new Float32Array(64);
    const good = new Float32Array(32);
    cache.attend(seq, 0, q, good, good);
    for (const [value, why] of [[NaN, 'NaN'], [Infinity, 'infinite'], [70000, 'infinite'], [-1e9, 'infinite']] as const) {
      const bad = new Float32Array(32);
      bad[5] = value;
      expect(() => cache.attend(seq, 0, q, bad, good)).toThrow(/k: element 5/);
      expect(() => cache.prefill(seq, 0, new Float32Array(128), new Float32Array(64), Float32Array.from({ length: 64 }, (_, i) => (i === 40 ? value : 0)))).toThrow(new RegExp(`v: element 40 is ${why}`));
      expect(() => cache.append(seq, 0, bad, good)).toThrow(ArgumentError);
    }
    // f16 bits of infinity.
    expect(() => cache.attend(seq, 0, new Uint16Array(64), new Uint16Array(32).fill(0x7c00), new Uint16Array(32))).toThrow(ArgumentError);
    expect(cache.length(seq, 0)).toBe(1);
    expect(cache.seen(seq, 0)).toBe(1);
  });

  it('stats: exact bytes of codes, scales, zero points, runs and residual window; compression against f16', () => {
    using cache = KVCache.create({
      geometry, policy: fixedBudget({ tokens: 96, recent: 1 }), dtype: 'f16', storage: { format: 'int4', groupSize: 32, residual: 32 }, tracker: streamingLLM(),
    });
    const seq = cache.open();
    const rng = new Rng(7);
    cache.append(seq, 0, Float32Array.from({ length: 70 * 32 }, () => rng.range(-1, 1)), Float32Array.from({ length: 70 * 32 }, () => rng.range(-1, 1)));
    // 70 tokens: one run of 32 packed, 38 in the residual window.
    const s = cache.stats();
    const packed = 32 * (2 * 16 + 4 * 1) + 1 * (4 * 32 + 5);
    const residual = 38 * 2 * 32 * 2;
    expect(s.bytesKV).toBe(packed + residual);
    expect(s.bytesF16).toBe(70 * 4 * 32);
    expect(s.compressionVsF16).toBe((70 * 4 * 32) / (packed + residual));
    expect(s.bytesUsed).toBe(packed + residual + 70 * 8);
    expect(s.storage).toBe('int4');
  });
});
