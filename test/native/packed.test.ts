/**
 * Packed stores on the native backend against the reference backend (docs/packing.md): the same bits in
 * every array after every append (packing and run merges), eviction and attention call, on realistic
 * shapes (head sizes 64 and 128 take the fused AVX-512 kernels, 24 the portable ones), every format and
 * element type, GQA; attention within tolerance of the reference over the dequantised keys and values,
 * the custom-tracker probabilities included; and typed errors, never a crash, for hostile stores.
 */
import { describe, expect, it } from 'vitest';
import type { LayerStore, PackedStore } from '../../src/backend/backend.js';
import { KvErrorCode, random, resolveStorage, type DType, type PackFormat } from '../../src/index.js';
import { attentionTolerance, referenceAttention } from '../../src/testing/reference-attention.js';
import { DTYPES, Rng, cpu, expectKvError, expectSameStore, floats, hostArray, hostValues, recorder, reference, twins } from './helpers.js';

const PACKED_ARRAYS = [
  'keyCodes', 'valueCodes', 'valueScales', 'valueZeros', 'keyScales', 'keyZeros', 'runLengths', 'runGenerations', 'runs', 'packed',
  'residualKeys', 'residualValues',
] as const;

function expectSamePacked(native: LayerStore, oracle: LayerStore, what: string): void {
  expectSameStore(native, oracle, what);
  for (const name of PACKED_ARRAYS) {
    const a = native.packed![name as keyof PackedStore] as ArrayLike<number> & { buffer: ArrayBufferLike; byteOffset: number; byteLength: number };
    const b = oracle.packed![name as keyof PackedStore] as typeof a;
    expect(Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)), `${what} ${name}`).toBe(0);
  }
}

/** Every row of an attention call against a full-precision attention over the dequantised keys and values it saw. */
function expectRowsMatch(native: LayerStore, seq: number, dtype: DType, q: Float32Array | Uint16Array, out: Float32Array | Uint16Array,
  rows: number, group: number, attention: { queryHeads: number; scale: number }, what: string): void {
  const d = native.headDim;
  const outType = out instanceof Float32Array ? 'f32' : dtype;
  const got = hostValues(out, dtype);
  const qs = hostValues(q, dtype);
  for (let h = 0; h < attention.queryHeads; h++) {
    const view = cpu.view(native, seq, Math.floor(h / group));
    for (let r = 0; r < rows; r++) {
      const visible = view.length - rows + r + 1;
      const ref = referenceAttention(qs, view.keys, view.values, visible, d, attention.scale, (r * attention.queryHeads + h) * d);
      const tol = attentionTolerance(ref, d, outType);
      for (let c = 0; c < d; c++) {
        const want = ref.out[c]!;
        const have = got[(r * attention.queryHeads + h) * d + c]!;
        if (!(Math.abs(have - want) <= tol(want))) expect.fail(`${what} row ${r} head ${h} element ${c}: ${have}, reference ${want}`);
      }
    }
  }
}

interface Shape {
  readonly dtype: DType;
  readonly format: PackFormat;
  readonly headDim: number;
  readonly groupSize: number;
  readonly residual: number;
}

const SHAPES: Shape[] = [];
for (const dtype of DTYPES) {
  for (const format of ['int2', 'int4', 'int8'] as const) {
    SHAPES.push({ dtype, format, headDim: 128, groupSize: 32, residual: 16 });
    SHAPES.push({ dtype, format, headDim: 64, groupSize: 16, residual: 5 });
    SHAPES.push({ dtype, format, headDim: 24, groupSize: 8, residual: 0 });
  }
}

