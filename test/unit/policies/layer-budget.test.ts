import { describe, expect, it } from 'vitest';
import { KvErrorCode } from '../../../src/core/errors.js';
import { KVCache, streamingLLM } from '../../../src/index.js';
import { allocateLayerBudgets, fixedBudget, interpolateLoss, layerBudget, policies } from '../../../src/policies/index.js';
import { expectKvError } from '../helpers.js';

const geometry = { layers: 3, queryHeads: 4, kvHeads: 2, headDim: 8 };
const at = (layer: number, length: number, incoming = 1) => ({ layer, length, incoming, seen: length });

describe('layerBudget', () => {
  it('keeps each layer within its own budget, with fixedBudget counts layer by layer', () => {
    const p = layerBudget({ tokens: [16, 64, 32], sinks: 4, recent: 1 });
    expect(p).toMatchObject({ name: 'layerBudget', tokens: [16, 64, 32], total: 112, sinks: 4, recent: 1, drop: 1 });
    expect([0, 1, 2].map((l) => p.capacity(l, geometry))).toEqual([16, 64, 32]);
    for (const [layer, tokens] of [16, 64, 32].entries()) {
      const same = fixedBudget({ tokens, sinks: 4, recent: 1 });
      for (const [length, incoming] of [[tokens - 1, 1], [tokens, 1], [tokens - 3, 5], [2, 9]] as const) {
        expect(p.evictions(at(layer, length, incoming))).toBe(same.evictions(at(layer, length, incoming)));
      }
    }
    expect(Object.isFrozen(p) && Object.isFrozen(p.tokens)).toBe(true);
    expect(policies.create('layerBudget', { tokens: [16, 16, 16] }).name).toBe('layerBudget');
  });

  it('reserves the memory of a fixedBudget with the same total, moved between layers', () => {
    const kept = (policy: ReturnType<typeof fixedBudget> | ReturnType<typeof layerBudget>) => {
      using cache = KVCache.create({ geometry, tracker: streamingLLM(), policy, backend: 'reference' });
      const seq = cache.open();
      const q = new Float32Array(4 * 8).fill(0.1);
      const kv = new Float32Array(2 * 8).fill(0.2);
      for (let t = 0; t < 100; t++) for (let l = 0; l < 3; l++) cache.attend(seq, l, q, kv, kv);
      const s = cache.stats();
      return { perLayer: s.layers.map((l) => l.tokensKept[0]), kept: s.tokensKept, reserved: s.bytesReserved };
    };
    const layered = kept(layerBudget({ tokens: [16, 64, 32], sinks: 4, recent: 1 }));
    const uniform = kept(fixedBudget({ tokens: 112 / 3 | 0, sinks: 4, recent: 1 }));
    expect(layered.perLayer).toEqual([16, 64, 32]);
    expect(layered.kept).toBe(2 * 112);
    expect(uniform.kept).toBe(2 * 3 * 37);
  });

  it('rejects bad options with the right code and argument', () => {
    expectKvError(() => layerBudget(undefined as never), KvErrorCode.Argument, 'tokens');
    expectKvError(() => layerBudget({ tokens: [] }), KvErrorCode.Argument, 'tokens');
    expectKvError(() => layerBudget({ tokens: [8, 0] }), KvErrorCode.Argument, 'tokens[1]');
    expectKvError(() => layerBudget({ tokens: [8, 7.5] }), KvErrorCode.Argument, 'tokens[1]');
    expectKvError(() => layerBudget({ tokens: [8], sinks: -1 }), KvErrorCode.Argument, 'sinks');
    expectKvError(() => layerBudget({ tokens: [8], budget: 3 } as never), KvErrorCode.Argument, 'budget');
    expectKvError(() => layerBudget({ tokens: [64, 13], sinks: 4, recent: 10 }), KvErrorCode.Budget, 'tokens');
    expectKvError(() => layerBudget({ tokens: [64, 20], sinks: 4, recent: 10, drop: 8 }), KvErrorCode.Budget, 'drop');
    expect(layerBudget({ tokens: [64, 20], sinks: 4, recent: 10, drop: 7 }).drop).toBe(7);
    expectKvError(() => layerBudget({ tokens: [8, 8] }).capacity(0, geometry), KvErrorCode.Budget, 'tokens');
  });
});

