/**
 * The packer interface: group-wise quantisation of a `[rows][cols]` matrix to 2-, 4- or 8-bit codes
 * with an f16 scale and zero point per group, and back. The byte layout is in `docs/packing.md`.
 * @module
 */
import { type DType, type HostArray, parseDType } from '../core/dtype.js';
import { ArgumentError, DTypeError, ShapeError } from '../core/errors.js';
import { checkInt } from '../core/geometry.js';
import { readOptions } from '../core/options.js';
import { type PackFormat, formatBits, parsePackFormat } from './format.js';

/**
 * How {@link Packer.pack} groups and codes a matrix.
 * @example
 * ```ts
 * // Keys of 64 tokens x 128 channels, per channel (KIVI): groups of 32 tokens down each column.
 * const keys: PackOptions = { format: 'int4', shape: [64, 128], axis: 0, groupSize: 32 };
 * // Values, per token: groups of 32 channels along each row.
 * const values: PackOptions = { format: 'int4', shape: [64, 128], axis: 1 };
 * ```
 */
export interface PackOptions {
  /** Bits per code. */
  readonly format: PackFormat;
  /** `[rows, cols]` of the input, row-major. */
  readonly shape: readonly [number, number];
  /**
   * The axis a group runs along: `1` (default), `groupSize` consecutive elements of a row (values per
   * token when rows are tokens); `0`, `groupSize` consecutive rows of one column (keys per channel).
   * `groupSize` must divide that axis' length.
   */
  readonly axis?: 0 | 1;
  /** Elements per group; default 32. */
  readonly groupSize?: number;
  /** What a `Uint16Array` input holds: `'f16'` or `'bf16'` bits (required for one; `f32` for a `Float32Array`). */
  readonly dtype?: DType;
}

/**
 * A packed matrix. `codes` holds code `r * cols + c` of element `(r, c)` in bits
 * `[(i mod k) * bits, (i mod k + 1) * bits)` of byte `floor(i / k)`, `k = 8 / bits` (low bits first: two
 * 4-bit codes per byte, low nibble first). `scales` and `zeros` are f16 bits, one per group: group
 * `r * (cols / groupSize) + j` covers `(r, j * groupSize ..)` for `axis: 1`, group `i * cols + c` covers
 * `(i * groupSize .., c)` for `axis: 0`. Element value: `f32(zero + code * scale)`.
 * @example
 * ```ts
 * const packed = packer.pack(x, { format: 'int4', shape: [4, 64] });
 * packed.codes.length; // 128
 * ```
 */
export interface PackedTensor {
  readonly format: PackFormat;
  readonly bits: 2 | 4 | 8;
  readonly rows: number;
  readonly cols: number;
  readonly axis: 0 | 1;
  readonly groupSize: number;
  readonly codes: Uint8Array;
  readonly scales: Uint16Array;
  readonly zeros: Uint16Array;
}

/**
 * Packs and unpacks matrices. Two implementations agree bit for bit: {@link createReferencePacker}
 * (TypeScript) and {@link createNativePacker} (the CPU addon).
 *
 * Inputs must be finite and within `[-65504, 65504]` (scales and zero points are f16): NaN, infinite
 * or out-of-range elements throw {@link ArgumentError} (argument `input`, naming the first bad
 * element); a `groupSize` that does not divide the grouped axis throws {@link ArgumentError}
 * (`groupSize`); a wrong array type or dtype throws {@link DTypeError}; a wrong length
 * {@link ShapeError}.
 * @example
 * ```ts
 * const packer = createReferencePacker();
 * const packed = packer.pack(x, { format: 'int4', shape: [rows, cols], axis: 1, groupSize: 32 });
 * const back = packer.unpack(packed); // Float32Array, each element within half a step of x
 * ```
 */
export interface Packer {
  readonly name: 'reference' | 'cpu';
  /** Quantises `input` (`rows * cols` elements, row-major). */
  pack(input: HostArray, options: PackOptions): PackedTensor;
  /**
   * Dequantises: `f32` (default) gives a `Float32Array`; `f16` or `bf16` gives a `Uint16Array` of the
   * dequantised values rounded to that dtype (nearest, ties to even).
   */
  unpack(packed: PackedTensor, dtype?: DType): HostArray;
}

/** Options after validation. */
export interface ResolvedPack {
  readonly format: PackFormat;
  readonly bits: 2 | 4 | 8;
  readonly rows: number;
  readonly cols: number;
  readonly axis: 0 | 1;
  readonly groupSize: number;
  readonly dtype: DType;
  readonly groups: number;
}

/**
 * Bytes of the codes of a `rows x cols` matrix.
 * @example
 * ```ts
 * codeBytes('int4', 64, 128); // 4096
 * ```
 */
export function codeBytes(format: PackFormat, rows: number, cols: number): number {
  return Math.ceil((rows * cols * formatBits(format)) / 8);
}

/**
 * Total bytes of a packed matrix: codes, then an f16 scale and zero point per group.
 * @example
 * ```ts
 * packedBytes('int4', 64, 128, 32); // 4096 + 4 * 256
 * ```
 */
