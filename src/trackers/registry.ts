/**
 * The tracker registry: built-in trackers by name, and room for users' own.
 * @module
 */
import { Registry } from '../core/registry.js';
import { h2o } from './h2o.js';
import { keyNorm } from './key-norm.js';
import { random } from './random.js';
import { scissorhands } from './scissorhands.js';
import { snapKVScores } from './snap-kv.js';
import { streamingLLM } from './streaming-llm.js';
import { tova } from './tova.js';
import type { ImportanceTracker } from './tracker.js';

/**
 * The built-in tracker factories by name; each name is also the `name` of the trackers it makes.
 * @example
 * ```ts
 * const make: TrackerFactories['h2o'] = trackers.get('h2o');
 * ```
 */
export interface TrackerFactories {
  readonly scissorhands: typeof scissorhands;
  readonly h2o: typeof h2o;
  readonly tova: typeof tova;
  readonly streamingLLM: typeof streamingLLM;
  readonly keyNorm: typeof keyNorm;
  readonly random: typeof random;
  readonly snapKVScores: typeof snapKVScores;
}

/**
 * Tracker factories by name: the built-ins (`scissorhands`, `h2o`, `tova`, `streamingLLM`, `keyNorm`,
 * `random`, `snapKVScores`) and whatever is registered. Registered factories must validate their options.
 * @example
 * ```ts
 * const tracker = trackers.create(config.tracker, config.trackerOptions);
 * const sh = trackers.get('scissorhands')({ window: 200 });
 * trackers.register('lastSeen', () => lastSeen);
 * ```
 */
export const trackers: Registry<ImportanceTracker, TrackerFactories> = new Registry('tracker', { scissorhands, h2o, tova, streamingLLM, keyNorm, random, snapKVScores });
