/**
 * The reference packer: the quantisation of `docs/packing.md` written plainly in TypeScript. The native
 * packer must match it bit for bit.
 * @module
 */
import { type DType, type HostArray, decodeElement, encodeElement, parseDType } from '../core/dtype.js';
import { ArgumentError } from '../core/errors.js';
import { f16BitsToF32 } from '../core/dtype.js';
import { dequantiseValue, groupParameters, quantiseValue, readCode, unpackable, writeCode } from './format.js';
import { type PackOptions, type PackedTensor, type Packer, checkPacked, codeBytes, resolvePack } from './packer.js';

/**
 * Indices of the elements of group `g` (in group order) of a `rows x cols` matrix.
 * @example
 * ```ts
 * for (const i of groupElements(0, 1, 8, 4, 2)) console.log(i); // 2, 3
 * ```
 */
export function* groupElements(axis: 0 | 1, rows: number, cols: number, groupSize: number, g: number): Generator<number> {
  if (axis === 1) {
    const start = g * groupSize;
    for (let i = 0; i < groupSize; i++) yield start + i;
    return;
  }
  const block = Math.floor(g / cols);
  const c = g % cols;
  for (let r = block * groupSize; r < (block + 1) * groupSize && r < rows; r++) yield r * cols + c;
}

/**
 * Creates the TypeScript reference packer.
 * @example
 * ```ts
 * const packer = createReferencePacker();
 * const packed = packer.pack(new Float32Array(64).fill(1), { format: 'int4', shape: [2, 32] });
 * ```
 */
export function createReferencePacker(): Packer {
  return {
    name: 'reference',

    pack(input: HostArray, options: PackOptions): PackedTensor {
      const r = resolvePack(input, options);
      const value = (i: number): number => (input instanceof Float32Array ? input[i]! : decodeElement(r.dtype, input[i]!));
      for (let i = 0; i < input.length; i++) {
        const why = unpackable(value(i));
        if (why !== undefined) throw new ArgumentError(`element ${i} is ${why}: packed formats hold finite values in [-65504, 65504]`, 'input');
      }
      const qmax = (1 << r.bits) - 1;
      const codes = new Uint8Array(codeBytes(r.format, r.rows, r.cols));
      const scales = new Uint16Array(r.groups);
      const zeros = new Uint16Array(r.groups);
      for (let g = 0; g < r.groups; g++) {
        let min = Infinity;
        let max = -Infinity;
        for (const i of groupElements(r.axis, r.rows, r.cols, r.groupSize, g)) {
          min = Math.min(min, value(i));
          max = Math.max(max, value(i));
        }
        const p = groupParameters(min, max, qmax);
        scales[g] = p.scale;
        zeros[g] = p.zero;
        const s = f16BitsToF32(p.scale);
        const z = f16BitsToF32(p.zero);
        for (const i of groupElements(r.axis, r.rows, r.cols, r.groupSize, g)) writeCode(codes, r.bits, i, quantiseValue(value(i), s, z, qmax));
      }
      return { format: r.format, bits: r.bits, rows: r.rows, cols: r.cols, axis: r.axis, groupSize: r.groupSize, codes, scales, zeros };
    },

    unpack(packed: PackedTensor, dtype: DType = 'f32'): HostArray {
      const p = checkPacked(packed);
      const type = parseDType(dtype, 'dtype');
      const n = p.rows * p.cols;
      const out = type === 'f32' ? new Float32Array(n) : new Uint16Array(n);
      for (let g = 0; g < p.scales.length; g++) {
        const s = f16BitsToF32(p.scales[g]!);
        const z = f16BitsToF32(p.zeros[g]!);
        for (const i of groupElements(p.axis, p.rows, p.cols, p.groupSize, g)) {
          const x = dequantiseValue(readCode(p.codes, p.bits, i), s, z);
          out[i] = type === 'f32' ? x : encodeElement(type, x);
        }
      }
      return out;
    },
  };
}
