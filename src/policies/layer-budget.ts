/**
 * Per-layer token budgets, and their allocation from measured per-layer losses.
 * @module
 */
import { ArgumentError, BudgetError } from '../core/errors.js';
import { checkInt, type Geometry } from '../core/geometry.js';
import { readOptions } from '../core/options.js';
import { dropOption, evictionCount, protectionOptions } from './budget.js';
import type { BudgetPolicy, EvictionContext } from './policy.js';

/**
 * Options of {@link layerBudget}.
 * @example
 * ```ts
 * const options: LayerBudgetOptions = { tokens: [256, 128, 1024, 256, 128, 128], sinks: 4, recent: 1 };
 * ```
 */
export interface LayerBudgetOptions {
  /** Tokens kept per (sequence, KV head) at each layer, `tokens[layer]`; one integer per layer. Required. */
  readonly tokens: readonly number[];
  /** First tokens never dropped; default 0. */
  readonly sinks?: number;
  /** Newest tokens never dropped, the incoming ones included; default 10. */
  readonly recent?: number;
  /** Tokens dropped at least, once a layer's budget is exceeded; default 1. */
  readonly drop?: number;
}

/**
 * A {@link BudgetPolicy} made by {@link layerBudget}, with its settings.
 * @example
 * ```ts
 * const p: LayerBudgetPolicy = layerBudget({ tokens: [64, 32] });
 * p.total; // 96: the tokens one KV head keeps over all layers
 * ```
 */
export interface LayerBudgetPolicy extends BudgetPolicy {
  /** The budget of each layer, also its capacity. */
  readonly tokens: readonly number[];
  /** The sum of the layers' budgets: what a {@link fixedBudget} of `total / layers` tokens would keep. */
  readonly total: number;
  /** Tokens dropped at least once a layer's budget is exceeded. */
  readonly drop: number;
}

/**
 * A fixed budget for each layer: `tokens[layer]` tokens per (sequence, KV head), with the eviction counts
 * of {@link fixedBudget} applied layer by layer (nothing while the layer fits, then `max(drop, overflow)`,
 * never more than the candidates outside `sinks` and `recent`). Memory is reserved per layer, so a cache
 * whose budgets sum to `layers x B` takes exactly the memory of `fixedBudget({ tokens: B })`: the budget is
 * moved between layers, not added. Which tokens go is the tracker's choice, as always.
 *
 * Use it where layers differ in how far back they need to look: on `ref-12m`, one layer holds most of what
 * StreamingLLM loses, and {@link allocateLayerBudgets} turns measured per-layer losses into budgets
 * (`docs/methods.md`, "layer budgets").
 *
 * Checks (typed errors naming the option): `tokens` a non-empty array of integers, `sinks`, `recent`,
 * `drop >= 1` integers ({@link ArgumentError}); every budget at least `sinks + max(recent, 1)`, `drop` at
 * most the smallest budget's candidates, and, when the cache is created, one budget per layer of the
 * geometry ({@link BudgetError}).
 *
 * @example
 * ```ts
 * const tracker = streamingLLM();
 * const policy = layerBudget({ tokens: [286, 286, 1024, 286, 286, 286], sinks: 4, recent: 1 }); // 409 on average
 * using cache = KVCache.create({ geometry, tracker, policy });
 * ```
 */
export function layerBudget(options: LayerBudgetOptions): LayerBudgetPolicy {
  const o = readOptions(options, ['tokens', 'sinks', 'recent', 'drop']);
  const raw = o['tokens'];
  if (!Array.isArray(raw) || raw.length === 0) throw new ArgumentError('expected a non-empty array of budgets, one per layer', 'tokens');
  const tokens = Object.freeze(raw.map((t: unknown, layer) => checkInt(t, `tokens[${layer}]`, 1)));
  const protection = protectionOptions(o);
  const { sinks, recent } = protection;
  const smallest = Math.min(...tokens);
  if (smallest < protection.floor) {
    throw new BudgetError(
      `budget ${smallest} of layer ${tokens.indexOf(smallest)} is smaller than sinks + max(recent, 1) = ${protection.floor}: a full cache could not take a step`,
      'tokens',
    );
  }
  const drop = dropOption(o, smallest, protection);
  return Object.freeze({
    name: 'layerBudget',
    sinks,
    recent,
    tokens,
    total: tokens.reduce((a, b) => a + b, 0),
    drop,
    capacity: (layer: number, geometry: Geometry): number => {
      if (geometry.layers !== tokens.length) {
        throw new BudgetError(`${tokens.length} layer budgets for a geometry of ${geometry.layers} layers`, 'tokens');
      }
      return tokens[layer]!;
    },
    evictions: (context: EvictionContext): number => evictionCount(tokens[context.layer]!, drop, protection, context),
  });
}

/**
 * A measured point of a layer's loss curve: the loss (e.g. the increase of mean NLL, in nats) when this
 * layer alone keeps `tokens` tokens and every other layer keeps everything.
 * @example
 * ```ts
 * const point: LayerLossPoint = { tokens: 256, loss: 0.012 };
 * ```
 */
export interface LayerLossPoint {
  readonly tokens: number;
  readonly loss: number;
}

/**
 * Options of {@link allocateLayerBudgets}.
 * @example
 * ```ts
 * const options: AllocationOptions = { curves, budget: 409, min: 64 };
 * ```
 */
export interface AllocationOptions {
  /** One loss curve per layer (`curves[layer]`), each with at least one point; the loss of the largest point is usually 0 (the full context). */
  readonly curves: readonly (readonly LayerLossPoint[])[];
  /** The mean budget per layer, `B`: the budgets returned sum to at most `layers x B`. */
  readonly budget: number;
  /** Smallest budget a layer may get; default the smallest measured point of any curve. */
  readonly min?: number;
  /** Largest budget a layer may get; default the largest measured point of any curve. */
  readonly max?: number;
}

