/**
 * `fc.Command`s that drive a {@link KVCache} and its {@link KVCacheModel} together. Commands pick
 * sequences by index among the open ones and carry a seed for their data, so they stay valid (and
 * readable) while fast-check shrinks a failing run.
 * @module
 */
import type * as fc from 'fast-check';
import type { KVCache } from '../cache/kv-cache.js';
import type { HostArray } from '../core/dtype.js';
import { SequenceError } from '../core/errors.js';
import { type AttentionRowKind, makeAttentionRow } from './attention-row.js';
import { type DataKind, makeValues, toHostArray } from './data.js';
import { InvariantError, type KVCacheModel } from './model.js';
import { Rng } from './rng.js';

/**
 * How a command makes its arrays.
 * @example
 * ```ts
 * const data: DataSpec = { seed: 7, kind: 'normal', bits: false, offset: true, out: false };
 * ```
 */
export interface DataSpec {
  readonly seed: number;
  readonly kind: DataKind;
  /** Pass `Uint16Array` bits of the store's dtype (16-bit stores only). */
  readonly bits: boolean;
  /** Pass views at a non-zero byte offset into larger buffers. */
  readonly offset: boolean;
  /** Pass a preallocated `out` array. */
  readonly out: boolean;
}

/**
 * A command of the KVCache model: `fc.Command<KVCacheModel, KVCache>`.
 * @example
 * ```ts
 * const commands: CacheCommand[] = [new OpenCommand(), new AttendCommand(0, 0, data)];
 * ```
 */
export type CacheCommand = fc.Command<KVCacheModel, KVCache>;

const showData = (d: DataSpec): string =>
  `{seed:${d.seed},${d.kind}${d.bits ? ',bits' : ''}${d.offset ? ',offset' : ''}${d.out ? ',out' : ''}}`;

function pickOpen(m: KVCacheModel, pick: number): number {
  const open = m.openSequences();
  return open[pick % open.length]!;
}

interface Block { q: HostArray; k: HostArray; v: HostArray; out?: HostArray }

function makeBlock(m: KVCacheModel, rows: number, data: DataSpec): Block {
  const { queryHeads, kvHeads, headDim } = m.geometry;
  const rng = new Rng(data.seed);
  const qKind: DataKind = data.kind === 'repeat' ? 'normal' : data.kind;
  const kKind: DataKind = data.kind === 'zero' ? 'normal' : data.kind;
  const vKind: DataKind = data.kind === 'zero' || data.kind === 'repeat' ? 'normal' : data.kind;
  const bits = data.bits && m.dtype !== 'f32';
  const q = toHostArray(makeValues(rng, rows, queryHeads * headDim, qKind), m.dtype, bits, data.offset);
  const k = toHostArray(makeValues(rng, rows, kvHeads * headDim, kKind), m.dtype, bits, data.offset);
  const v = toHostArray(makeValues(rng, rows, kvHeads * headDim, vKind), m.dtype, bits, data.offset);
  if (!data.out) return { q, k, v };
  const out = q instanceof Float32Array ? new Float32Array(q.length).fill(Number.NaN) : new Uint16Array(q.length).fill(0x7e00);
  return { q, k, v, out };
}

/**
 * What every command of the model shares: fast-check calls `check` with the model to see whether the
 * command applies, then `run` with the model and the cache under test, and prints it with `toString`.
 * @example
 * ```ts
 * class Noop extends CacheCommandBase {
 *   override run(m: KVCacheModel, r: KVCache): void { m.verify(r); }
 *   override toString(): string { return 'noop'; }
 * }
 * ```
 */
export abstract class CacheCommandBase implements CacheCommand {
  /**
   * Whether the command applies in the model's state (by default: some sequence is open).
   * @example
   * ```ts
   * if (command.check(model)) command.run(model, cache);
   * ```
   */
  check(m: KVCacheModel): boolean {
    return m.openSequences().length > 0;
  }

  /**
   * Runs the command on the cache under test and on the model, which checks every invariant.
   * @example
   * ```ts
   * new OpenCommand().run(model, cache);
   * ```
   */
  abstract run(m: KVCacheModel, r: KVCache): void;

