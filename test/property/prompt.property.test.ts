/**
 * Prompt compression (SnapKV, PyramidKV, Ada-KV) and per-head budgets: Ada-KV's split keeps to the
 * layer's budget and the floor; chunked prefill never holds more than the budget plus one chunk; with a
 * budget at least the prompt's length, chunked prefill equals one prefill exactly; per-head caches keep
 * what the budgets say while decoding, with the same tokens on both backends.
 */
import * as fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type BackendName, type Geometry, type KVCacheOptions, KVCache, adaKV, adaSplit, fixedBudget, pyramidKV, scissorhands, snapKV,
  snapKVScores,
} from '../../src/index.js';
import { Rng } from '../../src/testing/index.js';
import { BACKENDS, CPU_AVAILABLE, runs, seed } from './helpers.js';

type Method = 'snapKV' | 'pyramidKV' | 'adaKV' | 'composed';

interface Case {
  readonly method: Method;
  readonly backend: BackendName;
  readonly geometry: Geometry;
  readonly tokens: number;
  readonly window: number;
  readonly sinks: number;
  readonly chunk: number;
  readonly prompt: number;
  readonly decode: number;
  readonly seed: number;
}

function options(c: Case, tokens = c.tokens, chunk = c.chunk): KVCacheOptions {
  const shared = { tokens, window: c.window, sinks: c.sinks, chunk };
  const policy = c.method === 'pyramidKV' ? pyramidKV(shared) : c.method === 'snapKV' ? snapKV(shared) : adaKV(shared);
  return c.method === 'composed'
    ? {
      geometry: c.geometry, backend: c.backend, tracker: scissorhands({ window: 16 }),
      policy: fixedBudget({ tokens, sinks: c.sinks, recent: c.window }), prompt: { tracker: snapKVScores(), policy },
    }
    : { geometry: c.geometry, backend: c.backend, tracker: snapKVScores(), policy };
}

const caseArb = (methods: readonly Method[]): fc.Arbitrary<Case> =>
  fc.record({
    method: fc.constantFrom(...methods),
    backend: fc.constantFrom(...BACKENDS),
    layers: fc.integer({ min: 1, max: 3 }),
    kvHeads: fc.integer({ min: 1, max: 3 }),
    group: fc.integer({ min: 1, max: 2 }),
    headDim: fc.constantFrom(4, 8, 12),
    window: fc.integer({ min: 1, max: 6 }),
    sinks: fc.integer({ min: 0, max: 2 }),
    extra: fc.integer({ min: 1, max: 24 }),
    chunk: fc.integer({ min: 1, max: 16 }),
    prompt: fc.integer({ min: 1, max: 90 }),
    decode: fc.integer({ min: 0, max: 12 }),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
  }).map((r) => ({
    method: r.method, backend: r.backend,
    geometry: { layers: r.layers, kvHeads: r.kvHeads, queryHeads: r.kvHeads * r.group, headDim: r.headDim },
    tokens: r.sinks + r.window + r.extra, window: r.window, sinks: r.sinks, chunk: r.chunk, prompt: r.prompt, decode: r.decode, seed: r.seed,
  }));

/** Random prompt rows (and decode rows) of one case, the same for every cache built from it. */
function rowsOf(c: Case, rows: number, rng: Rng): { q: Float32Array; k: Float32Array; v: Float32Array } {
  const { queryHeads, kvHeads, headDim } = c.geometry;
  const f = (n: number): Float32Array => Float32Array.from({ length: n }, () => rng.range(-2, 2));
  return { q: f(rows * queryHeads * headDim), k: f(rows * kvHeads * headDim), v: f(rows * kvHeads * headDim) };
}

interface Run {
  readonly outputs: Float32Array[];
  readonly kept: { positions: Int32Array; scores: Float32Array }[];
}

