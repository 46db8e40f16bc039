/**
 * Every built-in tracker and policy through the shared conformance suite of `scissorhands/testing`,
 * exactly as a user runs it on their own, on every available backend.
 */
import { describe, it } from 'vitest';
import {
  type BudgetPolicy, fixedBudget, fullCache, h2o, keyNorm, random, ratioBudget, scissorhands, streamingLLM, tova,
  type ImportanceTracker,
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
];

const POLICIES: readonly [string, () => BudgetPolicy][] = [
  ['fixedBudget({ tokens: 10, sinks: 2, recent: 3, drop: 2 })', () => fixedBudget({ tokens: 10, sinks: 2, recent: 3, drop: 2 })],
  ['fixedBudget({ tokens: 6, recent: 0 })', () => fixedBudget({ tokens: 6, recent: 0 })],
  ['ratioBudget({ ratio: 0.5, maxTokens: 24, sinks: 1, recent: 2 })', () => ratioBudget({ ratio: 0.5, maxTokens: 24, sinks: 1, recent: 2 })],
  ['fullCache({ maxTokens: 12 })', () => fullCache({ maxTokens: 12 })],
];

for (const [title, factory] of TRACKERS) runConformance(`tracker ${title}`, trackerConformance(factory, options), { describe, it });
for (const [title, factory] of POLICIES) runConformance(`policy ${title}`, policyConformance(factory, options), { describe, it });
