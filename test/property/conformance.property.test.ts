/**
 * Every built-in tracker and policy through the shared conformance suite of `scissorhands/testing`,
 * exactly as a user runs it on their own, on every available backend.
 */
import { describe, it } from 'vitest';
import {
  type BudgetPolicy, adaKV, fixedBudget, fullCache, h2o, keyNorm, pyramidKV, random, ratioBudget, scissorhands, snapKV, snapKVScores,
  streamingLLM, tova, type ImportanceTracker,
} from '../../src/index.js';
import { policyConformance, runConformance, trackerConformance } from '../../src/testing/index.js';
import { BACKENDS, runs, seed } from './helpers.js';

const options = { backends: BACKENDS, numRuns: runs(10), ...seed };

const TRACKERS: readonly [string, () => ImportanceTracker][] = [
  ['scissorhands()', () => scissorhands()],
  ['scissorhands({ window: 5, gqa: "max" })', () => scissorhands({ window: 5, gqa: 'max' })],
  ['h2o()', () => h2o()],
  ['tova()', () => tova()],
  ['streamingLLM()', () => streamingLLM()],
  ['keyNorm()', () => keyNorm()],
  ['random({ seed: 7 })', () => random({ seed: 7 })],
  ['snapKVScores({ kernel: 3 })', () => snapKVScores({ kernel: 3 })],
];

/** Users' trackers, written in TypeScript against the documented interface (the backends call their hooks). */
const CUSTOM: readonly [string, () => ImportanceTracker][] = [
  // The example of the ImportanceTracker docs: keep the tokens attended to most recently.
  ['custom lastSeen (attention, gqa max)', () => ({
    name: 'lastSeen', input: 'attention', scope: 'head', auxWords: 0, gqa: 'max',
    onAppend(t) { t.scores[t.index] = t.position; },
    onObserve(o) { for (let j = 0; j < o.length; j++) if (o.probs[j]! > 0.05) o.scores[j] = o.step; },
  })],
  // Layer scope with aux words: counts observations above the mean in aux, scores by that count.
  ['custom hits (attention, scope layer, 2 aux words)', () => ({
    name: 'hits', input: 'attention', scope: 'layer', auxWords: 2, gqa: 'mean',
    onAppend(t) { t.scores[t.index] = 0; t.aux[t.index * 2 + 1] = t.position; },
    onObserve(o) {
      for (let j = 0; j < o.length; j++) {
        if (o.probs[j]! * o.length >= 1) o.aux[j * 2] = o.aux[j * 2]! + 1;
        o.scores[j] = o.aux[j * 2]! + o.aux[j * 2 + 1]! / 1e6;
      }
    },
  })],
  // Reads the key as stored: the L1 norm, largest kept.
  ['custom l1 (keys)', () => ({
    name: 'l1', input: 'keys', scope: 'head', auxWords: 0, gqa: 'mean',
    onAppend(t) { let s = 0; for (const x of t.key) s += Math.abs(x); t.scores[t.index] = s; },
    onObserve() {},
  })],
];

const POLICIES: readonly [string, () => BudgetPolicy][] = [
  ['fixedBudget({ tokens: 10, sinks: 2, recent: 3, drop: 2 })', () => fixedBudget({ tokens: 10, sinks: 2, recent: 3, drop: 2 })],
  ['fixedBudget({ tokens: 6, recent: 0 })', () => fixedBudget({ tokens: 6, recent: 0 })],
  ['ratioBudget({ ratio: 0.5, maxTokens: 24, sinks: 1, recent: 2 })', () => ratioBudget({ ratio: 0.5, maxTokens: 24, sinks: 1, recent: 2 })],
  ['fullCache({ maxTokens: 12 })', () => fullCache({ maxTokens: 12 })],
  ['snapKV({ tokens: 8, window: 3, sinks: 1, chunk: 4 })', () => snapKV({ tokens: 8, window: 3, sinks: 1, chunk: 4 })],
  ['pyramidKV({ tokens: 9, window: 2, chunk: 3, beta: 4 })', () => pyramidKV({ tokens: 9, window: 2, chunk: 3, beta: 4 })],
  ['adaKV({ tokens: 7, window: 2, chunk: 5, floor: 0.5 })', () => adaKV({ tokens: 7, window: 2, chunk: 5, floor: 0.5 })],
];

for (const [title, factory] of [...TRACKERS, ...CUSTOM]) runConformance(`tracker ${title}`, trackerConformance(factory, options), { describe, it });
for (const [title, factory] of POLICIES) runConformance(`policy ${title}`, policyConformance(factory, options), { describe, it });