  /**
   * How the command prints in a counterexample.
   * @example
   * ```ts
   * String(new ResetCommand(1)); // 'reset(#1)'
   * ```
   */
  abstract toString(): string;
}

/**
 * Opens a sequence (or, with every slot open, expects `KV_CAPACITY`).
 * @example
 * ```ts
 * new OpenCommand().run(model, cache);
 * ```
 */
export class OpenCommand extends CacheCommandBase {
  override check(): boolean {
    return true;
  }
  override run(m: KVCacheModel, r: KVCache): void {
    m.step(r, { op: 'open' });
  }
  override toString(): string {
    return 'open';
  }
}

/**
 * Closes the `pick`-th open sequence.
 * @example
 * ```ts
 * new CloseCommand(0).run(model, cache);
 * ```
 */
export class CloseCommand extends CacheCommandBase {
  constructor(readonly pick: number) {
    super();
  }
  override run(m: KVCacheModel, r: KVCache): void {
    m.step(r, { op: 'close', seq: pickOpen(m, this.pick) });
  }
  override toString(): string {
    return `close(#${this.pick})`;
  }
}

/**
 * Resets the `pick`-th open sequence.
 * @example
 * ```ts
 * new ResetCommand(1).run(model, cache);
 * ```
 */
export class ResetCommand extends CacheCommandBase {
  constructor(readonly pick: number) {
    super();
  }
  override run(m: KVCacheModel, r: KVCache): void {
    m.step(r, { op: 'reset', seq: pickOpen(m, this.pick) });
  }
  override toString(): string {
    return `reset(#${this.pick})`;
  }
}

/**
 * One decode step of one layer.
 * @example
 * ```ts
 * new AttendCommand(0, 1, data).run(model, cache);
 * ```
 */
export class AttendCommand extends CacheCommandBase {
  constructor(readonly pick: number, readonly layer: number, readonly data: DataSpec) {
    super();
  }
  override run(m: KVCacheModel, r: KVCache): void {
    const seq = pickOpen(m, this.pick);
    m.step(r, { op: 'attend', seq, layer: this.layer, ...makeBlock(m, 1, this.data) });
  }
  override toString(): string {
    return `attend(#${this.pick}, layer ${this.layer}, ${showData(this.data)})`;
  }
}

/**
 * One decode step through every layer, as an engine runs one token.
 * @example
 * ```ts
 * new DecodeStepCommand(0, data).run(model, cache);
 * ```
 */
export class DecodeStepCommand extends CacheCommandBase {
  constructor(readonly pick: number, readonly data: DataSpec) {
    super();
  }
  override run(m: KVCacheModel, r: KVCache): void {
    const seq = pickOpen(m, this.pick);
    for (let layer = 0; layer < m.geometry.layers; layer++) {
      m.step(r, { op: 'attend', seq, layer, ...makeBlock(m, 1, { ...this.data, seed: (this.data.seed + layer * 7919) >>> 0 }) });
    }
  }
  override toString(): string {
    return `decodeStep(#${this.pick}, ${showData(this.data)})`;
  }
}

/**
 * Causal attention over a block of `rows` prompt tokens of one layer.
 * @example
 * ```ts
 * new PrefillCommand(0, 0, 12, data).run(model, cache);
 * ```
 */
export class PrefillCommand extends CacheCommandBase {
  constructor(readonly pick: number, readonly layer: number, readonly rows: number, readonly data: DataSpec) {
    super();
  }
  override run(m: KVCacheModel, r: KVCache): void {
    const seq = pickOpen(m, this.pick);
    m.step(r, { op: 'prefill', seq, layer: this.layer, ...makeBlock(m, this.rows, this.data) });
  }
  override toString(): string {
    return `prefill(#${this.pick}, layer ${this.layer}, ${this.rows} rows, ${showData(this.data)})`;
  }
}

/**
 * Appends `rows` tokens without attending (at most what fits beside the sinks).
 * @example
 * ```ts
 * new AppendCommand(0, 0, 3, data).run(model, cache);
 * ```
 */
