/**
 * The {@link operationsArb} arbitrary.
 * @module
 */
import * as fc from 'fast-check';
import type { KVCache } from '../cache/kv-cache.js';
import { ATTENTION_ROW_KINDS } from './attention-row.js';
import {
  AppendCommand, AttendCommand, type CacheCommand, CloseCommand, ClosedSequenceCommand, type DataSpec, DecodeStepCommand,
  ObserveCommand, OpenCommand, PrefillCommand, ResetCommand,
} from './commands.js';
import { type CacheConfig, configLayout } from './config.js';
import type { DataKind } from './data.js';
import type { KVCacheModel } from './model.js';

/**
 * The kinds of commands {@link operationsArb} draws.
 * @example
 * ```ts
 * const weights: Partial<Record<OperationName, number>> = { prefill: 0, observe: 5 };
 * ```
 */
export type OperationName = 'open' | 'close' | 'reset' | 'attend' | 'decodeStep' | 'prefill' | 'append' | 'observe' | 'useClosed';

/**
 * Default relative frequencies of each command.
 * @example
 * ```ts
 * operationsArb(config, { weights: { ...DEFAULT_OPERATION_WEIGHTS, reset: 0 } });
 * ```
 */
export const DEFAULT_OPERATION_WEIGHTS: Readonly<Record<OperationName, number>> = {
  open: 2, close: 1, reset: 1, attend: 8, decodeStep: 3, prefill: 3, append: 3, observe: 3, useClosed: 1,
};

/**
 * Constraints of {@link operationsArb}.
 * @example
 * ```ts
 * const c: OperationsConstraints = { maxCommands: 60, weights: { observe: 0 } };
 * ```
 */
export interface OperationsConstraints {
  /** Most commands per run; default 30. */
  readonly maxCommands?: number;
  /** Most rows of a prefill or append; default the largest capacity plus 3 (so blocks overflow), at most 40. */
  readonly maxRows?: number;
  /** Relative frequencies, merged over {@link DEFAULT_OPERATION_WEIGHTS}; 0 leaves a command out. */
  readonly weights?: Partial<Record<OperationName, number>>;
  /** Data kinds to draw from; default all, `normal` most often. */
  readonly dataKinds?: readonly DataKind[];
}

/**
 * Sequences of commands for model-based tests of a {@link KVCache} built from `config`: open, close,
 * reset, decode steps of one layer or of all layers, prefill blocks (longer than the budget, so they
 * go in chunks), appends, observations of engine-computed probabilities (padded rows, all row shapes
 * of {@link attentionRowArb}), and calls on closed sequences. Data comes from per-command seeds, in
 * f32 or as 16-bit bits, sometimes at byte offsets and with preallocated outputs.
 *
 * @example
 * ```ts
 * import fc from 'fast-check';
 * import { cacheConfigArb, operationsArb, KVCacheModel, createCache } from 'scissorhands/testing';
 * fc.assert(fc.property(cacheConfigArb().chain((c) => fc.tuple(fc.constant(c), operationsArb(c))), ([config, commands]) => {
 *   using model = new KVCacheModel(config, { oracle: false });
 *   using cache = createCache(config, 'reference');
 *   fc.modelRun(() => ({ model, real: cache }), commands);
 * }));
 * ```
 */
export function operationsArb(config: CacheConfig, constraints: OperationsConstraints = {}): fc.Arbitrary<Iterable<fc.Command<KVCacheModel, KVCache>>> {
  const { layers } = config.geometry;
  const policy = config.policy.create();
  let largest = 1;
  const layout = configLayout(config);
  for (let layer = 0; layer < layers; layer++) largest = Math.max(largest, policy.capacity(layer, config.geometry, layout));
  const maxRows = constraints.maxRows ?? Math.min(40, largest + 3);
  const weights = { ...DEFAULT_OPERATION_WEIGHTS, ...constraints.weights };
  const kinds = constraints.dataKinds ?? ['normal', 'normal', 'normal', 'large', 'repeat', 'zero', 'tiny'];
  const pick = fc.nat({ max: 7 });
  const layer = fc.integer({ min: 0, max: layers - 1 });
  const rows = fc.integer({ min: 1, max: maxRows });
  const data: fc.Arbitrary<DataSpec> = fc.record({
    seed: fc.integer({ min: 0, max: 0xffffffff }),
    kind: fc.constantFrom(...kinds),
    bits: fc.boolean(),
    offset: fc.boolean(),
    out: fc.boolean(),
  });
  const byName: Record<OperationName, fc.Arbitrary<CacheCommand>> = {
    open: fc.constant(new OpenCommand()),
    close: pick.map((p) => new CloseCommand(p)),
    reset: pick.map((p) => new ResetCommand(p)),
    attend: fc.tuple(pick, layer, data).map(([p, l, d]) => new AttendCommand(p, l, d)),
    decodeStep: fc.tuple(pick, data).map(([p, d]) => new DecodeStepCommand(p, d)),
    prefill: fc.tuple(pick, layer, rows, data).map(([p, l, n, d]) => new PrefillCommand(p, l, n, d)),
    append: fc.tuple(pick, layer, rows, data).map(([p, l, n, d]) => new AppendCommand(p, l, n, d)),
    observe: fc
      .tuple(pick, layer, fc.integer({ min: 0, max: 0xffffffff }), fc.constantFrom(...ATTENTION_ROW_KINDS), fc.constantFrom(0, 0, 1, 3))
      .map(([p, l, s, k, pad]) => new ObserveCommand(p, l, s, k, pad)),
    useClosed: pick.map((p) => new ClosedSequenceCommand(p)),
  };
  const entries = (Object.keys(byName) as OperationName[])
    .filter((name) => weights[name] > 0)
    .map((name) => ({ arbitrary: byName[name], weight: weights[name] }));
  if (entries.length === 0) throw new RangeError('operationsArb: every command has weight 0');
  return fc.commands([fc.oneof(...entries)], { maxCommands: constraints.maxCommands ?? 30, size: 'max' });
}
