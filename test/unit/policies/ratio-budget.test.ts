import { describe, expect, it } from 'vitest';
import { KvErrorCode } from '../../../src/core/errors.js';
import { ratioBudget } from '../../../src/policies/index.js';
import { expectKvError } from '../helpers.js';

const geometry = { layers: 1, queryHeads: 1, kvHeads: 1, headDim: 4 };

describe('ratioBudget', () => {
  it('keeps ceil(ratio * seen), at least minTokens, at most the capacity', () => {
    const p = ratioBudget({ ratio: 0.25, maxTokens: 1000, sinks: 2, recent: 6 });
    expect(p).toMatchObject({ name: 'ratioBudget', ratio: 0.25, maxTokens: 1000, minTokens: 8, sinks: 2, recent: 6, drop: 1 });
    expect(p.capacity(0, geometry)).toBe(250);
    expect([p.budget(1), p.budget(32), p.budget(33), p.budget(36), p.budget(37), p.budget(1000), p.budget(5000)])
      .toEqual([8, 8, 9, 9, 10, 250, 250]);
  });

  it('does not let binary rounding add a token: 0.07 of 100 is 7', () => {
    expect(0.07 * 100).toBeGreaterThan(7);
    const p = ratioBudget({ ratio: 0.07, maxTokens: 100, recent: 1 });
    expect(p.capacity(0, geometry)).toBe(7);
    const q = ratioBudget({ ratio: 0.07, maxTokens: 200, recent: 1 });
    expect([q.budget(100), q.budget(101)]).toEqual([7, 8]);
    expect(p.budget(100)).toBe(7);
  });

  it('evicts against the budget after the incoming tokens', () => {
    const p = ratioBudget({ ratio: 0.5, maxTokens: 100, recent: 2, drop: 3 });
    // seen 40 + 1 incoming: budget 21.
    expect(p.evictions({ layer: 0, length: 20, incoming: 1, seen: 40 })).toBe(0);
    expect(p.evictions({ layer: 0, length: 21, incoming: 1, seen: 40 })).toBe(3);
    expect(p.evictions({ layer: 0, length: 30, incoming: 1, seen: 40 })).toBe(10);
  });

  it('lets a chunk larger than the current budget in, and catches up afterwards', () => {
    const p = ratioBudget({ ratio: 0.5, maxTokens: 1000, recent: 4 });
    expect(p.evictions({ layer: 0, length: 0, incoming: 400, seen: 0 })).toBe(0); // budget 200, nothing to drop yet
    expect(p.evictions({ layer: 0, length: 400, incoming: 1, seen: 400 })).toBe(200); // budget 201
  });

  it('rejects bad options with the right code and argument', () => {
    for (const ratio of [0, -0.5, 1.01, NaN, '0.5']) {
      expectKvError(() => ratioBudget({ ratio: ratio as number, maxTokens: 10 }), KvErrorCode.Argument, 'ratio');
    }
    expect(ratioBudget({ ratio: 1, maxTokens: 10 }).capacity(0, geometry)).toBe(10);
    expectKvError(() => ratioBudget({ ratio: 0.5 } as never), KvErrorCode.Argument, 'maxTokens');
    expectKvError(() => ratioBudget({ ratio: 0.5, maxTokens: 10, minTokens: -1 }), KvErrorCode.Argument, 'minTokens');
    expectKvError(() => ratioBudget({ ratio: 0.5, maxTokens: 100, sinks: 4, minTokens: 13 }), KvErrorCode.Budget, 'minTokens');
    expectKvError(() => ratioBudget({ ratio: 0.5, maxTokens: 100, recent: 0, minTokens: 0 }), KvErrorCode.Budget, 'minTokens');
    expect(ratioBudget({ ratio: 0.5, maxTokens: 100, recent: 0 }).minTokens).toBe(1);
    // Capacity 50 - 10 recent + 1 = 41 droppable at most.
    expect(ratioBudget({ ratio: 0.5, maxTokens: 100, drop: 41 }).drop).toBe(41);
    expectKvError(() => ratioBudget({ ratio: 0.5, maxTokens: 100, drop: 42 }), KvErrorCode.Budget, 'drop');
    expectKvError(() => ratioBudget({ ratio: 0.5, maxTokens: 100, ratios: 1 } as never), KvErrorCode.Argument, 'ratios');
  });
});