export class AppendCommand extends CacheCommandBase {
  constructor(readonly pick: number, readonly layer: number, readonly rows: number, readonly data: DataSpec) {
    super();
  }
  override run(m: KVCacheModel, r: KVCache): void {
    const seq = pickOpen(m, this.pick);
    const rows = Math.max(1, Math.min(this.rows, m.capacities[this.layer]! - m.policy.sinks));
    const { k, v } = makeBlock(m, rows, this.data);
    m.step(r, { op: 'append', seq, layer: this.layer, k, v });
  }
  override toString(): string {
    return `append(#${this.pick}, layer ${this.layer}, ${this.rows} rows, ${showData(this.data)})`;
  }
}

/**
 * Feeds probabilities the engine computed: one row per query head over the kept tokens, with
 * `pad` extra elements per row (filled with NaN, which the cache must ignore).
 * @example
 * ```ts
 * new ObserveCommand(0, 0, 5, 'ties', 2).run(model, cache);
 * ```
 */
export class ObserveCommand extends CacheCommandBase {
  constructor(readonly pick: number, readonly layer: number, readonly seed: number, readonly kind: AttentionRowKind, readonly pad: number) {
    super();
  }
  override run(m: KVCacheModel, r: KVCache): void {
    const seq = pickOpen(m, this.pick);
    // Heads may keep different numbers of tokens (per-head budgets): rows are as long as the longest.
    const { queryHeads, kvHeads } = m.geometry;
    const group = queryHeads / kvHeads;
    const lengths = Array.from({ length: kvHeads }, (_, h) => m.length(seq, this.layer, h));
    const stride = Math.max(...lengths) + this.pad;
    const probs = new Float32Array(queryHeads * stride).fill(Number.NaN);
    const rng = new Rng(this.seed);
    for (let h = 0; h < queryHeads; h++) probs.set(makeAttentionRow(rng, lengths[Math.floor(h / group)]!, this.kind), h * stride);
    m.step(r, this.pad > 0 ? { op: 'observe', seq, layer: this.layer, probs, stride } : { op: 'observe', seq, layer: this.layer, probs });
  }
  override toString(): string {
    return `observe(#${this.pick}, layer ${this.layer}, seed ${this.seed}, ${this.kind}, pad ${this.pad})`;
  }
}

/**
 * Uses a closed sequence id (every entry point must throw `KV_SEQUENCE` and change nothing).
 * @example
 * ```ts
 * new ClosedSequenceCommand(0).run(model, cache);
 * ```
 */
export class ClosedSequenceCommand extends CacheCommandBase {
  constructor(readonly pick: number) {
    super();
  }
  override check(m: KVCacheModel): boolean {
    return m.closedSequences().length > 0;
  }
  override run(m: KVCacheModel, r: KVCache): void {
    const closed = m.closedSequences();
    const seq = closed[this.pick % closed.length]!;
    const { queryHeads, kvHeads, headDim } = m.geometry;
    const q = new Float32Array(queryHeads * headDim);
    const k = new Float32Array(kvHeads * headDim);
    const calls: [string, () => unknown][] = [
      ['attend', () => r.attend(seq, 0, q, k, k)],
      ['prefill', () => r.prefill(seq, 0, q, k, k)],
      ['append', () => r.append(seq, 0, k, k)],
      ['observe', () => r.observe(seq, 0, new Float32Array(0))],
      ['close', () => r.close(seq)],
      ['reset', () => r.reset(seq)],
      ['view', () => r.view(seq, 0, 0)],
      ['inspect', () => r.inspect(seq, 0, 0)],
      ['length', () => r.length(seq, 0)],
      ['seen', () => r.seen(seq, 0)],
    ];
    for (const [name, call] of calls) {
      let threw: unknown;
      try {
        call();
      } catch (error) {
        threw = error;
      }
      if (!(threw instanceof SequenceError) || threw.argument !== 'seq') {
        throw new InvariantError('policy', `${name}() on closed sequence ${seq} should throw SequenceError naming 'seq', got ${String(threw)}`);
      }
    }
    m.verify(r);
  }
  override toString(): string {
    return `useClosed(#${this.pick})`;
  }
}