export function packedBytes(format: PackFormat, rows: number, cols: number, groupSize: number): number {
  return codeBytes(format, rows, cols) + 4 * ((rows * cols) / groupSize);
}

/**
 * Validates pack options against an input; throws typed errors naming the first bad one.
 * @example
 * ```ts
 * const r = resolvePack(input, options);
 * ```
 */
export function resolvePack(input: unknown, options: PackOptions): ResolvedPack {
  const o = readOptions(options, ['format', 'shape', 'axis', 'groupSize', 'dtype']);
  const format = parsePackFormat(o['format'], 'format');
  const shape = o['shape'];
  if (!Array.isArray(shape) || shape.length !== 2) throw new ArgumentError('expected [rows, cols]', 'shape');
  const rows = checkInt(shape[0], 'shape[0]', 1, 2 ** 30);
  const cols = checkInt(shape[1], 'shape[1]', 1, 2 ** 30);
  if (rows * cols > 2 ** 31) throw new ShapeError(`${rows} x ${cols} elements are more than 2^31`, 'shape');
  const axis = o['axis'] ?? 1;
  if (axis !== 0 && axis !== 1) throw new ArgumentError(`expected 0 or 1, got ${String(axis)}`, 'axis');
  const groupSize = o['groupSize'] === undefined ? 32 : checkInt(o['groupSize'], 'groupSize', 1, 2 ** 30);
  const along = axis === 1 ? cols : rows;
  if (along % groupSize !== 0) {
    throw new ArgumentError(`group size ${groupSize} does not divide the ${axis === 1 ? 'row length' : 'row count'} ${along}`, 'groupSize');
  }
  let dtype: DType;
  if (input instanceof Float32Array) {
    dtype = o['dtype'] === undefined ? 'f32' : parseDType(o['dtype'], 'dtype');
    if (dtype !== 'f32') throw new DTypeError(`a Float32Array holds f32 values, not ${dtype}`, 'dtype');
  } else if (input instanceof Uint16Array) {
    if (o['dtype'] === undefined) throw new DTypeError("a Uint16Array input needs dtype 'f16' or 'bf16'", 'dtype');
    dtype = parseDType(o['dtype'], 'dtype');
    if (dtype === 'f32') throw new DTypeError('a Uint16Array holds f16 or bf16 bits, not f32', 'dtype');
  } else {
    throw new DTypeError('expected a Float32Array, or a Uint16Array of f16/bf16 bits', 'input');
  }
  if (input.length !== rows * cols) throw new ShapeError(`expected ${rows} x ${cols} = ${rows * cols} elements, got ${input.length}`, 'input');
  return { format, bits: formatBits(format), rows, cols, axis, groupSize, dtype, groups: (rows * cols) / groupSize };
}

/**
 * Checks that a value is a well-formed {@link PackedTensor}; throws typed errors naming the bad field.
 * @example
 * ```ts
 * checkPacked(packed);
 * ```
 */
export function checkPacked(packed: unknown): PackedTensor {
  if (typeof packed !== 'object' || packed === null) throw new ArgumentError('expected a PackedTensor', 'packed');
  const p = packed as Record<string, unknown>;
  const format = parsePackFormat(p['format'], 'packed.format');
  const bits = formatBits(format);
  if (p['bits'] !== bits) throw new ArgumentError(`expected ${bits} for ${format}`, 'packed.bits');
  const rows = checkInt(p['rows'], 'packed.rows', 1, 2 ** 30);
  const cols = checkInt(p['cols'], 'packed.cols', 1, 2 ** 30);
  if (rows * cols > 2 ** 31) throw new ShapeError(`${rows} x ${cols} elements are more than 2^31`, 'packed.rows');
  const axis = p['axis'];
  if (axis !== 0 && axis !== 1) throw new ArgumentError('expected 0 or 1', 'packed.axis');
  const groupSize = checkInt(p['groupSize'], 'packed.groupSize', 1, 2 ** 30);
  if ((axis === 1 ? cols : rows) % groupSize !== 0) throw new ArgumentError('does not divide the grouped axis', 'packed.groupSize');
  const codes = p['codes'];
  const scales = p['scales'];
  const zeros = p['zeros'];
  if (!(codes instanceof Uint8Array)) throw new DTypeError('expected a Uint8Array', 'packed.codes');
  if (!(scales instanceof Uint16Array)) throw new DTypeError('expected a Uint16Array of f16 bits', 'packed.scales');
  if (!(zeros instanceof Uint16Array)) throw new DTypeError('expected a Uint16Array of f16 bits', 'packed.zeros');
  const groups = (rows * cols) / groupSize;
  if (codes.length !== codeBytes(format, rows, cols)) throw new ShapeError(`expected ${codeBytes(format, rows, cols)} bytes`, 'packed.codes');
  if (scales.length !== groups) throw new ShapeError(`expected ${groups} scales`, 'packed.scales');
  if (zeros.length !== groups) throw new ShapeError(`expected ${groups} zero points`, 'packed.zeros');
  return { format, bits, rows, cols, axis, groupSize, codes, scales, zeros };
}
