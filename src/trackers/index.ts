/**
 * Importance trackers: the interface, the built-ins and their registry.
 * @module
 */
export * from './tracker.js';
export type { BuiltinTracker, NoOptions } from './builtin.js';
export { scissorhands, MAX_SCISSORHANDS_WINDOW, type ScissorhandsOptions } from './scissorhands.js';
export { h2o, type H2OOptions } from './h2o.js';
export { tova, type TovaOptions } from './tova.js';
export { streamingLLM } from './streaming-llm.js';
export { keyNorm } from './key-norm.js';
export { random, randomScore, type RandomOptions } from './random.js';
export { snapKVScores, type SnapKVScoresOptions } from './snap-kv.js';
export { trackers, type TrackerFactories } from './registry.js';
