// The benchmark's correctness gates on a few windows: the full cache and StreamingLLM reproduce
// shared/data/reference-eval.json, and the eviction methods configured with the semantics of
// shared/data/oracle-eviction.md land within 0.5% of its perplexities. The whole matrix runs the same
// gates over every window (npm run bench:quality; see docs/quality-protocol.md).
import { dirname } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LlamaEngine } from '../../examples/llama/engine.js';
import { LlamaModel } from '../../examples/llama/model.js';
import { loadCorpus } from '../../bench/quality/corpus.js';
import { evaluateGates, loadReferences, type Gate } from '../../bench/quality/gates.js';
import { BUILTIN_METHODS, configure } from '../../bench/quality/methods.js';
import { runConfigurations } from '../../bench/quality/runner.js';
import { STORIES, shared } from '../example/paths.js';

const method = (name: string) => BUILTIN_METHODS.find((m) => m.name === name)!;

/** Runs `ids` (method@budget) on the given windows and evaluates every gate that applies. */
async function gates(modelDir: string, text: string, window: number, windows: number, ids: [string, number][], lineEndings: 'lf' | 'keep' = 'lf') {
  const model = await LlamaModel.load(modelDir, { maxRows: ids.length * windows, threads: 'auto' });
  try {
    const engine = new LlamaEngine(model);
    const corpus = loadCorpus(modelDir, text, window, windows, model.config.bos, lineEndings);
    const configs = ids.map(([name, budget]) => configure(method(name), budget, window));
    const results = runConfigurations(engine, configs, corpus.windows, { batch: windows, parallel: configs.length, backend: 'auto' });
    const context = { model: modelDir.split('/').filter(Boolean).pop()!, text: text.split('/').pop()!, window, firstIds: corpus.windows[0]!.slice(0, 8) };
    const refs = loadReferences(dirname(text), context);
    const byId = new Map(results.map((r) => [r.configuration.id, r.perWindowMeanNll]));
    return { results: byId, gates: evaluateGates(refs, context, byId).filter((g) => g.pass !== null), evictions: new Map(results.map((r) => [r.configuration.id, r.evictions])) };
  } finally {
    model.close();
  }
}

const expectPass = (list: Gate[]) => {
  for (const g of list) expect({ gate: `${g.reference} vs ${g.config}`, difference: g.difference, pass: g.pass }).toMatchObject({ pass: true });
};

const sample = shared('data/tinystories-valid-sample.txt');
describe.skipIf(!sample)('stories260K on the TinyStories sample (first 8 windows of 512)', () => {
  it('full cache and StreamingLLM (4 sinks, 128 and 64 tokens) reproduce reference-eval.json per window to 1e-4', async () => {
    const { gates: list, evictions } = await gates(STORIES, sample!, 512, 8, [['full', 512], ['streaming', 128], ['streaming', 64]]);
    expect(list.map((g) => g.reference).sort()).toEqual(['first_ids_of_window_0', 'full', 'streaming_s4_b128', 'streaming_s4_b64']);
    expectPass(list);
    // Real eviction: every (window, layer, KV head) dropped one token per step past the budget.
    expect(evictions.get('streaming@64')).toBe(8 * 5 * 4 * (512 - 64));
    expect(evictions.get('full')).toBe(0);
  });

  it('the file read with its CRLF line endings gives the engine numbers, not reference-eval.json', async () => {
    // reference-eval.json's stories260K rows were computed on the text with CRLF turned into LF (as
    // wikitext2-test.txt was); the CRLF bytes tokenize to <0x0D> and cost the model dearly.
    const { results, gates: list } = await gates(STORIES, sample!, 512, 1, [['full', 512]], 'keep');
    expect(results.get('full')![0]).toBeCloseTo(1.6324308192, 5); // numpy float64 forward pass, same stream
    expect(list.find((g) => g.reference === 'full')!.pass).toBe(false);
  });
});

const ref12m = shared('models/ref-12m/config.json');
const wikitext = shared('data/wikitext2-test.txt');
describe.skipIf(!ref12m || !wikitext)('ref-12m on WikiText-2, window 0 (2048 tokens)', () => {
  it('full and StreamingLLM match reference-eval.json and the oracle to 1e-4; Scissorhands, H2O, TOVA and key norm the oracle within 0.5%', async () => {
    const dir = dirname(ref12m!);
    const { gates: list } = await gates(dir, wikitext!, 2048, 1, [
      ['full', 2048], ['streaming', 512], ['scissorhands', 512], ['scissorhands-m10', 512], ['h2o', 512], ['tova', 512], ['keyNorm', 512],
    ]);
    const compared = list.map((g) => `${g.source}:${g.reference}`).sort();
    expect(compared).toEqual([
      'oracle-eviction.json:full@0', 'oracle-eviction.json:h2o@512', 'oracle-eviction.json:keynorm@512',
      'oracle-eviction.json:scissorhands@512', 'oracle-eviction.json:scissorhands@512[m=B/10]', 'oracle-eviction.json:streaming@512',
      'oracle-eviction.json:tova@512', 'reference-eval.json:first_ids_of_window_0', 'reference-eval.json:full', 'reference-eval.json:streaming_s4_b512',
    ]);
    expectPass(list);
    // Scissorhands, H2O and TOVA reproduce the oracle's window exactly (to float32 rounding), not just within 0.5%.
    for (const g of list.filter((x) => /^(scissorhands|h2o|tova)@512$/.test(x.reference))) expect(g.difference).toBeLessThan(1e-5);
  });
});
