/**
 * Backend selection, and the report of what is loaded and why.
 * @module
 */
import { BackendError } from '../core/errors.js';
import { nativeStatus } from '../native/loader.js';
import type { Backend } from './backend.js';
import { createCpuBackend } from './cpu.js';
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
  readonly cuda: { readonly available: false; readonly reason: string };
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
    cuda: { available: false, reason: 'this build of scissorhands has no CUDA backend' },
    reference: { available: true },
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
      throw new BackendError(backendInfo().cuda.reason, 'backend');
    default:
      throw new BackendError(`unknown backend ${String(name)}; expected 'auto', 'cpu', 'reference' or 'cuda'`, 'backend');
  }
}
