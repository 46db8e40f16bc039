/**
 * Packed layer stores in host memory (`docs/packing.md`): allocation, and the reference rules for
 * packing the residual window into key runs, merging runs, compacting after eviction and decoding what
 * attention reads. The reference backend runs these; the native kernels implement the same rules, and
 * both share the views and sizes below.
 * @module
 */
import { type DType, type HostArray, bytesPerElement, decodeElement, encodeElement } from '../core/dtype.js';
import { f16BitsToF32 } from '../core/dtype.js';
import { ArgumentError, BackendError } from '../core/errors.js';
import { unpackable } from '../quant/format.js';
import type { PackedTensor } from '../quant/packer.js';
import { createReferencePacker } from '../quant/reference.js';
import { type PackedStorage, packedSizes } from '../quant/storage.js';
import type { HeadView, LayerStore, PackedStore } from './backend.js';

const packer = createReferencePacker();

/**
 * Allocates the zeroed packed part of a store.
 * @example
 * ```ts
 * const packed = allocatePacked(storage, 2, 8, 128, 1024, 'f16');
 * ```
 */
export function allocatePacked(
  storage: PackedStorage, maxSequences: number, kvHeads: number, headDim: number, capacity: number, dtype: DType,
): PackedStore {
  const heads = maxSequences * kvHeads;
  const { packedSlots, residualSlots, maxRuns } = packedSizes(storage, capacity);
  const codeBytes = (headDim * storage.bits) / 8;
  const valueGroups = headDim / storage.groupSize;
  const element = bytesPerElement(dtype);
  return {
    format: storage.format, bits: storage.bits, groupSize: storage.groupSize, residual: storage.residual,
    packedSlots, residualSlots, maxRuns,
    keyCodes: new Uint8Array(heads * packedSlots * codeBytes),
    valueCodes: new Uint8Array(heads * packedSlots * codeBytes),
    valueScales: new Uint16Array(heads * packedSlots * valueGroups),
    valueZeros: new Uint16Array(heads * packedSlots * valueGroups),
    keyScales: new Uint16Array(heads * maxRuns * headDim),
    keyZeros: new Uint16Array(heads * maxRuns * headDim),
    runLengths: new Int32Array(heads * maxRuns),
    runGenerations: new Uint8Array(heads * maxRuns),
    runs: new Int32Array(heads),
    packed: new Int32Array(heads),
    residualKeys: new Uint8Array(heads * residualSlots * headDim * element),
    residualValues: new Uint8Array(heads * residualSlots * headDim * element),
  };
}

/**
 * Bytes of the packed part of a store.
 * @example
 * ```ts
 * packedStoreBytes(store.packed);
 * ```
 */
export function packedStoreBytes(p: PackedStore): number {
  return p.keyCodes.byteLength + p.valueCodes.byteLength + p.valueScales.byteLength + p.valueZeros.byteLength
    + p.keyScales.byteLength + p.keyZeros.byteLength + p.runLengths.byteLength + p.runGenerations.byteLength
    + p.runs.byteLength + p.packed.byteLength + p.residualKeys.byteLength + p.residualValues.byteLength;
}

/**
 * Bytes of keys and values one sequence holds now in a packed store: the codes, value scales and zero
 * points of its packed tokens, the scales and zero points of its key runs in use (with their length
 * and generation words), and its residual tokens.
 * @example
 * ```ts
 * packedKvBytesUsed(store, seq);
 * ```
 */
export function packedKvBytesUsed(store: LayerStore, seq: number): number {
  const p = store.packed!;
  const d = store.headDim;
  const codeBytes = (d * p.bits) / 8;
  let bytes = 0;
  for (let h = 0; h < store.kvHeads; h++) {
    const i = seq * store.kvHeads + h;
    const packed = p.packed[i]!;
    const residual = store.lengths[i]! - packed;
    bytes += packed * (2 * codeBytes + 4 * (d / p.groupSize)) + p.runs[i]! * (4 * d + 5)
      + residual * 2 * d * bytesPerElement(store.dtype);
  }
  return bytes;
}

/** Checks one input array of an append to a packed store: every element, as stored, must be packable. */
export function checkPackable(dtype: DType, array: HostArray, argument: string): void {
  for (let i = 0; i < array.length; i++) {
    const stored = array instanceof Float32Array ? decodeElement(dtype, encodeElement(dtype, array[i]!)) : decodeElement(dtype, array[i]!);
    const why = unpackable(stored);
    if (why !== undefined) {
      throw new ArgumentError(`element ${i} is ${why} as stored: packed storage holds finite values in [-65504, 65504]`, argument);
    }
  }
}

