/**
 * Backend selection, and the report of what is loaded and why.
 * @module
 */
import { BackendError } from '../core/errors.js';
import { cudaStatus, nativeStatus } from '../native/loader.js';
import type { Backend } from './backend.js';
import { createCpuBackend } from './cpu.js';
import { createCudaBackend } from './cuda.js';
import { createReferenceBackend } from './reference.js';

/** Backends a cache can be created on. `auto` picks the native CPU backend when it loads, else `reference`. */
export type BackendName = 'auto' | 'cpu' | 'reference' | 'cuda';

/**
 * What each backend's status is on this machine.
 * @example
 * ```ts
 * const info = backendInfo();
 * if (!info.cpu.available) console.warn(info.cpu.reason);
 * ```
 */
export interface BackendInfo {
  /** The backend `auto` selects here. */
  readonly auto: 'cpu' | 'reference';
  readonly cpu: { readonly available: boolean; readonly path?: string; readonly reason?: string };
  /**
   * The CUDA backend: available when the CUDA addon was built (nvcc at install time) and a device with a
   * working driver is present; `reason` says why not (not built, no driver, no device). `auto` never
   * picks it: a cache whose engine keeps tensors on the GPU asks for `backend: 'cuda'`.
   */
  readonly cuda: {
    readonly available: boolean;
    /** Whether the CUDA addon exists in this install. */
    readonly built: boolean;
    readonly path?: string;
    readonly reason?: string;
    /** The device in use: name, compute capability, multiprocessors. */
    readonly device?: { readonly name: string; readonly computeCapability: string; readonly multiProcessors: number; readonly memoryBytes: number };
    /** Architectures compiled into the addon, e.g. `80_86_89_90`. */
    readonly archs?: string;
  };
  readonly reference: { readonly available: true };
}

/**
 * Reports which backends are usable and, for those that are not, why.
 * @example
 * ```ts
 * import { backendInfo } from 'scissorhands';
 * console.log(backendInfo().auto); // 'cpu' when the native addon is built
 * ```
 */
export function backendInfo(): BackendInfo {
  const status = nativeStatus();
  const cpu = status.loaded
    ? { available: true, ...(status.path === undefined ? {} : { path: status.path }) }
    : { available: false, reason: status.error ?? 'the native addon did not load' };
  return {
    auto: status.loaded ? 'cpu' : 'reference',
    cpu,
    cuda: describeCuda(),
    reference: { available: true },
  };
}

function describeCuda(): BackendInfo['cuda'] {
  const status = cudaStatus();
  if (status.available) {
    const { device, archs } = status.info;
    return {
      available: true, built: true, path: status.path, archs,
      ...(device === undefined ? {} : {
        device: { name: device.name, computeCapability: device.computeCapability, multiProcessors: device.multiProcessors, memoryBytes: device.memoryBytes },
      }),
    };
  }
  return {
    available: false, built: status.built, reason: status.reason,
    ...(status.path === undefined ? {} : { path: status.path }),
    ...(status.info === undefined ? {} : { archs: status.info.archs }),
  };
}

/**
 * Creates the backend a cache asked for.
 * @example
 * ```ts
 * const backend = selectBackend('auto');
 * ```
 */
export function selectBackend(name: BackendName): Backend {
  switch (name) {
    case 'cpu':
      return createCpuBackend();
    case 'reference':
      return createReferenceBackend();
    case 'auto':
      return nativeStatus().loaded ? createCpuBackend() : createReferenceBackend();
    case 'cuda':
      return createCudaBackend();
    default:
      throw new BackendError(`unknown backend ${String(name)}; expected 'auto', 'cpu', 'reference' or 'cuda'`, 'backend');
  }
}
