import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadTokenizer } from '../../examples/llama/tokenizer.js';
import { STORIES } from './paths.js';

const cases = (JSON.parse(readFileSync(`${STORIES}/tokenizer_test_cases.json`, 'utf8')) as { cases: { text: string; ids: number[] }[] }).cases;

describe('stories260K tokenizer', () => {
  const tok = loadTokenizer(STORIES);

  it('has the 24 test cases', () => expect(cases).toHaveLength(24));

  it.each(cases.map((c, i) => [i, c] as const))('case %i encodes to the llama2.c ids and decodes back', (_, c) => {
    expect(tok.encode(c.text)).toEqual(c.ids);
    expect(tok.decode(c.ids)).toBe(c.text);
  });

  it('leaves out <s> when asked', () => {
    expect(tok.encode('Once upon a time', false)).toEqual(tok.encode('Once upon a time').slice(1));
  });
});