/** Element views of raw dtype bytes. */
function elementsOf(dtype: DType, bytes: Uint8Array): Float32Array | Uint16Array {
  return dtype === 'f32'
    ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
    : new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
}

/** A key run (or any `rows` of token-major codes) as a packed tensor grouped per channel over all its rows. */
function keyRun(store: LayerStore, i: number, start: number, rows: number, run: number): PackedTensor {
  const p = store.packed!;
  const d = store.headDim;
  const codeBytes = (d * p.bits) / 8;
  const first = i * p.packedSlots + start;
  const entry = (i * p.maxRuns + run) * d;
  return {
    format: p.format, bits: p.bits, rows, cols: d, axis: 0, groupSize: rows,
    codes: p.keyCodes.subarray(first * codeBytes, (first + rows) * codeBytes),
    scales: p.keyScales.subarray(entry, entry + d),
    zeros: p.keyZeros.subarray(entry, entry + d),
  };
}

/** Moves run-table entry `from` to `to` (scales, zero points, length and generation). */
function moveRun(store: LayerStore, i: number, from: number, to: number): void {
  const p = store.packed!;
  const d = store.headDim;
  const a = (i * p.maxRuns + from) * d;
  const b = (i * p.maxRuns + to) * d;
  p.keyScales.copyWithin(b, a, a + d);
  p.keyZeros.copyWithin(b, a, a + d);
  p.runLengths[i * p.maxRuns + to] = p.runLengths[i * p.maxRuns + from]!;
  p.runGenerations[i * p.maxRuns + to] = p.runGenerations[i * p.maxRuns + from]!;
}

/**
 * Merges two neighbouring key runs of one (sequence, KV head) so that a new run has an entry: the pair
 * with the fewest tokens together (at most `groupSize`; the lower pair on ties) is dequantised and
 * quantised again as one run. `maxRuns` guarantees such a pair exists whenever the table is full.
 */
function mergeRuns(store: LayerStore, i: number): void {
  const p = store.packed!;
  const runs = p.runs[i]!;
  const lengths = p.runLengths.subarray(i * p.maxRuns, (i + 1) * p.maxRuns);
  let best = -1;
  for (let a = 0; a + 1 < runs; a++) {
    const n = lengths[a]! + lengths[a + 1]!;
    if (n <= p.groupSize && (best < 0 || n < lengths[best]! + lengths[best + 1]!)) best = a;
  }
  if (best < 0) throw new BackendError(`no two neighbouring key runs of ${runs} fit one group: the store's run table is corrupt`, 'store');
  let start = 0;
  for (let r = 0; r < best; r++) start += lengths[r]!;
  const na = lengths[best]!;
  const nb = lengths[best + 1]!;
  const d = store.headDim;
  const x = new Float32Array((na + nb) * d);
  x.set(packer.unpack(keyRun(store, i, start, na, best)) as Float32Array, 0);
  x.set(packer.unpack(keyRun(store, i, start + na, nb, best + 1)) as Float32Array, na * d);
  const merged = packer.pack(x, { format: p.format, shape: [na + nb, d], axis: 0, groupSize: na + nb });
  const target = keyRun(store, i, start, na + nb, best);
  target.codes.set(merged.codes);
  target.scales.set(merged.scales);
  target.zeros.set(merged.zeros);
  const generation = Math.min(255, Math.max(p.runGenerations[i * p.maxRuns + best]!, p.runGenerations[i * p.maxRuns + best + 1]!) + 1);
  for (let r = best + 2; r < runs; r++) moveRun(store, i, r, r - 1);
  lengths[best] = na + nb;
  p.runGenerations[i * p.maxRuns + best] = generation;
  p.runs[i] = runs - 1;
}

/**
 * Packs the oldest `groupSize` residual tokens of one (sequence, KV head) into a new key run (merging two
 * runs first when the run table is full) and their values per token, then shifts the residual window.
 * Call when the residual window holds `residual + groupSize` tokens.
 * @example
 * ```ts
 * while (store.lengths[i] - store.packed.packed[i] >= p.residual + p.groupSize) packOldest(store, seq, head);
 * ```
 */
