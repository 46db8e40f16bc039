import { describe, expect, it } from 'vitest';
import { mean, pairedDifference, perplexity, studentTCdf, studentTQuantile } from '../../bench/quality/stats.js';
import { niceTicks, plotSvg } from '../../bench/quality/plot.js';
import { resolveValue } from '../../bench/quality/methods.js';

describe('quality statistics', () => {
  it('Student t quantiles match tables', () => {
    // Two-sided 95% critical values (any statistics table).
    expect(studentTQuantile(0.975, 1)).toBeCloseTo(12.7062, 3);
    expect(studentTQuantile(0.975, 15)).toBeCloseTo(2.13145, 4);
    expect(studentTQuantile(0.975, 29)).toBeCloseTo(2.04523, 4);
    expect(studentTQuantile(0.975, 1e6)).toBeCloseTo(1.95996, 4);
    expect(studentTCdf(0, 7)).toBeCloseTo(0.5, 12);
  });

  it('perplexity is exp of the mean window NLL; the paired difference is the perplexity ratio', () => {
    const a = [4.7, 4.9, 5.2, 5.0];
    const b = [4.6, 4.85, 5.1, 4.98];
    expect(perplexity(a)).toBeCloseTo(Math.exp(mean(a)), 12);
    const d = pairedDifference(a, b);
    expect(d.n).toBe(4);
    expect(1 + d.pct / 100).toBeCloseTo(perplexity(a) / perplexity(b), 12);
    // t-interval by hand: differences 0.1, 0.05, 0.1, 0.02.
    const diffs = [0.1, 0.05, 0.1, 0.02];
    const m = mean(diffs);
    const sd = Math.sqrt(diffs.reduce((s, x) => s + (x - m) ** 2, 0) / 3);
    expect(d.meanNll).toBeCloseTo(m, 12);
    expect(d.hiNll - d.meanNll).toBeCloseTo((3.182446 * sd) / 2, 5);
    expect(d.loPct).toBeLessThan(d.pct);
    expect(d.hiPct).toBeGreaterThan(d.pct);
    expect(Number.isNaN(pairedDifference([1], [2]).loPct)).toBe(true);
  });

  it('budget-relative options resolve with floor', () => {
    expect(resolveValue('B/2', 409, 2048)).toBe(204);
    expect(resolveValue('B/10', 682, 2048)).toBe(68);
    expect(resolveValue('0.75B', 409, 2048)).toBe(306);
    expect(resolveValue('W', 409, 2048)).toBe(2048);
    expect(resolveValue(4, 409, 2048)).toBe(4);
    expect(resolveValue('max', 409, 2048)).toBe('max');
  });

  it('draws one polyline and one legend entry per series, with labelled ticks', () => {
    expect(niceTicks(115, 142, 6)).toEqual([115, 120, 125, 130, 135, 140]);
    const svg = plotSvg({
      title: 't',
      series: [
        { label: 'a', points: [{ x: 1, y: 100 }, { x: 2, y: 101 }, { x: 4, y: 105 }] },
        { label: 'b', points: [{ x: 1, y: 100 }, { x: 2, y: 102 }, { x: 4, y: 900 }], highlight: true },
        { label: 'c', points: [{ x: 1, y: 100 }, { x: 2, y: 101.5 }, { x: 4, y: 104 }] },
      ],
      reference: 100,
    });
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.match(/<polyline/g)).toHaveLength(3);
    expect(svg).toContain('>a</text>');
    expect(svg).toContain('4x</text>');
    expect(svg).toContain('>900</text>'); // the off-scale point is labelled on the top edge
  });
});