/**
 * The loss of a curve at `tokens`: the measured points made non-increasing in `tokens` (a point never
 * counts as better than a larger one), joined linearly in `log(tokens)`, and flat beyond the ends.
 * @example
 * ```ts
 * interpolateLoss([{ tokens: 64, loss: 0.2 }, { tokens: 256, loss: 0 }], 128); // 0.1
 * ```
 */
export function interpolateLoss(curve: readonly LayerLossPoint[], tokens: number): number {
  const points = [...curve].sort((a, b) => a.tokens - b.tokens);
  // Running maximum from the largest budget down: more tokens never cost more.
  const loss = points.map((p) => p.loss);
  for (let i = loss.length - 2; i >= 0; i--) loss[i] = Math.max(loss[i]!, loss[i + 1]!);
  if (tokens <= points[0]!.tokens) return loss[0]!;
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1]!;
    const b = points[i]!;
    if (tokens <= b.tokens) {
      const t = (Math.log(tokens) - Math.log(a.tokens)) / (Math.log(b.tokens) - Math.log(a.tokens));
      return loss[i - 1]! + t * (loss[i]! - loss[i - 1]!);
    }
  }
  return loss[loss.length - 1]!;
}

/**
 * Splits `layers x budget` tokens among the layers so that the sum of the layers' interpolated losses
 * ({@link interpolateLoss}) is smallest: an exact dynamic programme over whole tokens, each layer between
 * `min` and `max`. Losses of separate layers are assumed to add up (they do roughly, for small losses).
 * Ties go to the allocation found first (earlier layers get the smaller budget). Throws
 * {@link ArgumentError} for malformed curves and {@link BudgetError} when `layers x min` exceeds the total.
 *
 * @example
 * ```ts
 * // Layer 1 loses nothing down to 64 tokens; layer 0 needs its context.
 * allocateLayerBudgets({
 *   curves: [
 *     [{ tokens: 64, loss: 0.3 }, { tokens: 256, loss: 0.1 }, { tokens: 1024, loss: 0 }],
 *     [{ tokens: 64, loss: 0.001 }, { tokens: 1024, loss: 0 }],
 *   ],
 *   budget: 256,
 * }); // [448, 64]
 * ```
 */
export function allocateLayerBudgets(options: AllocationOptions): number[] {
  const o = readOptions(options, ['curves', 'budget', 'min', 'max']);
  const curves = o['curves'];
  if (!Array.isArray(curves) || curves.length === 0) throw new ArgumentError('expected one loss curve per layer', 'curves');
  for (const [layer, curve] of (curves as unknown[]).entries()) {
    if (!Array.isArray(curve) || curve.length === 0) throw new ArgumentError(`expected points for layer ${layer}`, 'curves');
    for (const p of curve as unknown[]) {
      const point = p as Partial<LayerLossPoint>;
      if (typeof point !== 'object' || point === null || !Number.isInteger(point.tokens) || (point.tokens as number) < 1
        || typeof point.loss !== 'number' || !Number.isFinite(point.loss)) {
        throw new ArgumentError(`layer ${layer}: expected points { tokens: integer >= 1, loss: finite number }`, 'curves');
      }
    }
  }
  const typed = curves as readonly (readonly LayerLossPoint[])[];
  const layers = typed.length;
  const budget = checkInt(o['budget'], 'budget', 1);
  const measured = typed.flatMap((c) => c.map((p) => p.tokens));
  const min = o['min'] === undefined ? Math.min(...measured) : checkInt(o['min'], 'min', 1);
  const max = o['max'] === undefined ? Math.max(...measured) : checkInt(o['max'], 'max', min);
  if (min > max) throw new ArgumentError(`min ${min} exceeds max ${max}`, 'min');
  const total = layers * budget;
  if (layers * min > total) throw new BudgetError(`${layers} layers of at least ${min} tokens exceed ${total}`, 'budget');
  const span = max - min;
  const room = Math.min(total - layers * min, layers * span); // tokens above the minimum to share
  // cost[l][x]: loss of layer l at min + x tokens.
  const cost = typed.map((curve) => Float64Array.from({ length: span + 1 }, (_, x) => interpolateLoss(curve, min + x)));
  // best[l][r]: least total loss of layers 0..l using exactly r extra tokens; choice[l][r]: layer l's extra.
  let best = new Float64Array(room + 1).fill(Infinity);
  const choice: Int32Array[] = [];
  for (let x = 0; x <= Math.min(span, room); x++) best[x] = cost[0]![x]!;
  choice.push(Int32Array.from({ length: room + 1 }, (_, r) => (r <= span ? r : -1)));
  for (let l = 1; l < layers; l++) {
    const next = new Float64Array(room + 1).fill(Infinity);
    const pick = new Int32Array(room + 1).fill(-1);
    const c = cost[l]!;
    for (let r = 0; r <= room; r++) {
      const prev = best[r]!;
      if (prev === Infinity) continue;
      const top = Math.min(span, room - r);
      for (let x = 0; x <= top; x++) {
        const v = prev + c[x]!;
        if (v < next[r + x]!) {
          next[r + x] = v;
          pick[r + x] = x;
        }
      }
    }
    best = next;
    choice.push(pick);
  }
  // The best total over every amount used (using fewer tokens is allowed; the first minimum wins).
  let r = 0;
  for (let i = 1; i <= room; i++) if (best[i]! < best[r]!) r = i;
  const out = new Array<number>(layers);
  for (let l = layers - 1; l >= 0; l--) {
    const x = choice[l]![r]!;
    out[l] = min + x;
    r -= x;
  }
  return out;
}
