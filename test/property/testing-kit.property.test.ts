/**
 * The testing kit itself: its arbitraries make what they promise, and the conformance suite and the
 * model catch broken trackers, policies and backends (a suite that passes everything proves nothing).
 */
import * as fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import {
  type Backend, type BudgetPolicy, type ImportanceTracker, fixedBudget, h2o, scissorhands,
} from '../../src/index.js';
import {
  ATTENTION_ROW_KINDS, attentionRowArb, cacheConfigArb, createCache, geometryArb, operationsArb,
  policyConformance, policySpecArb, runModel, trackerConformance, trackerSpec, trackerSpecArb,
} from '../../src/testing/index.js';
import { runs, seed } from './helpers.js';

/** Lets a test swap the reference backend for a broken one (mutation testing of the model). */
const mutant = vi.hoisted(() => ({ current: undefined as ((honest: Backend) => Backend) | undefined }));
vi.mock('../../src/backend/reference.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/backend/reference.js')>();
  return {
    ...original,
    createReferenceBackend: (): Backend => {
      const honest = original.createReferenceBackend();
      return mutant.current === undefined ? honest : mutant.current(honest);
    },
  };
});

const params = { numRuns: runs(100), ...seed };

/** The message of what `fn` throws and of its cause (fast-check puts the property's error there). */
function failureOf(fn: () => void): string {
  try {
    fn();
  } catch (error) {
    const cause = error instanceof Error && error.cause !== undefined ? String(error.cause) : '';
    return `${String(error)}\n${cause}`;
  }
  return 'no failure';
}