describe.each(SHAPES)('packed store $format $dtype, head size $headDim, groups of $groupSize, residual $residual', (shape) => {
  it('native and reference stores hold the same bits after every call; attention matches the dequantised reference', () => {
    const kvHeads = 2;
    const group = 3;
    const queryHeads = kvHeads * group;
    const capacity = 120;
    const storage = resolveStorage({ format: shape.format, groupSize: shape.groupSize, residual: shape.residual }, shape.headDim);
    const tracker = random({ seed: 9 });
    const spec = { layer: 0, dtype: shape.dtype, maxSequences: 2, kvHeads, headDim: shape.headDim, capacity, auxWords: 0, storage };
    const { native, oracle } = twins(spec);
    const rng = new Rng(shape.headDim * 7 + shape.groupSize + shape.residual);
    const d = shape.headDim;
    const attention = { queryHeads, scale: 1 / Math.sqrt(d) };
    let seen = 0;
    for (let step = 0; step < 24; step++) {
      const seq = step % 5 === 4 ? 1 : 0;
      const length = native.lengths[seq * kvHeads]!;
      const rows = 1 + rng.int(step % 3 === 0 ? 24 : 3);
      if (length + rows > capacity) {
        const count = Math.min(length - 2, rows + rng.int(20));
        cpu.evict(native, seq, count, 1, 1, step % 2 === 0 ? 'head' : 'layer');
        reference.evict(oracle, seq, count, 1, 1, step % 2 === 0 ? 'head' : 'layer');
        expectSamePacked(native, oracle, `step ${step} evict ${count}`);
      }
      const bits = rng.int(2) === 1;
      const k = hostArray(floats(rows * kvHeads * d, rng, 2), shape.dtype, bits);
      const v = hostArray(floats(rows * kvHeads * d, rng, 2), shape.dtype, bits);
      cpu.append(native, seq, k, v, rows, seen, tracker);
      reference.append(oracle, seq, k, v, rows, seen, tracker);
      seen += rows;
      expectSamePacked(native, oracle, `step ${step} append ${rows}`);
      const q = hostArray(floats(rows * queryHeads * d, rng, 2), shape.dtype, bits);
      const out = q instanceof Float32Array ? new Float32Array(q.length) : new Uint16Array(q.length);
      const expected = q instanceof Float32Array ? new Float32Array(q.length) : new Uint16Array(q.length);
      if (rows === 1) {
        cpu.decode(native, seq, q, out, attention, tracker);
        reference.decode(oracle, seq, q, expected, attention, tracker);
      } else {
        cpu.prefill(native, seq, q, rows, out, attention, tracker);
        reference.prefill(oracle, seq, q, rows, expected, attention, tracker);
      }
      expectSamePacked(native, oracle, `step ${step} attend`);
      expectRowsMatch(native, seq, shape.dtype, q, out, rows, group, attention, `step ${step}`);
    }
    expect(native.packed!.packed[0]).toBeGreaterThan(0);
  });
});

// The fused kernels take the packed tokens in passes of 1024 value groups (256 tokens at head size 128 and
// groups of 32); caches longer than that, with runs thinned by eviction so that passes and runs do not
// line up, every row of a prefill seeing a different number of them.
describe.each([
  { format: 'int4' as const, headDim: 128, groupSize: 32 },
  { format: 'int2' as const, headDim: 64, groupSize: 16 },
  { format: 'int8' as const, headDim: 128, groupSize: 32 },
])('packed store $format, head size $headDim: more packed tokens than one pass of the kernels', (shape) => {
  it('bits equal to the reference, attention matches the dequantised reference', () => {
    const kvHeads = 2;
    const group = 4;
    const storage = resolveStorage({ format: shape.format, groupSize: shape.groupSize, residual: 16 }, shape.headDim);
    const tracker = random({ seed: 3 });
    const spec = { layer: 0, dtype: 'f16' as const, maxSequences: 1, kvHeads, headDim: shape.headDim, capacity: 900, auxWords: 0, storage };
    const { native, oracle } = twins(spec);
    const rng = new Rng(shape.headDim + shape.groupSize);
    const d = shape.headDim;
    const attention = { queryHeads: kvHeads * group, scale: 1 / Math.sqrt(d) };
    let seen = 0;
    const append = (rows: number): void => {
      const k = hostArray(floats(rows * kvHeads * d, rng, 2), 'f16', true);
      const v = hostArray(floats(rows * kvHeads * d, rng, 2), 'f16', true);
      cpu.append(native, 0, k, v, rows, seen, tracker);
      reference.append(oracle, 0, k, v, rows, seen, tracker);
      seen += rows;
    };
    for (let i = 0; i < 8; i++) append(100);
    cpu.evict(native, 0, 230, 1, 1, 'head');
    reference.evict(oracle, 0, 230, 1, 1, 'head');
    append(37);
    expectSamePacked(native, oracle, 'filled');
    expect(native.packed!.packed[0]).toBeGreaterThan(512);
    for (const rows of [1, 9]) {
      append(rows);
      const q = hostArray(floats(rows * attention.queryHeads * d, rng, 2), 'f16', true);
      const out = new Uint16Array(q.length);
      const expected = new Uint16Array(q.length);
      if (rows === 1) {
        cpu.decode(native, 0, q, out, attention, tracker);
        reference.decode(oracle, 0, q, expected, attention, tracker);
      } else {
        cpu.prefill(native, 0, q, rows, out, attention, tracker);
        reference.prefill(oracle, 0, q, rows, expected, attention, tracker);
      }
      expectSamePacked(native, oracle, `${rows} rows`);
      expectRowsMatch(native, 0, 'f16', q, out, rows, group, attention, `${rows} rows`);
    }
  });
});

