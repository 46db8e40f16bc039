import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { KVCache, fixedBudget, fullCache, streamingLLM } from '../../src/index.js';
import { LlamaEngine } from '../../examples/llama/engine.js';
import { LlamaModel } from '../../examples/llama/model.js';
import { loadTokenizer } from '../../examples/llama/tokenizer.js';
import { shared } from './paths.js';

// ref-12m is an internal evaluation model: it is used from shared/, never bundled.
const dir = shared('models/ref-12m/config.json')?.replace(/config\.json$/, '');
const text = shared('data/wikitext2-test.txt');

describe.skipIf(!dir || !text)('ref-12m smoke test (sharded f16 checkpoint, two threads)', () => {
  let model: LlamaModel;
  afterAll(() => model?.close());

  it('teacher-forced NLL of the first 128 predictions matches an independent float64 forward pass', async () => {
    model = await LlamaModel.load(dir!, { maxRows: 2, threads: 2 });
    expect(model.threads).toBe(2);
    const engine = new LlamaEngine(model);
    const tok = loadTokenizer(dir!);
    // The evaluation stream is [0] + tokens (reference-eval.json); read enough text for two windows' starts.
    const ids = [0, ...tok.encode(readFileSync(text!, 'utf8').slice(0, 20_000), false)];
    expect(ids.slice(0, 8)).toEqual([0, 948, 7024, 406, 1480, 355, 948, 221]);
    using cache = KVCache.create({ geometry: engine.geometry, maxSequences: 2, policy: fullCache({ maxTokens: 2048 }) });
    const [w0, w1] = engine.score(cache, [ids.slice(0, 129), ids.slice(2048, 2048 + 129)]);
    const mean = (a: Float64Array) => a.reduce((s, x) => s + x, 0) / a.length;
    // 4.865470135962 comes from a numpy float64 forward pass over the same f16 weights (the same engine
    // gives 4.662466 for the whole first 2048-token window, where reference-eval.json says 4.662467:
    // see bench/results/llama-throughput.md).
    expect(Math.abs(mean(w0!) - 4.865470135962) / 4.86547).toBeLessThan(1e-4);
    expect(mean(w1!)).toBeGreaterThan(3);
    expect(mean(w1!)).toBeLessThan(7);

    // A StreamingLLM cache of 32 tokens (4 sinks) evicts for real: close to, but not the same as, full.
    using small = KVCache.create({ geometry: engine.geometry, maxSequences: 1, tracker: streamingLLM(), policy: fixedBudget({ tokens: 32, sinks: 4, recent: 1 }) });
    const [s0] = engine.score(small, [ids.slice(0, 129)]);
    expect(s0!.slice(0, 32)).toEqual(w0!.slice(0, 32)); // identical until the cache is full
    expect(Math.abs(mean(s0!) - mean(w0!))).toBeGreaterThan(1e-3);
    expect(mean(s0!)).toBeLessThan(mean(w0!) * 1.2);
    expect(small.stats().evictions).toBe(6 * 2 * (128 - 32)); // layers x KV heads x tokens past the budget
  });
});