export function packOldest(store: LayerStore, seq: number, head: number): void {
  const p = store.packed!;
  const i = seq * store.kvHeads + head;
  const d = store.headDim;
  const g = p.groupSize;
  if (p.runs[i] === p.maxRuns) mergeRuns(store, i);
  const rowBytes = d * bytesPerElement(store.dtype);
  const residualBase = i * p.residualSlots * rowBytes;
  const decode = (raw: Uint8Array): Float32Array => {
    const elements = elementsOf(store.dtype, raw.subarray(residualBase, residualBase + g * rowBytes));
    return Float32Array.from(elements, (e) => decodeElement(store.dtype, e));
  };
  const keys = packer.pack(decode(p.residualKeys), { format: p.format, shape: [g, d], axis: 0, groupSize: g });
  const values = packer.pack(decode(p.residualValues), { format: p.format, shape: [g, d], axis: 1, groupSize: g });
  const packed = p.packed[i]!;
  const run = p.runs[i]!;
  const target = keyRun(store, i, packed, g, run);
  target.codes.set(keys.codes);
  target.scales.set(keys.scales);
  target.zeros.set(keys.zeros);
  const codeBytes = (d * p.bits) / 8;
  const groups = d / g;
  const first = i * p.packedSlots + packed;
  p.valueCodes.set(values.codes, first * codeBytes);
  p.valueScales.set(values.scales, first * groups);
  p.valueZeros.set(values.zeros, first * groups);
  p.runLengths[i * p.maxRuns + run] = g;
  p.runGenerations[i * p.maxRuns + run] = 0;
  p.runs[i] = run + 1;
  p.packed[i] = packed + g;
  const residual = store.lengths[i]! - packed;
  p.residualKeys.copyWithin(residualBase, residualBase + g * rowBytes, residualBase + residual * rowBytes);
  p.residualValues.copyWithin(residualBase, residualBase + g * rowBytes, residualBase + residual * rowBytes);
}

/**
 * Drops the flagged logical slots of one (sequence, KV head) of a packed store and moves the kept ones
 * to the front in order: per-slot state, packed codes (a key run keeps its scales and zero points, so
 * kept codes are never re-quantised; a run left empty leaves the table), and residual rows.
 * @example
 * ```ts
 * compactPacked(store, seq, head, dropped);
 * ```
 */
export function compactPacked(store: LayerStore, seq: number, head: number, dropped: Uint8Array): void {
  const p = store.packed!;
  const { headDim: d, auxWords } = store;
  const i = seq * store.kvHeads + head;
  const base = i * store.capacity;
  const length = store.lengths[i]!;
  const packed = p.packed[i]!;
  const codeBytes = (d * p.bits) / 8;
  const groups = d / p.groupSize;
  const rowBytes = d * bytesPerElement(store.dtype);
  const packedBase = i * p.packedSlots;
  const residualBase = i * p.residualSlots;
  let kept = 0;
  let keptPacked = 0;
  // Packed slots, run by run.
  let slot = 0;
  let runsKept = 0;
  const runs = p.runs[i]!;
  for (let r = 0; r < runs; r++) {
    const n = p.runLengths[i * p.maxRuns + r]!;
    let survivors = 0;
    for (let t = slot; t < slot + n; t++) {
      if (dropped[t] === 1) continue;
      if (keptPacked !== t) {
        const from = packedBase + t;
        const to = packedBase + keptPacked;
        p.keyCodes.copyWithin(to * codeBytes, from * codeBytes, (from + 1) * codeBytes);
        p.valueCodes.copyWithin(to * codeBytes, from * codeBytes, (from + 1) * codeBytes);
        p.valueScales.copyWithin(to * groups, from * groups, (from + 1) * groups);
        p.valueZeros.copyWithin(to * groups, from * groups, (from + 1) * groups);
      }
      keptPacked++;
      survivors++;
    }
    slot += n;
    if (survivors === 0) continue;
    if (runsKept !== r) moveRun(store, i, r, runsKept);
    p.runLengths[i * p.maxRuns + runsKept] = survivors;
    runsKept++;
  }
  // Residual slots.
  let keptResidual = 0;
  for (let t = packed; t < length; t++) {
    if (dropped[t] === 1) continue;
    const from = t - packed;
    if (keptResidual !== from) {
      const a = (residualBase + from) * rowBytes;
      const b = (residualBase + keptResidual) * rowBytes;
      p.residualKeys.copyWithin(b, a, a + rowBytes);
      p.residualValues.copyWithin(b, a, a + rowBytes);
    }
    keptResidual++;
  }
  // Per-slot state.
  for (let t = 0; t < length; t++) {
    if (dropped[t] === 1) continue;
    if (kept !== t) {
      store.positions[base + kept] = store.positions[base + t]!;
      store.scores[base + kept] = store.scores[base + t]!;
      store.aux.copyWithin((base + kept) * auxWords, (base + t) * auxWords, (base + t + 1) * auxWords);
    }
    kept++;
  }
  store.lengths[i] = kept;
  p.packed[i] = keptPacked;
  p.runs[i] = runsKept;
}

