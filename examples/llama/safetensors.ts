/**
 * A small reader for the safetensors format: an 8-byte little-endian header length, a JSON header
 * (`{ name: { dtype, shape, data_offsets: [begin, end] } }`), then the raw little-endian tensor bytes.
 * F32, F16 and BF16 tensors are converted to `Float32Array`; sharded checkpoints are followed through
 * `model.safetensors.index.json`.
 * @module
 */
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';

/** Element types this reader converts. */
export type TensorDType = 'F32' | 'F16' | 'BF16';

/** A tensor's header entry. */
export interface TensorInfo {
  readonly name: string;
  readonly dtype: TensorDType;
  readonly shape: readonly number[];
  /** Byte offset of the data in the file. */
  readonly offset: number;
  readonly bytes: number;
  readonly file: string;
}

/** Where to put a tensor's f32 values: a view of exactly `length` elements (for example in a shared heap). */
export type Allocator = (info: TensorInfo, length: number) => Float32Array;

const BYTES: Record<TensorDType, number> = { F32: 4, F16: 2, BF16: 2 };

/**
 * Reads the header of one `.safetensors` file.
 * @example
 * ```ts
 * const infos = readHeader('models/stories260K/model.safetensors');
 * ```
 */
export function readHeader(file: string): TensorInfo[] {
  const fd = openSync(file, 'r');
  try {
    const head = Buffer.alloc(8);
    if (readSync(fd, head, 0, 8, 0) !== 8) throw new Error(`${file}: too short for safetensors`);
    const n = Number(head.readBigUInt64LE(0));
    if (n > 100_000_000) throw new Error(`${file}: header of ${n} bytes is not plausible`);
    const json = Buffer.alloc(n);
    if (readSync(fd, json, 0, n, 8) !== n) throw new Error(`${file}: truncated header`);
    const header = JSON.parse(json.toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    const infos: TensorInfo[] = [];
    for (const [name, t] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16') throw new Error(`${file}: ${name} has dtype ${t.dtype}; only F32, F16 and BF16 are supported`);
      const [begin, end] = t.data_offsets;
      const count = t.shape.reduce((a, b) => a * b, 1);
      if (end - begin !== count * BYTES[t.dtype]) throw new Error(`${file}: ${name} has ${end - begin} bytes for shape [${t.shape.join(', ')}]`);
      infos.push({ name, dtype: t.dtype, shape: t.shape, offset: 8 + n + begin, bytes: end - begin, file });
    }
    return infos;
  } finally {
    closeSync(fd);
  }
}

let f16Table: Float32Array | undefined;

/** All 65536 half-precision values, decoded once. */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exp = (bits >>> 10) & 0x1f;
    const mant = bits & 0x3ff;
    t[bits] = exp === 0 ? sign * mant * 2 ** -24 : exp === 0x1f ? (mant ? NaN : sign * Infinity) : sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  return (f16Table = t);
}

/**
 * Converts raw little-endian tensor bytes to f32, into `out`.
 * @example
 * ```ts
 * decodeInto('BF16', new Uint8Array([0x80, 0x3f]), new Float32Array(1)); // [1]
 * ```
 */
export function decodeInto(dtype: TensorDType, bytes: Uint8Array, out: Float32Array): void {
  const count = bytes.byteLength / BYTES[dtype];
  if (count !== out.length) throw new Error(`expected ${out.length} elements, got ${count}`);
  if (dtype === 'F32') {
    new Uint8Array(out.buffer, out.byteOffset, out.byteLength).set(bytes);
    return;
  }
  // Copy to an aligned buffer so it can be read as 16-bit words.
  const bits = new Uint16Array(count);
  new Uint8Array(bits.buffer).set(bytes);
  if (dtype === 'F16') {
    const table = halfTable();
    for (let i = 0; i < count; i++) out[i] = table[bits[i]!]!;
  } else {
    const words = new Uint32Array(out.buffer, out.byteOffset, count);
    for (let i = 0; i < count; i++) words[i] = bits[i]! << 16;
  }
}

/**
 * Lists the tensors of a checkpoint folder: `model.safetensors`, or the shards named by
 * `model.safetensors.index.json`.
 * @example
 * ```ts
 * const infos = listTensors('../shared/models/ref-12m'); // 3 shards
 * ```
 */
export function listTensors(dir: string): TensorInfo[] {
  const index = join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) {
    const map = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map;
    const files = [...new Set(Object.values(map))].sort();
    return files.flatMap((f) => readHeader(join(dir, f)));
  }
  const single = join(dir, 'model.safetensors');
  if (!existsSync(single)) throw new Error(`${dir}: no model.safetensors or model.safetensors.index.json`);
  return readHeader(single);
}

/**
 * Loads every tensor of a checkpoint folder as f32. With `alloc`, each tensor is written where the
 * allocator says (the engine uses this to place weights in its shared heap); otherwise into new arrays.
 * @example
 * ```ts
 * const weights = loadTensors('models/stories260K');
 * weights.get('model.embed_tokens.weight')!.data.length; // 512 * 64
 * ```
 */
export function loadTensors(dir: string, alloc?: Allocator): Map<string, { info: TensorInfo; data: Float32Array }> {
  if (endianness() !== 'LE') throw new Error('safetensors data is little-endian; this reader needs a little-endian host');
  const out = new Map<string, { info: TensorInfo; data: Float32Array }>();
  const byFile = new Map<string, TensorInfo[]>();
  for (const info of listTensors(dir)) {
    const list = byFile.get(info.file) ?? [];
    list.push(info);
    byFile.set(info.file, list);
  }
  for (const [file, infos] of byFile) {
    const bytes = readFileSync(file);
    for (const info of infos) {
      const length = info.bytes / BYTES[info.dtype];
      const data = alloc ? alloc(info, length) : new Float32Array(length);
      decodeInto(info.dtype, bytes.subarray(info.offset, info.offset + info.bytes), data);
      out.set(info.name, { info, data });
    }
  }
  return out;
}
