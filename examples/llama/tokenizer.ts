/**
 * The tokenizer: a thin wrapper over `@huggingface/tokenizers` (pure JavaScript, no native code, reads
 * `tokenizer.json` + `tokenizer_config.json` offline). It reproduces the Rust `tokenizers` library on both
 * bundled models (byte-fallback BPE for stories260K, byte-level BPE for ref-12m).
 * @module
 */
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';

/** Encoding and decoding for one model. */
export interface TextCodec {
  /** Token ids of `text`; with `special` (default true) the post-processor's tokens (e.g. `<s>`) too. */
  encode(text: string, special?: boolean): number[];
  /** Text of `ids`, special tokens left out. */
  decode(ids: readonly number[]): string;
}

/**
 * Loads the tokenizer of a Hugging Face model folder.
 * @example
 * ```ts
 * const tok = loadTokenizer('models/stories260K');
 * tok.encode('Once upon a time'); // [1, 403, 407, 261, 378]
 * ```
 */
export function loadTokenizer(dir: string): TextCodec {
  const json = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as object;
  const cfgPath = join(dir, 'tokenizer_config.json');
  const config = existsSync(cfgPath) ? (JSON.parse(readFileSync(cfgPath, 'utf8')) as object) : {};
  const tokenizer = new Tokenizer(json, config);
  return {
    encode: (text, special = true) => tokenizer.encode(text, { add_special_tokens: special }).ids,
    decode: (ids) => tokenizer.decode([...ids], { skip_special_tokens: true }),
  };
}
