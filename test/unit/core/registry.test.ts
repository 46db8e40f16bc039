import { describe, expect, it } from 'vitest';
import { KvErrorCode } from '../../../src/core/errors.js';
import { choiceOption, intOption, readOptions } from '../../../src/core/options.js';
import { Registry } from '../../../src/core/registry.js';
import { policies } from '../../../src/policies/index.js';
import { h2o, scissorhands, trackers } from '../../../src/trackers/index.js';
import { expectKvError } from '../helpers.js';

interface Shape { readonly kind: string; readonly size: number }
const square = (o: { side?: number } = {}): Shape => ({ kind: 'square', size: (o.side ?? 1) ** 2 });

describe('Registry', () => {
  it('holds its built-ins, typed by name, and creates by name', () => {
    const shapes = new Registry<Shape, { square: typeof square }>('shape', { square });
    expect(shapes.names()).toEqual(['square']);
    expect(shapes.get('square')({ side: 3 }).size).toBe(9);
    expect(shapes.create('square', { side: 2 })).toEqual({ kind: 'square', size: 4 });
    expect(shapes.has('circle')).toBe(false);
  });

  it('registers new factories, and rejects taken or empty names and non-functions', () => {
    const shapes = new Registry<Shape, { square: typeof square }>('shape', { square });
    shapes.register('dot', () => ({ kind: 'dot', size: 0 }));
    expect(shapes.create('dot').kind).toBe('dot');
    expectKvError(() => shapes.register('dot', () => ({ kind: 'x', size: 0 })), KvErrorCode.Argument, 'name');
    expectKvError(() => shapes.register('', () => ({ kind: 'x', size: 0 })), KvErrorCode.Argument, 'name');
    expectKvError(() => shapes.register('bad', 42 as never), KvErrorCode.Argument, 'factory');
  });

  it('names the known entries when a name is unknown', () => {
    const shapes = new Registry<Shape, { square: typeof square }>('shape', { square });
    expectKvError(() => shapes.get('circle'), KvErrorCode.Argument, 'name');
    expect(() => shapes.create('circle')).toThrow(/no shape named 'circle'; known: square/);
  });
});

describe('tracker and policy registries', () => {
  it('list the built-ins under the names of what they make', () => {
    expect(trackers.names()).toEqual(['scissorhands', 'h2o', 'tova', 'streamingLLM', 'keyNorm', 'random', 'snapKVScores']);
    for (const name of trackers.names()) expect(trackers.create(name).name).toBe(name);
    expect(policies.names()).toEqual(['fixedBudget', 'ratioBudget', 'fullCache', 'byteBudget', 'layerBudget', 'snapKV', 'pyramidKV', 'adaKV']);
    expect(policies.create('adaKV', { tokens: 64 }).name).toBe('adaKV');
    expect(policies.create('fixedBudget', { tokens: 64 }).name).toBe('fixedBudget');
    expect(policies.create('ratioBudget', { ratio: 0.5, maxTokens: 64 }).name).toBe('ratioBudget');
    expect(policies.create('fullCache', { maxTokens: 64 }).name).toBe('fullCache');
  });

  it('return the factories themselves', () => {
    expect(trackers.get('h2o')).toBe(h2o);
    expect(trackers.get('scissorhands')({ window: 64 }).auxWords).toBe(2);
    expect(scissorhands().kernel.window).toBe(400);
  });

  it('pass options through, so bad options fail in the factory', () => {
    expectKvError(() => trackers.create('scissorhands', { window: 0 }), KvErrorCode.Argument, 'window');
    expectKvError(() => trackers.create('streamingLLM', { sinks: 4 }), KvErrorCode.Argument, 'sinks');
    expectKvError(() => policies.create('fixedBudget'), KvErrorCode.Argument, 'tokens');
  });
});

describe('option helpers', () => {
  it('readOptions accepts undefined and known keys, rejects non-objects and unknown keys', () => {
    expect(readOptions(undefined, ['a'])).toEqual({});
    expect(readOptions({ a: 1 }, ['a'])).toEqual({ a: 1 });
    expectKvError(() => readOptions(3, ['a']), KvErrorCode.Argument, 'options');
    expectKvError(() => readOptions(null, ['a']), KvErrorCode.Argument, 'options');
    expectKvError(() => readOptions([1], ['a']), KvErrorCode.Argument, 'options');
    expectKvError(() => readOptions({ a: 1, windw: 2 }, ['a']), KvErrorCode.Argument, 'windw');
  });

  it('intOption and choiceOption fall back when absent and name the option when wrong', () => {
    expect(intOption({}, 'n', 7, 0)).toBe(7);
    expect(intOption({ n: undefined }, 'n', 7, 0)).toBe(7);
    expect(intOption({ n: 3 }, 'n', 7, 0)).toBe(3);
    expectKvError(() => intOption({ n: 1.5 }, 'n', 7, 0), KvErrorCode.Argument, 'n');
    expectKvError(() => intOption({ n: -1 }, 'n', 7, 0), KvErrorCode.Argument, 'n');
    expectKvError(() => intOption({ n: '3' }, 'n', 7, 0), KvErrorCode.Argument, 'n');
    expect(choiceOption({}, 'g', 'mean', ['mean', 'max'])).toBe('mean');
    expect(choiceOption({ g: 'max' }, 'g', 'mean', ['mean', 'max'])).toBe('max');
    expectKvError(() => choiceOption({ g: 'sum' }, 'g', 'mean', ['mean', 'max']), KvErrorCode.Argument, 'g');
  });
});