describe('run merges on the native backend', () => {
  it.each([
    { headDim: 32, groupSize: 16, format: 'int4' as const },
    { headDim: 24, groupSize: 8, format: 'int2' as const },
  ])('a long decode through a small cache: runs thin out and merge, bits equal to the reference ($format, head size $headDim)', ({ headDim, groupSize, format }) => {
    const storage = resolveStorage({ format, groupSize, residual: 2 }, headDim);
    const spec = { layer: 0, dtype: 'bf16' as const, maxSequences: 1, kvHeads: 2, headDim, capacity: 3 * groupSize + 2, auxWords: 0, storage };
    const { native, oracle } = twins(spec);
    const tracker = random({ seed: 4 });
    const rng = new Rng(11);
    for (let step = 0; step < 6 * spec.capacity; step++) {
      if (native.lengths[0] === spec.capacity) {
        const count = 1 + rng.int(3);
        cpu.evict(native, 0, count, 0, 1, 'head');
        reference.evict(oracle, 0, count, 0, 1, 'head');
      }
      const k = floats(2 * headDim, rng, 3);
      cpu.append(native, 0, k, k, 1, step, tracker);
      reference.append(oracle, 0, k, k, 1, step, tracker);
      const q = floats(4 * headDim, rng, 1);
      const out = new Float32Array(q.length);
      const expected = new Float32Array(q.length);
      cpu.decode(native, 0, q, out, { queryHeads: 4, scale: 0.2 }, tracker);
      reference.decode(oracle, 0, q, expected, { queryHeads: 4, scale: 0.2 }, tracker);
      expectSamePacked(native, oracle, `step ${step}`);
      out.forEach((x, i) => expect(Math.abs(x - expected[i]!)).toBeLessThan(1e-4));
    }
    expect(Math.max(...native.packed!.runGenerations)).toBeGreaterThan(0);
  });
});

describe('custom trackers see the same probabilities on packed stores', () => {
  it('decode and prefill hand the combined probabilities to onObserve', () => {
    const storage = resolveStorage({ format: 'int4', groupSize: 32, residual: 8 }, 64);
    const spec = { layer: 0, dtype: 'f16' as const, maxSequences: 1, kvHeads: 2, headDim: 64, capacity: 128, auxWords: 0, storage };
    const { native, oracle } = twins(spec);
    const a = recorder();
    const b = recorder();
    const rng = new Rng(3);
    const k = floats(100 * 2 * 64, rng, 1);
    cpu.append(native, 0, k, k, 100, 0, a);
    reference.append(oracle, 0, k, k, 100, 0, b);
    const q = floats(4 * 8 * 64, rng, 1);
    cpu.prefill(native, 0, q, 4, new Float32Array(q.length), { queryHeads: 8, scale: 0.125 }, a);
    reference.prefill(oracle, 0, q, 4, new Float32Array(q.length), { queryHeads: 8, scale: 0.125 }, b);
    expect(a.keys).toEqual(b.keys);
    expect(a.seen.length).toBe(b.seen.length);
    a.seen.forEach((s, i) => {
      const t = b.seen[i]!;
      expect([s.kvHead, s.step]).toEqual([t.kvHead, t.step]);
      s.probs.forEach((p, j) => expect(Math.abs(p - t.probs[j]!)).toBeLessThan(1e-5));
    });
  });
});

