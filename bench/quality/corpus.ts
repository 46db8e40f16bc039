/**
 * The evaluation text: read, line endings normalised, tokenized whole, cut into windows.
 * @module
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { loadTokenizer } from '../../examples/llama/tokenizer.js';

/** How line endings are read: `lf` turns every CRLF into LF before tokenizing; `keep` leaves the bytes. */
export type LineEndings = 'lf' | 'keep';

/** The token windows of one text under one model's tokenizer. */
export interface Corpus {
  /** sha256 of the file as read (before any normalisation). */
  readonly sha256: string;
  readonly bytes: number;
  /** CRLF pairs found in the file (all turned into LF under `lineEndings: 'lf'`). */
  readonly crlf: number;
  readonly lineEndings: LineEndings;
  /** Length of the whole token stream, BOS included. */
  readonly tokens: number;
  /** The BOS id at the start of the stream. */
  readonly bos: number | undefined;
  /** Windows the stream holds (`floor((tokens - 1) / window)`). */
  readonly available: number;
  /** The first `count` windows: `window + 1` ids each (inputs and shifted targets). */
  readonly windows: number[][];
}

/**
 * Tokenizes `file` whole with `modelDir`'s tokenizer and cuts the first `count` windows of `window`
 * predictions: window `w` is `ids[w * window .. w * window + window]` (the last id of a window is the
 * first input of the next; every token after BOS is predicted exactly once). The stream is the
 * tokenizer's own encoding with its special tokens (stories260K adds `<s>`); when it does not start
 * with the model's BOS (ref-12m: `<|endoftext|>` = 0 is never added), BOS is put first.
 * @example
 * ```ts
 * const corpus = loadCorpus('../shared/models/ref-12m', '../shared/data/wikitext2-test.txt', 2048, 16, 0, 'lf');
 * ```
 */
export function loadCorpus(modelDir: string, file: string, window: number, count: number, bos: number | undefined, lineEndings: LineEndings): Corpus {
  const raw = readFileSync(file);
  const sha256 = createHash('sha256').update(raw).digest('hex');
  const original = raw.toString('utf8');
  const crlf = original.split('\r\n').length - 1;
  const text = lineEndings === 'lf' ? original.replaceAll('\r\n', '\n') : original;
  let ids = loadTokenizer(modelDir).encode(text, true);
  if (bos !== undefined && ids[0] !== bos) ids = [bos, ...ids];
  const available = Math.floor((ids.length - 1) / window);
  if (count > available) throw new RangeError(`${file} holds ${available} windows of ${window} tokens, ${count} asked for`);
  const windows = Array.from({ length: count }, (_, w) => ids.slice(w * window, w * window + window + 1));
  return { sha256, bytes: raw.length, crlf, lineEndings, tokens: ids.length, bos, available, windows };
}
