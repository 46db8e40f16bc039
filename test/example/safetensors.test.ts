import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { f32ToBf16Bits, f32ToF16Bits } from '../../src/index.js';
import { decodeInto, listTensors, loadTensors, readHeader } from '../../examples/llama/safetensors.js';
import { STORIES } from './paths.js';

/** Builds a safetensors file from `{ name: [dtype, shape, values] }`. */
function build(tensors: Record<string, ['F32' | 'F16' | 'BF16', number[], number[]]>): Buffer {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const parts: Buffer[] = [];
  let at = 0;
  for (const [name, [dtype, shape, values]] of Object.entries(tensors)) {
    const b = Buffer.alloc(values.length * (dtype === 'F32' ? 4 : 2));
    values.forEach((v, i) => {
      if (dtype === 'F32') b.writeFloatLE(v, 4 * i);
      else b.writeUInt16LE(dtype === 'F16' ? f32ToF16Bits(v) : f32ToBf16Bits(v), 2 * i);
    });
    header[name] = { dtype, shape, data_offsets: [at, at + b.length] };
    parts.push(b);
    at += b.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, Buffer.from(json), ...parts]);
}

describe('safetensors loader', () => {
  it('converts f32, f16 and bf16 to f32 exactly', () => {
    const values = [0, -0, 1, -2.5, 0.375, 65504, 6.103515625e-5, 5.960464477539063e-8, 3.140625];
    const dir = mkdtempSync(join(tmpdir(), 'st-'));
    writeFileSync(join(dir, 'model.safetensors'), build({
      a: ['F32', [3, 3], values],
      b: ['F16', [9], values],
      c: ['BF16', [9], values],
    }));
    const t = loadTensors(dir);
    expect([...t.get('a')!.data]).toEqual(values.map(Math.fround));
    expect(t.get('a')!.info.shape).toEqual([3, 3]);
    // Every value above is exact in f16; bf16 rounds to 8 significant bits.
    expect([...t.get('b')!.data]).toEqual(values.map(Math.fround));
    const bf = [...t.get('c')!.data];
    expect(bf.slice(0, 4)).toEqual([0, -0, 1, -2.5]);
    for (const [i, v] of values.entries()) expect(Math.abs(bf[i]! - v)).toBeLessThanOrEqual(Math.abs(v) / 128);
  });

  it('decodes special f16 and bf16 values', () => {
    const f16 = new Uint8Array(new Uint16Array([0x7c00, 0xfc00, 0x7e00, 0x0001, 0x3555]).buffer);
    const out = new Float32Array(5);
    decodeInto('F16', f16, out);
    expect(out[0]).toBe(Infinity);
    expect(out[1]).toBe(-Infinity);
    expect(out[2]).toBeNaN();
    expect(out[3]).toBe(2 ** -24);
    expect(out[4]).toBeCloseTo(0.333, 3);
    const bf = new Uint8Array(new Uint16Array([0x3f80, 0xc000, 0x7f80]).buffer);
    const o2 = new Float32Array(3);
    decodeInto('BF16', bf, o2);
    expect([...o2]).toEqual([1, -2, Infinity]);
  });

  it('reads unaligned data and follows a sharded index', () => {
    const dir = mkdtempSync(join(tmpdir(), 'st-'));
    writeFileSync(join(dir, 'model-1.safetensors'), build({ x: ['F16', [1], [1]], y: ['F32', [2], [1.5, -3]] }));
    writeFileSync(join(dir, 'model-2.safetensors'), build({ z: ['BF16', [2], [2, 4]] }));
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { x: 'model-1.safetensors', y: 'model-1.safetensors', z: 'model-2.safetensors' } }));
    const t = loadTensors(dir);
    expect([...t.keys()].sort()).toEqual(['x', 'y', 'z']);
    expect([...t.get('y')!.data]).toEqual([1.5, -3]); // starts 2 bytes into the data: unaligned
    expect([...t.get('z')!.data]).toEqual([2, 4]);
    expect(listTensors(dir).map((i) => i.file.endsWith('model-2.safetensors'))).toEqual([false, false, true]);
  });

  it('rejects other dtypes and inconsistent sizes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'st-'));
    const bad = build({ a: ['F32', [2], [1, 2]] });
    const json = bad.subarray(8, 8 + Number(bad.readBigUInt64LE(0))).toString().replace('"F32"', '"I64"');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    writeFileSync(join(dir, 'bad.safetensors'), Buffer.concat([len, Buffer.from(json), Buffer.alloc(8)]));
    expect(() => readHeader(join(dir, 'bad.safetensors'))).toThrow(/I64/);
  });

  it('loads the bundled stories260K checkpoint (260,032 f32 parameters, tied embeddings)', () => {
    const t = loadTensors(STORIES);
    let n = 0;
    for (const { data } of t.values()) n += data.length;
    expect(n).toBe(260_032);
    expect(t.has('lm_head.weight')).toBe(false);
    expect(t.get('model.embed_tokens.weight')!.info.shape).toEqual([512, 64]);
  });
});
