import { describe, expect, it } from 'vitest';
import { TrackerKind, trackers, type ImportanceTracker } from '../../../src/trackers/index.js';
import { randomF32 } from '../helpers.js';

// Every registered tracker goes through the same checks (kvpress' shared press test, tfjs' one suite
// for every backend): the contract's shape, and hooks that touch only the state they own.
const CAPACITY = 8;

function state(tracker: ImportanceTracker, seed: number) {
  const scores = randomF32(CAPACITY, seed);
  const aux = new Uint32Array(CAPACITY * tracker.auxWords).map((_, i) => (i * 2654435761) >>> 0);
  return { scores, aux };
}

describe.each(trackers.names())('built-in tracker %s', (name) => {
  const tracker = trackers.create(name);

  it('describes itself fully and cannot be changed', () => {
    expect(tracker.name).toBe(name);
    expect(['attention', 'keys', 'none']).toContain(tracker.input);
    expect(['head', 'layer']).toContain(tracker.scope);
    expect(['mean', 'max']).toContain(tracker.gqa);
    expect(Number.isInteger(tracker.auxWords) && tracker.auxWords >= 0).toBe(true);
    expect(tracker.kernel).toBeDefined();
    expect(tracker.kernel!.kind).not.toBe(TrackerKind.Custom);
    expect(Object.isFrozen(tracker) && Object.isFrozen(tracker.kernel)).toBe(true);
  });

  it('initialises only the appended token', () => {
    const { scores, aux } = state(tracker, 1);
    const w = tracker.auxWords;
    aux.fill(0, 3 * w, 4 * w); // the backend zeroes the token's words first
    const before = { scores: scores.slice(), aux: aux.slice() };
    tracker.onAppend({ seq: 0, layer: 2, kvHead: 1, index: 3, position: 40, key: randomF32(4, 2), scores, aux });
    scores.forEach((s, i) => i !== 3 && expect(s).toBe(before.scores[i]));
    aux.forEach((word, i) => (i < 3 * w || i >= 4 * w) && expect(word).toBe(before.aux[i]));
    expect(Number.isNaN(scores[3])).toBe(false);
  });

  it('observes only the attended tokens, deterministically', () => {
    const run = () => {
      const { scores, aux } = state(tracker, 3);
      const probs = Float32Array.from([0.05, 0.4, 0.15, 0.3, 0.1]);
      tracker.onObserve({ seq: 0, layer: 0, kvHead: 0, length: 5, step: 17, probs, scores, aux });
      return { scores, aux };
    };
    const first = run();
    const untouched = state(tracker, 3);
    expect(Array.from(first.scores.subarray(5))).toEqual(Array.from(untouched.scores.subarray(5)));
    expect(Array.from(first.aux.subarray(5 * tracker.auxWords))).toEqual(Array.from(untouched.aux.subarray(5 * tracker.auxWords)));
    const second = run();
    expect(Array.from(second.scores)).toEqual(Array.from(first.scores));
    expect(Array.from(second.aux)).toEqual(Array.from(first.aux));
  });
});
