/**
 * The subset of a Hugging Face `LlamaConfig` (`config.json`) the engine needs, checked.
 * @module
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Model hyper-parameters, with HF's defaults filled in. */
export interface LlamaConfig {
  readonly vocabSize: number;
  readonly hidden: number;
  readonly intermediate: number;
  readonly layers: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly ropeTheta: number;
  readonly eps: number;
  /** Output projection shares the input embedding (`tie_word_embeddings`, or no `lm_head.weight`). */
  readonly tied: boolean;
  readonly maxPositions: number;
  readonly bos: number | undefined;
  readonly eos: readonly number[];
}

function int(raw: Record<string, unknown>, key: string, fallback?: number): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new Error(`config.json: ${key} must be a positive integer, got ${String(v)}`);
  return v;
}

function ids(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

/**
 * Parses a `config.json` object. Throws on what this engine does not implement (biases, RoPE scaling,
 * activations other than SiLU) rather than computing something else.
 * @example
 * ```ts
 * const cfg = parseConfig({ hidden_size: 64, intermediate_size: 172, num_hidden_layers: 5, ... });
 * ```
 */
export function parseConfig(raw: Record<string, unknown>): LlamaConfig {
  const type = raw['model_type'];
  if (type !== undefined && type !== 'llama') throw new Error(`config.json: model_type ${String(type)} is not supported (llama only)`);
  const act = raw['hidden_act'] ?? 'silu';
  if (act !== 'silu') throw new Error(`config.json: hidden_act ${String(act)} is not supported (silu only)`);
  if (raw['attention_bias'] === true || raw['mlp_bias'] === true) throw new Error('config.json: biases are not supported');
  const rope = (raw['rope_parameters'] ?? raw['rope_scaling'] ?? null) as Record<string, unknown> | null;
  const ropeType = rope?.['rope_type'] ?? rope?.['type'] ?? 'default';
  if (ropeType !== 'default') throw new Error(`config.json: rope_type ${String(ropeType)} is not supported (default only)`);
  const ropeTheta = rope?.['rope_theta'] ?? raw['rope_theta'] ?? 10000;
  if (typeof ropeTheta !== 'number') throw new Error('config.json: rope_theta must be a number');
  const hidden = int(raw, 'hidden_size');
  const heads = int(raw, 'num_attention_heads');
  const kvHeads = int(raw, 'num_key_value_heads', heads);
  if (heads % kvHeads !== 0) throw new Error('config.json: num_key_value_heads must divide num_attention_heads');
  const eps = raw['rms_norm_eps'] ?? 1e-6;
  if (typeof eps !== 'number') throw new Error('config.json: rms_norm_eps must be a number');
  const bos = raw['bos_token_id'];
  return {
    vocabSize: int(raw, 'vocab_size'),
    hidden,
    intermediate: int(raw, 'intermediate_size'),
    layers: int(raw, 'num_hidden_layers'),
    heads,
    kvHeads,
    headDim: int(raw, 'head_dim', Math.floor(hidden / heads)),
    ropeTheta,
    eps,
    tied: raw['tie_word_embeddings'] !== false,
    maxPositions: int(raw, 'max_position_embeddings', 2048),
    bos: typeof bos === 'number' ? bos : undefined,
    eos: ids(raw['eos_token_id']),
  };
}

/**
 * Reads and parses `<dir>/config.json`.
 * @example
 * ```ts
 * const cfg = loadConfig('models/stories260K'); // cfg.layers === 5
 * ```
 */
export function loadConfig(dir: string): LlamaConfig {
  return parseConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>);
}
