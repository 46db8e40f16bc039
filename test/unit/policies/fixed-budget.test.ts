import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KvErrorCode } from '../../../src/core/errors.js';
import { evictionCandidates, fixedBudget } from '../../../src/policies/index.js';
import { expectKvError } from '../helpers.js';

const geometry = { layers: 2, queryHeads: 4, kvHeads: 2, headDim: 8 };
const at = (length: number, incoming = 1) => ({ layer: 0, length, incoming, seen: length });

describe('fixedBudget', () => {
  it('has the documented defaults and reserves its budget', () => {
    const p = fixedBudget({ tokens: 64 });
    expect(p).toMatchObject({ name: 'fixedBudget', tokens: 64, sinks: 0, recent: 10, drop: 1 });
    expect(p.capacity(1, geometry)).toBe(64);
    expect(Object.isFrozen(p)).toBe(true);
  });

  it('drops nothing until the budget is exceeded, then the overflow or `drop`, whichever is more', () => {
    const p = fixedBudget({ tokens: 64, drop: 6 });
    expect(p.evictions(at(63))).toBe(0);
    expect(p.evictions(at(64))).toBe(6); // moves between 58 and 64, as Scissorhands' m does
    expect(p.evictions(at(58, 7))).toBe(6);
    expect(p.evictions(at(60, 20))).toBe(16);
    expect(fixedBudget({ tokens: 64 }).evictions(at(64))).toBe(1);
  });

  it('never asks for more than the candidates outside sinks and the recent window', () => {
    const p = fixedBudget({ tokens: 16, sinks: 4, recent: 10, drop: 3 });
    // Full, one incoming: 16 - 4 sinks - 9 kept recent = 3 candidates.
    expect(evictionCandidates(p, { length: 16, incoming: 1 })).toBe(3);
    expect(p.evictions(at(16))).toBe(3);
    // Early: a chunk overflowing a half-empty cache leaves only its own overflow droppable.
    expect(evictionCandidates(p, { length: 3, incoming: 12 })).toBe(0);
    expect(p.evictions(at(6, 12))).toBe(2);
  });

  it('keeps a full cache within its budget by a feasible eviction, for any chunk the cache may append', () => {
    fc.assert(fc.property(
      fc.integer({ min: 0, max: 6 }), fc.integer({ min: 0, max: 12 }), fc.integer({ min: 0, max: 20 }), fc.nat(1000), fc.nat(1000), fc.nat(1000),
      (sinks, recent, extra, a, b, c) => {
        const tokens = sinks + Math.max(recent, 1) + extra;
        const drop = 1 + (a % (extra + 1));
        const p = fixedBudget({ tokens, sinks, recent, drop });
        const length = b % (tokens + 1);
        const incoming = 1 + (c % (tokens - sinks)); // the cache appends at most capacity - sinks at once
        const e = p.evictions(at(length, incoming));
        expect(e).toBeGreaterThanOrEqual(0);
        expect(e).toBeLessThanOrEqual(evictionCandidates(p, { length, incoming }));
        expect(length - e + incoming).toBeLessThanOrEqual(tokens);
        if (length + incoming > tokens) expect(e).toBeGreaterThanOrEqual(Math.min(drop, evictionCandidates(p, { length, incoming })));
        else expect(e).toBe(0);
      },
    ), { numRuns: 500 });
  });

  it('runs the oracle configurations (oracle-eviction.md)', () => {
    expect(fixedBudget({ tokens: 409, recent: 10 }).evictions(at(409))).toBe(1); // scissorhands
    expect(fixedBudget({ tokens: 409, recent: 10, drop: 40 }).evictions(at(409))).toBe(40); // m = B/10
    expect(fixedBudget({ tokens: 409, recent: 204 }).evictions(at(409))).toBe(1); // h2o
    expect(fixedBudget({ tokens: 204, sinks: 4, recent: 1 }).evictions(at(204))).toBe(1); // streaming
  });

  it('rejects bad options with the right code and argument', () => {
    expectKvError(() => fixedBudget(undefined as never), KvErrorCode.Argument, 'tokens');
    expectKvError(() => fixedBudget({ tokens: 0 }), KvErrorCode.Argument, 'tokens');
    expectKvError(() => fixedBudget({ tokens: 10.5 }), KvErrorCode.Argument, 'tokens');
    expectKvError(() => fixedBudget({ tokens: 64, sinks: -1 }), KvErrorCode.Argument, 'sinks');
    expectKvError(() => fixedBudget({ tokens: 64, recent: 2.5 }), KvErrorCode.Argument, 'recent');
    expectKvError(() => fixedBudget({ tokens: 64, drop: 0 }), KvErrorCode.Argument, 'drop');
    expectKvError(() => fixedBudget({ tokens: 64, budget: 3 } as never), KvErrorCode.Argument, 'budget');
    expectKvError(() => fixedBudget({ tokens: 13, sinks: 4, recent: 10 }), KvErrorCode.Budget, 'tokens');
    expectKvError(() => fixedBudget({ tokens: 4, sinks: 4, recent: 0 }), KvErrorCode.Budget, 'tokens');
    expect(fixedBudget({ tokens: 14, sinks: 4, recent: 10 }).tokens).toBe(14);
    expect(fixedBudget({ tokens: 20, sinks: 4, recent: 10, drop: 7 }).drop).toBe(7);
    expectKvError(() => fixedBudget({ tokens: 20, sinks: 4, recent: 10, drop: 8 }), KvErrorCode.Budget, 'drop');
  });
});