describe('allocateLayerBudgets', () => {
  it('interpolates losses linearly in log(tokens), never rising with more tokens', () => {
    const curve = [{ tokens: 64, loss: 0.2 }, { tokens: 256, loss: 0 }];
    expect(interpolateLoss(curve, 128)).toBeCloseTo(0.1, 12);
    expect(interpolateLoss(curve, 32)).toBe(0.2);
    expect(interpolateLoss(curve, 4096)).toBe(0);
    // A noisy point above a smaller budget's loss is capped by it: more tokens never cost more.
    expect(interpolateLoss([{ tokens: 64, loss: 0.1 }, { tokens: 128, loss: 0.3 }, { tokens: 256, loss: 0 }], 64)).toBe(0.3);
  });

  it('gives the tokens to the layers that lose most without them, within min and max', () => {
    const curves = [
      [{ tokens: 64, loss: 0.3 }, { tokens: 256, loss: 0.1 }, { tokens: 1024, loss: 0 }],
      [{ tokens: 64, loss: 0.001 }, { tokens: 1024, loss: 0 }],
    ];
    expect(allocateLayerBudgets({ curves, budget: 256 })).toEqual([448, 64]);
    expect(allocateLayerBudgets({ curves, budget: 256, min: 128 })).toEqual([384, 128]);
    expect(allocateLayerBudgets({ curves, budget: 1024 })).toEqual([1024, 1024]);
    // Equal curves share equally.
    const same = [curves[0]!, curves[0]!, curves[0]!];
    expect(allocateLayerBudgets({ curves: same, budget: 200 })).toEqual([200, 200, 200]);
  });

  it('finds the exact optimum (checked by brute force on a small grid)', () => {
    const curves = [
      [{ tokens: 4, loss: 1 }, { tokens: 8, loss: 0.2 }, { tokens: 16, loss: 0 }],
      [{ tokens: 4, loss: 0.5 }, { tokens: 16, loss: 0.1 }],
      [{ tokens: 4, loss: 0.9 }, { tokens: 10, loss: 0.05 }, { tokens: 16, loss: 0 }],
    ];
    const budget = 9;
    const got = allocateLayerBudgets({ curves, budget });
    const loss = (b: number[]) => b.reduce((s, x, l) => s + interpolateLoss(curves[l]!, x), 0);
    let bestLoss = Infinity;
    for (let a = 4; a <= 16; a++) for (let b = 4; b <= 16; b++) for (let c = 4; c <= 16; c++) {
      if (a + b + c <= 3 * budget) bestLoss = Math.min(bestLoss, loss([a, b, c]));
    }
    expect(got.reduce((s, x) => s + x, 0)).toBeLessThanOrEqual(27);
    expect(loss(got)).toBeCloseTo(bestLoss, 12);
  });

  it('rejects malformed curves and impossible totals', () => {
    expectKvError(() => allocateLayerBudgets({ curves: [], budget: 8 }), KvErrorCode.Argument, 'curves');
    expectKvError(() => allocateLayerBudgets({ curves: [[]], budget: 8 }), KvErrorCode.Argument, 'curves');
    expectKvError(() => allocateLayerBudgets({ curves: [[{ tokens: 0, loss: 1 }]], budget: 8 }), KvErrorCode.Argument, 'curves');
    expectKvError(() => allocateLayerBudgets({ curves: [[{ tokens: 4, loss: NaN }]], budget: 8 }), KvErrorCode.Argument, 'curves');
    expectKvError(() => allocateLayerBudgets({ curves: [[{ tokens: 16, loss: 0 }]], budget: 8 }), KvErrorCode.Budget, 'budget');
    expectKvError(() => allocateLayerBudgets({ curves: [[{ tokens: 4, loss: 0 }]], budget: 8, min: 6, max: 5 }), KvErrorCode.Argument, 'max');
  });
});