/** Prefills the prompt (one `prefill` call per layer), then decodes; records outputs and what is kept. */
function run(cache: KVCache, c: Case, check?: (seq: number, layer: number, phase: 'prefill' | 'decode') => void): Run {
  const rng = new Rng(c.seed);
  const seq = cache.open();
  const outputs: Float32Array[] = [];
  const prompt = rowsOf(c, c.prompt, rng);
  for (let layer = 0; layer < c.geometry.layers; layer++) {
    outputs.push(cache.prefill(seq, layer, prompt.q, prompt.k, prompt.v));
    check?.(seq, layer, 'prefill');
  }
  for (let t = 0; t < c.decode; t++) {
    const step = rowsOf(c, 1, rng);
    for (let layer = 0; layer < c.geometry.layers; layer++) {
      outputs.push(cache.attend(seq, layer, step.q, step.k, step.v));
      check?.(seq, layer, 'decode');
    }
  }
  const kept = [];
  for (let layer = 0; layer < c.geometry.layers; layer++) {
    for (let h = 0; h < c.geometry.kvHeads; h++) kept.push(cache.inspect(seq, layer, h));
  }
  return { outputs, kept };
}

describe('adaSplit (Ada-KV)', () => {
  it('keeps min(keep, all candidates) in all, each head at most its candidates and at least the floor, the rest by global rank', () => {
    const arb = fc.record({
      scores: fc.array(fc.array(fc.float({ min: -4, max: 4, noNaN: true }), { maxLength: 30 }), { minLength: 1, maxLength: 6 }),
      keep: fc.integer({ min: 0, max: 120 }),
      floor: fc.constantFrom(0, 0.2, 0.5, 1),
    });
    fc.assert(fc.property(arb, ({ scores, keep, floor }) => {
      const split = adaSplit({ layer: 0, keep, scores: scores.map((s) => Float32Array.from(s)) }, floor);
      const total = scores.reduce((a, s) => a + s.length, 0);
      expect(split.reduce((a, b) => a + b, 0)).toBe(Math.min(keep, total));
      const least = Math.floor((floor * keep) / scores.length);
      split.forEach((n, h) => {
        expect(n).toBeLessThanOrEqual(scores[h]!.length);
        expect(n).toBeGreaterThanOrEqual(Math.min(least, scores[h]!.length));
      });
      // Beyond its floor, a head keeps a candidate only if no dropped candidate anywhere ranks higher.
      const dropped = scores.flatMap((s, h) => [...s].sort((a, b) => b - a).slice(split[h]));
      const extra = scores.flatMap((s, h) => [...s].sort((a, b) => b - a).slice(Math.min(least, s.length), split[h]));
      if (dropped.length > 0 && extra.length > 0) expect(Math.min(...extra)).toBeGreaterThanOrEqual(Math.max(...dropped));
    }), { numRuns: runs(200), ...seed });
  });
});

