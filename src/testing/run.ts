/**
 * Running command sequences against a cache and its model.
 * @module
 */
import * as fc from 'fast-check';
import type { BackendName } from '../backend/select.js';
import type { KVCache } from '../cache/kv-cache.js';
import type { HostArray } from '../core/dtype.js';
import { type CacheConfig, createCache } from './config.js';
import { KVCacheModel, type KVCacheModelOptions } from './model.js';
import { diffSnapshots, snapshotCache } from './snapshot.js';

/**
 * Options of {@link runModel}.
 * @example
 * ```ts
 * const options: ModelRunOptions = { backend: 'cpu', oracle: 'reference' };
 * ```
 */
export interface ModelRunOptions extends KVCacheModelOptions {
  /** Backend of the cache under test; default `'reference'`. */
  readonly backend?: BackendName;
}

/**
 * What a model run saw.
 * @example
 * ```ts
 * const { steps, divergences } = runModel(config, commands);
 * ```
 */
export interface ModelRunReport {
  /** Operations stepped. */
  readonly steps: number;
  /** Tolerated disagreements with the oracle (float near-ties across backends). */
  readonly divergences: readonly string[];
}

/**
 * Builds a cache and a {@link KVCacheModel} from `config`, opens one sequence, runs the commands with
 * `fc.modelRun` (every command checks every enabled invariant) and disposes both. Throws on the first
 * broken invariant.
 * @example
 * ```ts
 * fc.assert(fc.property(configAndCommands, ([config, commands]) => { runModel(config, commands, { backend: 'cpu' }); }));
 * ```
 */
export function runModel(config: CacheConfig, commands: Iterable<fc.Command<KVCacheModel, KVCache>>, options: ModelRunOptions = {}): ModelRunReport {
  const model = new KVCacheModel(config, options);
  const real = createCache(config, options.backend ?? 'reference');
  try {
    model.step(real, { op: 'open' });
    fc.modelRun(() => ({ model, real }), commands);
    return { steps: model.steps, divergences: [...model.divergences] };
  } finally {
    real.dispose();
    model.dispose();
  }
}

function record(cache: KVCache, commands: Iterable<fc.Command<KVCacheModel, KVCache>>, config: CacheConfig): { label: string; output: HostArray | undefined; state: ReturnType<typeof snapshotCache> }[] {
  const model = new KVCacheModel(config, { oracle: false, checks: [] });
  const trace: { label: string; output: HostArray | undefined; state: ReturnType<typeof snapshotCache> }[] = [];
  model.step(cache, { op: 'open' });
  for (const command of commands) {
    if (!command.check(model)) continue;
    command.run(model, cache);
    trace.push({ label: command.toString(), output: model.lastOutput?.slice(), state: snapshotCache(cache) });
  }
  return trace;
}

/**
 * Runs the same commands on two fresh caches of one backend and throws unless every output, every
 * kept bit, every score and the stats agree exactly after every command.
 * @example
 * ```ts
 * checkDeterminism(config, commands, 'cpu');
 * ```
 */
export function checkDeterminism(config: CacheConfig, commands: Iterable<fc.Command<KVCacheModel, KVCache>>, backend: BackendName = 'reference'): void {
  const list = [...commands];
  const a = createCache(config, backend);
  const b = createCache(config, backend);
  try {
    const first = record(a, list, config);
    const second = record(b, list, config);
    for (let i = 0; i < first.length; i++) {
      const x = first[i]!;
      const y = second[i]!;
      const d = diffSnapshots(x.state, y.state);
      if (d !== undefined) throw new Error(`[determinism] after ${x.label} (command ${i}): ${d}`);
      if (x.output !== undefined || y.output !== undefined) {
        const u = x.output;
        const v = y.output;
        const bits = (o: HostArray): Uint32Array => (o instanceof Float32Array ? new Uint32Array(o.buffer, o.byteOffset, o.length) : Uint32Array.from(o));
        if (u === undefined || v === undefined || u.length !== v.length || bits(u).some((w, j) => w !== bits(v)[j])) {
          throw new Error(`[determinism] ${x.label} (command ${i}) returned different outputs on two identical runs`);
        }
      }
    }
  } finally {
    a.dispose();
    b.dispose();
  }
}
