import { describe, expect, it } from 'vitest';
import { KvErrorCode } from '../../../src/core/errors.js';
import { fullCache } from '../../../src/policies/index.js';
import { expectKvError } from '../helpers.js';

describe('fullCache', () => {
  it('reserves maxTokens, protects nothing and never evicts', () => {
    const p = fullCache({ maxTokens: 2048 });
    expect(p).toMatchObject({ name: 'fullCache', maxTokens: 2048, sinks: 0, recent: 0 });
    expect(p.capacity(0, { layers: 1, queryHeads: 1, kvHeads: 1, headDim: 4 })).toBe(2048);
    expect(p.evictions({ layer: 0, length: 2048, incoming: 1, seen: 2048 })).toBe(0);
  });

  it('needs a positive integer maxTokens', () => {
    expectKvError(() => fullCache({ maxTokens: 0 }), KvErrorCode.Argument, 'maxTokens');
    expectKvError(() => fullCache({} as never), KvErrorCode.Argument, 'maxTokens');
    expectKvError(() => fullCache({ maxTokens: 8, tokens: 8 } as never), KvErrorCode.Argument, 'tokens');
  });
});