describe('prompt compression in a cache', () => {
  it('budgets: a prompt leaves each layer within its budget and each head at least the floor; decoding keeps each head to what the prompt left it', () => {
    fc.assert(fc.property(caseArb(['snapKV', 'pyramidKV', 'adaKV', 'composed']), (c) => {
      using cache = KVCache.create(options(c));
      const perHead = c.method === 'adaKV' || c.method === 'composed';
      const { kvHeads } = c.geometry;
      const rule = (c.method === 'pyramidKV' ? pyramidKV : c.method === 'snapKV' ? snapKV : adaKV)(
        { tokens: c.tokens, window: c.window, sinks: c.sinks, chunk: c.chunk }).prompt;
      const afterPrompt: number[][] = [];
      run(cache, c, (seq, layer, phase) => {
        const lengths = Array.from({ length: kvHeads }, (_, h) => cache.length(seq, layer, h));
        const seen = cache.seen(seq, layer);
        const tokens = rule.tokens(layer, c.geometry);
        // Sinks and the newest window are never dropped.
        for (const n of lengths) expect(n).toBeGreaterThanOrEqual(Math.min(seen, c.sinks + c.window));
        if (phase === 'prefill') {
          afterPrompt.push(lengths);
          if (perHead) {
            expect(lengths.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(tokens * kvHeads);
            // Ada-KV's floor: a fifth of the uniform candidate share, beside sinks and window.
            const floor = Math.floor((0.2 * kvHeads * (tokens - c.sinks - c.window)) / kvHeads);
            for (const n of lengths) expect(n).toBeGreaterThanOrEqual(Math.min(seen, c.sinks + c.window + floor));
          } else {
            for (const n of lengths) expect(n).toBeLessThanOrEqual(tokens);
          }
        } else {
          // Each head keeps to the budget the prompt left it (its length if it was compressed).
          const budgets = afterPrompt[layer]!.map((n) => (c.prompt > tokens || perHead && c.prompt * kvHeads > tokens * kvHeads ? n : tokens));
          lengths.forEach((n, h) => expect(n).toBeLessThanOrEqual(budgets[h]!));
        }
      });
    }), { numRuns: runs(60), ...seed });
  });

  it('peak: a prompt of any length never holds more than the budget plus one chunk per head, and memory is reserved for exactly that', () => {
    fc.assert(fc.property(caseArb(['snapKV', 'adaKV', 'composed']), (c) => {
      const geometry = { ...c.geometry, layers: 1 };
      const one = { ...c, geometry };
      using cache = KVCache.create(options(one));
      run(cache, one);
      const { kvHeads } = geometry;
      expect(cache.stats().peakTokensKept).toBeLessThanOrEqual(kvHeads * (c.tokens + c.chunk));
      // Reserved token slots: (budget + chunk) per head; a per-head layout adds two words per head.
      const perToken = 2 * geometry.headDim * 4 + 4 + 4 + 4 * cache.tracker.auxWords;
      const layoutWords = c.method === 'snapKV' ? 0 : 8 * kvHeads;
      expect(cache.stats().bytesPerSequence).toBe(kvHeads * (c.tokens + c.chunk) * perToken + 4 * kvHeads + 8 + layoutWords);
    }), { numRuns: runs(40), ...seed });
  });

  it('equality: with a budget at least the prompt, chunked prefill gives exactly the outputs, tokens and scores of one prefill', () => {
    fc.assert(fc.property(caseArb(['snapKV', 'pyramidKV', 'adaKV', 'composed']), (c) => {
      // PyramidKV's last layer keeps window + (B - window) / 20: that one must hold the prompt too.
      const least = c.prompt + c.decode + c.sinks + 1;
      const tokens = c.window + (c.method === 'pyramidKV' ? 20 * least : least);
      using whole = KVCache.create(options(c, tokens, c.prompt));
      using chunked = KVCache.create({ ...options(c, tokens, c.prompt), prefillChunk: c.chunk });
      const a = run(whole, c);
      const b = run(chunked, c);
      expect(b.outputs).toEqual(a.outputs);
      expect(b.kept).toEqual(a.kept);
    }), { numRuns: runs(25), ...seed });
  });

  it.runIf(CPU_AVAILABLE)('native and reference keep the same tokens under per-head budgets (continuous data)', () => {
    fc.assert(fc.property(caseArb(['snapKV', 'pyramidKV', 'adaKV', 'composed']), (c) => {
      using native = KVCache.create(options({ ...c, backend: 'cpu' }));
      using oracle = KVCache.create(options({ ...c, backend: 'reference' }));
      const a = run(native, c);
      const b = run(oracle, c);
      expect(a.kept.map((k) => k.positions)).toEqual(b.kept.map((k) => k.positions));
      a.outputs.forEach((out, i) => out.forEach((x, j) => expect(Math.abs(x - b.outputs[i]![j]!)).toBeLessThan(1e-4)));
    }), { numRuns: runs(20), ...seed });
  });
});