describe('hostile packed stores get typed errors, never a crash', () => {
  const storage = resolveStorage({ format: 'int4', groupSize: 16, residual: 4 }, 32);
  const spec = { layer: 0, dtype: 'f32' as const, maxSequences: 1, kvHeads: 1, headDim: 32, capacity: 64, auxWords: 0, storage };
  const tracker = random({ seed: 1 });
  const filled = (): LayerStore => {
    const s = cpu.allocate(spec);
    const k = floats(40 * 32, new Rng(1), 1);
    cpu.append(s, 0, k, k, 40, 0, tracker);
    return s;
  };
  const q = new Float32Array(32);
  const decode = (s: LayerStore): void => cpu.decode(s, 0, q, new Float32Array(32), { queryHeads: 1, scale: 1 }, tracker);

  it('inconsistent runs, packed counts or lengths', () => {
    let s = filled();
    s.packed!.runLengths[0] = 3;
    expectKvError(() => decode(s), KvErrorCode.Argument, 'store.packed');
    s = filled();
    s.packed!.packed[0] = 70;
    expectKvError(() => decode(s), KvErrorCode.Argument, 'store.packed');
    s = filled();
    s.packed!.runs[0] = 99;
    expectKvError(() => cpu.evict(s, 0, 1, 0, 0, 'head'), KvErrorCode.Argument, 'store.packed');
    s = filled();
    s.lengths[0] = 63; // more residual tokens than the window holds
    expectKvError(() => cpu.append(s, 0, new Float32Array(32), new Float32Array(32), 1, 40, tracker), KvErrorCode.Argument, 'store.packed');
  });

  it('arrays of the wrong type or length, sizes that do not match the capacity', () => {
    const s = filled();
    expectKvError(() => decode({ ...s, packed: { ...s.packed!, keyCodes: new Uint8Array(5) } }), KvErrorCode.Shape, 'store.packed.keyCodes');
    expectKvError(() => decode({ ...s, packed: { ...s.packed!, keyScales: new Float32Array(s.packed!.keyScales.length) as unknown as Uint16Array } }), KvErrorCode.DType, 'store.packed.keyScales');
    expectKvError(() => decode({ ...s, packed: { ...s.packed!, maxRuns: 2 } }), KvErrorCode.Argument, 'store.packed');
    expectKvError(() => decode({ ...s, packed: { ...s.packed!, groupSize: 12 } }), KvErrorCode.Argument, 'store.packed.groupSize');
  });

  it('a dense call on a packed store and a packed call on a dense store', () => {
    const s = filled();
    const dense = cpu.allocate({ ...spec, storage: { format: 'dense' } });
    const { packed: _drop, ...asDense } = s;
    expectKvError(() => cpu.decode(asDense as LayerStore, 0, q, new Float32Array(32), { queryHeads: 1, scale: 1 }, tracker), KvErrorCode.Shape, 'store.keys');
    expectKvError(() => cpu.decode({ ...dense, packed: undefined as unknown as PackedStore }, 0, q, new Float32Array(32), { queryHeads: 1, scale: 1 }, tracker), KvErrorCode.Argument);
  });

  it('NaN, infinite and out-of-range values', () => {
    const s = filled();
    for (const [bad, dtype] of [[NaN, 'f32'], [Infinity, 'f32'], [65505, 'f32']] as const) {
      const k = new Float32Array(32);
      k[7] = bad;
      expectKvError(() => cpu.append(s, 0, k, new Float32Array(32), 1, 40, tracker), KvErrorCode.Argument, 'k');
      expectKvError(() => cpu.append(s, 0, new Float32Array(32), k, 1, 40, tracker), KvErrorCode.Argument, 'v');
      void dtype;
    }
    expect(s.lengths[0]).toBe(40);
  });
});
