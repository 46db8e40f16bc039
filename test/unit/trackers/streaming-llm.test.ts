import { describe, expect, it } from 'vitest';
import { KvErrorCode } from '../../../src/core/errors.js';
import { TrackerKind, streamingLLM } from '../../../src/trackers/index.js';
import { expectKvError, setup } from '../helpers.js';

describe('streamingLLM', () => {
  it('is a position tracker that needs no attention', () => {
    const t = streamingLLM();
    expect(t).toMatchObject({ name: 'streamingLLM', input: 'none', scope: 'head', auxWords: 0 });
    expect(t.kernel).toEqual({ kind: TrackerKind.Position, window: 0, seed: 0 });
    expectKvError(() => streamingLLM({ sinks: 4 } as never), KvErrorCode.Argument, 'sinks');
  });

  it('scores by position, so with 4 sinks the oldest non-sink goes', () => {
    const t = streamingLLM();
    const { backend, store } = setup({ headDim: 1, capacity: 8 });
    backend.append(store, 0, new Float32Array(8), new Float32Array(8), 8, 0, t);
    expect(Array.from(store.scores)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    backend.evict(store, 0, 2, 4, 0, 'head');
    expect(Array.from(store.positions.subarray(0, 6))).toEqual([0, 1, 2, 3, 6, 7]);
  });

  it('keeps the order of positions past 2^24, where f32 scores tie', () => {
    const t = streamingLLM();
    const { backend, store } = setup({ headDim: 1, capacity: 3 });
    backend.append(store, 0, new Float32Array(3), new Float32Array(3), 3, 2 ** 24 + 4, t);
    expect(store.scores[0]).toBe(store.scores[1]); // 2^24 + 5 rounds (to even) onto 2^24 + 4
    backend.evict(store, 0, 1, 0, 0, 'head');
    expect(Array.from(store.positions.subarray(0, 2))).toEqual([2 ** 24 + 5, 2 ** 24 + 6]);
  });
});
