/**
 * scissorhands: KV-cache compression for LLM inference engines in TypeScript.
 *
 * @example
 * ```ts
 * import { KVCache, fixedBudget, scissorhands } from 'scissorhands';
 * using cache = KVCache.create({
 *   geometry: { layers: 2, queryHeads: 4, kvHeads: 2, headDim: 8 },
 *   tracker: scissorhands(),
 *   policy: fixedBudget({ tokens: 64 }),
 * });
 * ```
 * @module
 */
export { KVCache } from './cache/kv-cache.js';
export type { KVCacheOptions, PromptMethod } from './cache/options.js';
export type { CacheStats, LayerStats } from './cache/stats.js';
export * from './trackers/index.js';
export * from './policies/index.js';
export * from './quant/index.js';
export * from './core/errors.js';
export {
  type DType, type HostArray, DTYPES, bytesPerElement, f32ToF16Bits, f16BitsToF32, f32ToBf16Bits, bf16BitsToF32,
} from './core/dtype.js';
export { type Geometry, MAX_HEAD_DIM } from './core/geometry.js';
export { Registry, type Factory } from './core/registry.js';
export type { Backend, LayerStore, LayerStoreSpec, AttentionSpec, HeadView, HeadInspection, HeadLayout, PackedStore } from './backend/backend.js';
export { backendInfo, type BackendInfo, type BackendName } from './backend/select.js';
export { createReferenceBackend } from './backend/reference.js';
export { createCpuBackend } from './backend/cpu.js';
export {
  createCudaBackend, copyStoreToHost, copyStoreToDevice, type CudaBackend, type CudaBackendOptions, type CudaLayerStore, type CudaArray,
  type DeviceByteLedger,
} from './backend/cuda.js';
export { DeviceTensor, isDeviceTensor, type WrapOptions } from './backend/device-tensor.js';
export type { CacheArray } from './cache/kv-cache.js';
