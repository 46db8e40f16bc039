/**
 * The native packer: the CPU addon's vectorised quantisation, bit-identical to the reference packer.
 * @module
 */
import { type DType, type HostArray, parseDType } from '../core/dtype.js';
import { loadNative } from '../native/loader.js';
import { type PackOptions, type PackedTensor, type Packer, checkPacked, codeBytes, resolvePack } from './packer.js';

/**
 * Creates the native packer (AVX-512 where the CPU has it and the shapes allow, else portable C++; the
 * results are the same bits as `createReferencePacker`'s).
 * @throws `LoadError` when the native addon is not built or cannot load.
 * @example
 * ```ts
 * const packer = createNativePacker();
 * const packed = packer.pack(keys, { format: 'int4', shape: [tokens, 128], axis: 0, groupSize: 32 });
 * ```
 */
export function createNativePacker(): Packer {
  const native = loadNative();
  return {
    name: 'cpu',

    pack(input: HostArray, options: PackOptions): PackedTensor {
      const r = resolvePack(input, options);
      const codes = new Uint8Array(codeBytes(r.format, r.rows, r.cols));
      const scales = new Uint16Array(r.groups);
      const zeros = new Uint16Array(r.groups);
      native.packMatrix(input, r.dtype, r.bits, r.rows, r.cols, r.axis, r.groupSize, codes, scales, zeros);
      return { format: r.format, bits: r.bits, rows: r.rows, cols: r.cols, axis: r.axis, groupSize: r.groupSize, codes, scales, zeros };
    },

    unpack(packed: PackedTensor, dtype: DType = 'f32'): HostArray {
      const p = checkPacked(packed);
      const type = parseDType(dtype, 'dtype');
      const n = p.rows * p.cols;
      const out = type === 'f32' ? new Float32Array(n) : new Uint16Array(n);
      native.unpackMatrix(p.codes, p.scales, p.zeros, p.bits, p.rows, p.cols, p.axis, p.groupSize, type, out);
      return out;
    },
  };
}