describe('arbitraries', () => {
  it('geometryArb: valid GQA geometries, odd head sizes included', () => {
    const odd = new Set<number>();
    fc.assert(fc.property(geometryArb(), (g) => {
      expect(g.queryHeads % g.kvHeads).toBe(0);
      expect(g.layers).toBeGreaterThanOrEqual(1);
      expect(g.headDim).toBeGreaterThanOrEqual(1);
      if (g.headDim % 2 === 1) odd.add(g.headDim);
    }), params);
    expect(odd.size).toBeGreaterThan(1);
  });

  it('attentionRowArb: non-negative finite rows summing to 1, of every kind', () => {
    fc.assert(fc.property(fc.nat({ max: 40 }).chain((n) => fc.tuple(fc.constant(n), attentionRowArb(n))), ([n, row]) => {
      expect(row).toHaveLength(n);
      let sum = 0;
      for (const p of row) {
        expect(Number.isFinite(p) && p >= 0).toBe(true);
        sum += p;
      }
      if (n > 0) expect(Math.abs(sum - 1)).toBeLessThan(1e-5);
    }), params);
    for (const kind of ATTENTION_ROW_KINDS) {
      const [row] = fc.sample(attentionRowArb(6, { kinds: [kind] }), 1);
      expect(row, kind).toHaveLength(6);
    }
    const [uniform] = fc.sample(attentionRowArb(5, { kinds: ['uniform'] }), 1);
    expect(new Set(uniform).size).toBe(1);
  });

  it('trackerSpecArb and policySpecArb: every recipe builds (the options are valid)', () => {
    fc.assert(fc.property(trackerSpecArb(), policySpecArb(), geometryArb(), (t, p, g) => {
      const tracker = t.create();
      const policy = p.create();
      expect(tracker.name).toBe(t.name);
      expect(policy.capacity(0, g)).toBeGreaterThanOrEqual(policy.sinks + policy.recent);
    }), params);
  });

  it('cacheConfigArb: every configuration creates a cache on the reference backend', () => {
    fc.assert(fc.property(cacheConfigArb(), (config) => {
      using cache = createCache(config, 'reference');
      expect(cache.stats().tokensKept).toBe(0);
      expect(cache.maxSequences).toBe(config.maxSequences);
    }), params);
  });

  it('operationsArb: commands print readably and replay', () => {
    const [pair] = fc.sample(cacheConfigArb().chain((c) => fc.tuple(fc.constant(c), operationsArb(c, { maxCommands: 10 }))), { numRuns: 1, seed: 1 });
    const [config, commands] = pair!;
    expect(String(config.tracker)).toMatch(/^\w+\(/);
    for (const command of commands) expect(command.toString()).toMatch(/^\w+/);
  });
});

describe('the suite has teeth', () => {
  function failures(checks: ReturnType<typeof trackerConformance>, only: RegExp): string[] {
    return checks.filter((c) => only.test(c.name)).flatMap((c) => {
      try {
        c.run();
        return [];
      } catch {
        return [c.name];
      }
    });
  }

  it('a tracker whose scores are not reproducible fails determinism', () => {
    let calls = 0;
    const flaky = (): ImportanceTracker => ({
      name: 'flaky', input: 'none', scope: 'head', auxWords: 0, gqa: 'mean',
      onAppend(t) { t.scores[t.index] = (calls++ * 7919) % 13; },
      onObserve() {},
    });
    expect(failures(trackerConformance(flaky, { numRuns: 20, seed: 1 }), /^determinism/)).toHaveLength(1);
  });

  it('a tracker declaring negative aux words fails the interface check', () => {
    const bad = (): ImportanceTracker => ({ ...h2o(), auxWords: -1 });
    expect(failures(trackerConformance(bad, { numRuns: 1 }), /^interface/)).toHaveLength(1);
  });

  it('a policy that asks to evict protected tokens fails the policy checks', () => {
    const greedy = (): BudgetPolicy => ({
      name: 'greedy', sinks: 1, recent: 2, capacity: () => 8,
      evictions: ({ length, incoming }) => (length + incoming > 8 ? length : 0),
    });
    const failed = failures(policyConformance(greedy, { numRuns: 20, seed: 1 }), /^(interface: answers|policy)/);
    expect(failed.length).toBeGreaterThanOrEqual(2);
  });

  it('a policy whose capacity cannot hold its protected windows fails the interface check', () => {
    const tight: BudgetPolicy = { name: 'tight', sinks: 4, recent: 4, capacity: () => 6, evictions: () => 0 };
    expect(failures(policyConformance(tight, { numRuns: 5, seed: 1 }), /^interface: declares/)).toHaveLength(1);
  });

  const MUTANTS: readonly [string, (honest: Backend) => Partial<Backend>][] = [
    ['evicts the highest scores instead of the lowest', (honest) => ({
      evict(store, seq, count, sinks, recent, scope) {
        for (let i = 0; i < store.scores.length; i++) store.scores[i] = -store.scores[i]!;
        honest.evict(store, seq, count, sinks, recent, scope);
        for (let i = 0; i < store.scores.length; i++) store.scores[i] = -store.scores[i]!;
      },
    })],
    ['drops one token too many when it evicts', (honest) => ({
      evict(store, seq, count, sinks, recent, scope) {
        const length = store.lengths[seq * store.kvHeads]!;
        honest.evict(store, seq, Math.min(count + (count > 0 ? 1 : 0), length - sinks - recent), sinks, recent, scope);
      },
    })],
    ['leaves the last output element unwritten', (honest) => ({
      decode(store, seq, q, out, attention, tracker) {
        honest.decode(store, seq, q, out, attention, tracker);
        out[out.length - 1] = 0;
      },
    })],
    ['appends into the neighbouring sequence too', (honest) => ({
      append(store, seq, k, v, count, firstPosition, tracker) {
        honest.append(store, seq, k, v, count, firstPosition, tracker);
        if (store.maxSequences > 1) {
          const at = ((seq + 1) % store.maxSequences) * store.kvHeads * store.capacity * store.headDim;
          store.keys[at] = store.keys[at]! ^ 1;
        }
      },
    })],
    ['forgets to shift positions when compacting', (honest) => ({
      evict(store, seq, count, sinks, recent, scope) {
        const positions = store.positions.slice();
        honest.evict(store, seq, count, sinks, recent, scope);
        if (count > 0) store.positions.set(positions);
      },
    })],
  ];

  for (const [name, mutate] of MUTANTS) {
    it(`the model catches a backend that ${name}`, () => {
      mutant.current = (honest) => ({ ...honest, ...mutate(honest) });
      try {
        const configs = cacheConfigArb({ maxSequences: 3 });
        const failure = failureOf(() => fc.assert(fc.property(configs.chain((c) => fc.tuple(fc.constant(c), operationsArb(c))), ([c, cmds]) => {
          runModel(c, cmds, { backend: 'reference', oracle: false });
        }), { numRuns: 200, seed: 11 }));
        if (process.env['DEBUG_MUTANTS']) console.log(name, /\[\w+\]/.exec(failure)?.[0]);
        expect(failure).toMatch(/InvariantError|\[(capacity|protected|positions|data|attention|policy|eviction|stats)\]/);
      } finally {
        mutant.current = undefined;
      }
    });
  }

  it('runModel finds an off-by-one in a policy within a few runs', () => {
    const leaky = (): BudgetPolicy => {
      const inner = fixedBudget({ tokens: 6, recent: 2 });
      return { ...inner, name: 'leaky', evictions: (c) => (c.length + c.incoming > 6 ? inner.evictions(c) + 1 : 0) };
    };
    const configs = cacheConfigArb({ tracker: fc.constant(trackerSpec('scissorhands')), policy: fc.constant({ name: 'leaky', options: undefined, create: leaky, toString: () => 'leaky' }) });
    expect(failureOf(() => fc.assert(fc.property(configs.chain((c) => fc.tuple(fc.constant(c), operationsArb(c))), ([c, cmds]) => {
      runModel(c, cmds);
    }), { numRuns: 50, seed: 3 }))).toMatch(/\[policy\]|KV_BUDGET|BudgetError/);
    expect(scissorhands().name).toBe('scissorhands');
  });
});
