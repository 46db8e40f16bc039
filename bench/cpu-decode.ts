/**
 * Benchmark: native CPU decode attention with probability capture (and the Scissorhands tracker update
 * in the same pass) against a plain TypeScript loop doing the same work, and against this machine's
 * memory read bandwidth measured in the same run, on caches larger than the last-level cache.
 *
 *   npm run bench:cpu -- [--gib 1] [--iters 10]
 *
 * Writes bench/results/cpu-decode.json and .md.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createCpuBackend, f16BitsToF32, scissorhands, type DType } from '../src/index.js';
import type { LayerStore } from '../src/backend/backend.js';
import { measureBandwidth, time } from './timing.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({ options: { gib: { type: 'string', default: '1' }, iters: { type: 'string', default: '10' } } });
const gib = Number(args.gib);
const iters = Number(args.iters);

const queryHeads = 32;
const kvHeads = 8;
const headDim = 128;
const group = queryHeads / kvHeads;
const scale = 1 / Math.sqrt(headDim);

const f16Table = new Float32Array(65536).map((_, bits) => f16BitsToF32(bits));

/**
 * What a user would write without the SDK: attention for one query row over a [kvHeads][tokens][headDim]
 * cache, keeping the probabilities, and the Scissorhands count update (bit window of `w` steps).
 */
function typescriptDecode(
  keys: Float32Array | Uint16Array, values: Float32Array | Uint16Array, tokens: number, q: Float32Array,
  out: Float32Array, probs: Float32Array, counts: Float32Array, bits: Uint32Array, words: number, step: number, w: number,
): void {
  const f16 = keys instanceof Uint16Array;
  const logits = new Float32Array(tokens);
  const combined = new Float32Array(tokens);
  for (let kv = 0; kv < kvHeads; kv++) {
    combined.fill(0);
    const base = kv * tokens * headDim;
    for (let g = 0; g < group; g++) {
      const h = kv * group + g;
      const qo = h * headDim;
      let max = -Infinity;
      for (let t = 0; t < tokens; t++) {
        const ko = base + t * headDim;
        let dot = 0;
        for (let i = 0; i < headDim; i++) dot += q[qo + i]! * (f16 ? f16Table[keys[ko + i]!]! : keys[ko + i]!);
        const s = dot * scale;
        logits[t] = s;
        if (s > max) max = s;
      }
      let sum = 0;
      for (let t = 0; t < tokens; t++) {
        const e = Math.exp(logits[t]! - max);
        logits[t] = e;
        sum += e;
      }
      out.fill(0, qo, qo + headDim);
      for (let t = 0; t < tokens; t++) {
        const p = logits[t]! / sum;
        probs[h * tokens + t] = p;
        combined[t]! += p / group;
        const vo = base + t * headDim;
        for (let i = 0; i < headDim; i++) out[qo + i]! += p * (f16 ? f16Table[values[vo + i]!]! : values[vo + i]!);
      }
    }
    const slot = step % w;
    for (let t = 0; t < tokens; t++) {
      const at = (kv * tokens + t) * words + (slot >>> 5);
      const mask = 1 << (slot & 31);
      const unimportant = combined[t]! < 1 / tokens ? 1 : 0;
      const old = (bits[at]! & mask) !== 0 ? 1 : 0;
      if (unimportant) bits[at]! |= mask;
      else bits[at]! &= ~mask;
      counts[kv * tokens + t]! -= unimportant - old;
    }
  }
}

function fill(store: LayerStore, tokens: number, rand: () => number): void {
  const tracker = scissorhands();
  const backend = createCpuBackend();
  const rows = 4096;
  const k = new Float32Array(rows * kvHeads * headDim);
  const v = new Float32Array(rows * kvHeads * headDim);
  for (let done = 0; done < tokens; done += rows) {
    for (let i = 0; i < k.length; i++) { k[i] = rand(); v[i] = rand(); }
    backend.append(store, 0, k, v, Math.min(rows, tokens - done), done, tracker);
  }
}