/**
 * The keys or values of one (sequence, KV head) as attention reads them: `[length][headDim]` f32 values,
 * the dequantised codes of the packed slots then the residual window's elements. Also the step of each
 * packed element, and the generation of each packed key.
 * @example
 * ```ts
 * const { rows } = decodePacked(store, seq, head, 'keys');
 * ```
 */
export function decodePacked(
  store: LayerStore, seq: number, head: number, which: 'keys' | 'values',
): { rows: Float32Array; steps: Float32Array; generations: Uint8Array } {
  const p = store.packed!;
  const d = store.headDim;
  const i = seq * store.kvHeads + head;
  const length = store.lengths[i]!;
  const packed = p.packed[i]!;
  const rows = new Float32Array(length * d);
  const steps = new Float32Array(packed * d);
  const generations = new Uint8Array(packed);
  const codeBytes = (d * p.bits) / 8;
  if (which === 'keys') {
    let start = 0;
    for (let r = 0; r < p.runs[i]!; r++) {
      const n = p.runLengths[i * p.maxRuns + r]!;
      const run = keyRun(store, i, start, n, r);
      rows.set(packer.unpack(run) as Float32Array, start * d);
      for (let t = start; t < start + n; t++) {
        generations[t] = p.runGenerations[i * p.maxRuns + r]!;
        for (let c = 0; c < d; c++) steps[t * d + c] = f16BitsToF32(run.scales[c]!);
      }
      start += n;
    }
  } else if (packed > 0) {
    const groups = d / p.groupSize;
    const first = i * p.packedSlots;
    const tensor: PackedTensor = {
      format: p.format, bits: p.bits, rows: packed, cols: d, axis: 1, groupSize: p.groupSize,
      codes: p.valueCodes.subarray(first * codeBytes, (first + packed) * codeBytes),
      scales: p.valueScales.subarray(first * groups, (first + packed) * groups),
      zeros: p.valueZeros.subarray(first * groups, (first + packed) * groups),
    };
    rows.set(packer.unpack(tensor) as Float32Array, 0);
    for (let e = 0; e < packed * d; e++) steps[e] = f16BitsToF32(tensor.scales[Math.floor(e / p.groupSize)]!);
  }
  const rowBytes = d * bytesPerElement(store.dtype);
  const raw = which === 'keys' ? p.residualKeys : p.residualValues;
  const residual = elementsOf(store.dtype, raw.subarray(i * p.residualSlots * rowBytes, (i * p.residualSlots + length - packed) * rowBytes));
  for (let e = 0; e < residual.length; e++) rows[packed * d + e] = decodeElement(store.dtype, residual[e]!);
  return { rows, steps, generations };
}

/**
 * The {@link HeadView} of a packed store: copies of the decoded keys and values (not live views), the
 * positions (live), and the packed slots' steps and generations.
 * @example
 * ```ts
 * const view = viewPacked(store, seq, 0);
 * ```
 */
export function viewPacked(store: LayerStore, seq: number, head: number): HeadView {
  const i = seq * store.kvHeads + head;
  const length = store.lengths[i]!;
  const first = i * store.capacity;
  const keys = decodePacked(store, seq, head, 'keys');
  const values = decodePacked(store, seq, head, 'values');
  return {
    length,
    keys: keys.rows,
    values: values.rows,
    positions: store.positions.subarray(first, first + length),
    packed: store.packed!.packed[i]!,
    keySteps: keys.steps,
    valueSteps: values.steps,
    requantised: keys.generations,
  };
}

/**
 * Writes one token's key and value rows (`d` elements each of `k`/`v` from `at`) at the end of the
 * residual window of one (sequence, KV head), rounding f32 inputs to the store's dtype, then packs if
 * the window is full. The caller has checked room and values.
 * @example
 * ```ts
 * appendPackedToken(store, seq, head, k, v, at);
 * ```
 */
export function appendPackedToken(store: LayerStore, seq: number, head: number, k: HostArray, v: HostArray, at: number): void {
  const p = store.packed!;
  const d = store.headDim;
  const i = seq * store.kvHeads + head;
  const residual = store.lengths[i]! - p.packed[i]!;
  const keys = elementsOf(store.dtype, p.residualKeys);
  const values = elementsOf(store.dtype, p.residualValues);
  const to = (i * p.residualSlots + residual) * d;
  for (let c = 0; c < d; c++) {
    keys[to + c] = k instanceof Uint16Array ? k[at + c]! : encodeElement(store.dtype, k[at + c]!);
    values[to + c] = v instanceof Uint16Array ? v[at + c]! : encodeElement(store.dtype, v[at + c]!);
  }
  store.lengths[i] = store.lengths[i]! + 1;
  if (residual + 1 >= p.residual + p.groupSize) packOldest(store, seq, head);
}