function run(dtype: DType, bandwidth: number): Record<string, number | string> {
  const bytesPerToken = 2 * kvHeads * headDim * (dtype === 'f32' ? 4 : 2);
  const tokens = Math.round((gib * 2 ** 30) / bytesPerToken / 4096) * 4096;
  const tracker = scissorhands();
  const backend = createCpuBackend();
  const store = backend.allocate({ layer: 0, dtype, maxSequences: 1, kvHeads, headDim, capacity: tokens, auxWords: tracker.auxWords });
  let seed = 12345;
  const rand = (): number => { seed = (seed * 1103515245 + 12345) >>> 0; return seed / 2 ** 31 - 1; };
  fill(store, tokens, rand);
  const q = new Float32Array(queryHeads * headDim).map(() => rand());
  const out = new Float32Array(queryHeads * headDim);
  const attention = { queryHeads, scale };

  backend.decode(store, 0, q, out, attention, tracker);
  const nativeMs = time(() => backend.decode(store, 0, q, out, attention, tracker), iters);

  const elements = kvHeads * tokens * headDim;
  const keys = dtype === 'f32' ? new Float32Array(store.keys.buffer, 0, elements) : new Uint16Array(store.keys.buffer, 0, elements);
  const values = dtype === 'f32' ? new Float32Array(store.values.buffer, 0, elements) : new Uint16Array(store.values.buffer, 0, elements);
  const tsOut = new Float32Array(queryHeads * headDim);
  const probs = new Float32Array(queryHeads * tokens);
  const counts = new Float32Array(kvHeads * tokens);
  const words = Math.ceil(400 / 32);
  const bits = new Uint32Array(kvHeads * tokens * words);
  let step = 0;
  const tsMs = time(() => typescriptDecode(keys, values, tokens, q, tsOut, probs, counts, bits, words, step++, 400), 3);

  let maxRel = 0;
  for (let i = 0; i < out.length; i++) maxRel = Math.max(maxRel, Math.abs(out[i]! - tsOut[i]!) / Math.max(1e-6, Math.abs(tsOut[i]!)));
  const bytes = tokens * bytesPerToken;
  const gbps = bytes / (nativeMs / 1e3) / 1e9;
  return {
    dtype, tokens, cacheMiB: bytes / 2 ** 20, nativeMs, typescriptMs: tsMs, speedup: tsMs / nativeMs,
    nativeGBps: gbps, fractionOfBandwidth: gbps / bandwidth, maxRelErrorVsTypescript: maxRel,
  };
}

const bw = measureBandwidth();
const rows = (['f32', 'f16'] as const).map((dtype) => run(dtype, bw.gbps));
const result = {
  date: new Date().toISOString(),
  machine: `${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}`,
  node: process.version,
  command: `npm run bench:cpu -- --gib ${gib} --iters ${iters}`,
  geometry: { queryHeads, kvHeads, headDim },
  bandwidthGBps: bw.gbps,
  bandwidthByThreads: bw.perThreads,
  rows,
};
const dir = join(here, 'results');
mkdirSync(dir, { recursive: true });
writeFileSync(join(dir, 'cpu-decode.json'), `${JSON.stringify(result, null, 2)}\n`);
const table = [
  '| storage | tokens | cache MiB | native ms | TypeScript ms | speedup | native GB/s | of read bandwidth |',
  '|---|---|---|---|---|---|---|---|',
  ...rows.map((r) => `| ${r['dtype']} | ${r['tokens']} | ${Number(r['cacheMiB']).toFixed(0)} | ${Number(r['nativeMs']).toFixed(2)} | ${Number(r['typescriptMs']).toFixed(1)} | ${Number(r['speedup']).toFixed(1)}x | ${Number(r['nativeGBps']).toFixed(2)} | ${(100 * Number(r['fractionOfBandwidth'])).toFixed(0)}% |`),
].join('\n');
const md = `# CPU decode attention with probability capture\n\n` +
  `${result.date}, ${result.machine}, Node ${result.node}. Command: \`${result.command}\`.\n\n` +
  `One query row (32 query heads over 8 KV heads, head size 128) over every kept token, writing the output, ` +
  `the probabilities and the Scissorhands window update, native vs a plain TypeScript loop doing the same ` +
  `work (median of ${iters} native and 3 TypeScript calls). Read bandwidth measured in the same run ` +
  `(bench/bandwidth.cc, best of 1..${cpus().length} threads): ${bw.gbps.toFixed(2)} GB/s ` +
  `(${Object.entries(bw.perThreads).map(([t, g]) => `${t} thread${t === '1' ? '' : 's'}: ${g}`).join(', ')}).\n\n${table}\n`;
writeFileSync(join(dir, 'cpu-decode.md'), md);
console.log(md);
