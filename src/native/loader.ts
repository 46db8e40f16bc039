/**
 * Finds and loads the native addon once per thread: tries each candidate build in order, refuses a build
 * of another package version, and gathers every failure into one {@link LoadError} that says what to do.
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ArgumentError, BackendError, BudgetError, DTypeError, LoadError, ShapeError,
} from '../core/errors.js';
import type { CudaInfo, ErrorFactory, RawBinding, RawCudaBinding } from './binding.js';

/** File name of the addon that `node-gyp` builds. */
const ADDON = 'scissorhands_cpu.node';

/** Where this module runs from: `dist/` once bundled, `src/native/` from source. */
function moduleDir(): string {
  // The CommonJS bundle has no import.meta, the ES module has no __dirname: use whichever exists.
  if (typeof __dirname !== 'undefined') return __dirname;
  return dirname(fileURLToPath(import.meta.url));
}

/** The folder holding this package's package.json, and its version. */
function packageRoot(): { root: string; version: string } {
  for (let dir = moduleDir(); ; dir = dirname(dir)) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      const pkg = JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'scissorhands' && typeof pkg.version === 'string') return { root: dir, version: pkg.version };
    }
    if (dirname(dir) === dir) throw new Error(`no package.json of scissorhands above ${moduleDir()}`);
  }
}

/** Builds the typed errors native code throws, by code. */
const errorFactory: ErrorFactory = (code, message, argument) => {
  const arg = argument === '' ? undefined : argument;
  switch (code) {
    case 'KV_SHAPE': return new ShapeError(message, arg);
    case 'KV_DTYPE': return new DTypeError(message, arg);
    case 'KV_ARGUMENT': return new ArgumentError(message, arg);
    case 'KV_BUDGET': return new BudgetError(message, arg);
    default: return new BackendError(message, arg);
  }
};

type Loaded = { readonly binding: RawBinding; readonly path: string } | { readonly error: LoadError };

let loaded: Loaded | undefined;

function load(): Loaded {
  const failures: string[] = [];
  try {
    const { root, version } = packageRoot();
    const require = createRequire(join(root, 'package.json'));
    for (const build of ['Release', 'Debug']) {
      const path = join(root, 'build', build, ADDON);
      if (!existsSync(path)) {
        failures.push(`${path}: not built`);
        continue;
      }
      try {
        const binding = require(path) as RawBinding;
        const built = binding.info().version;
        if (built !== version) {
          failures.push(`${path}: built for scissorhands ${built}, this is ${version} (a stale build)`);
          continue;
        }
        binding.setErrorFactory(errorFactory);
        return { binding, path };
      } catch (e) {
        failures.push(`${path}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
  } catch (e) {
    failures.push(e instanceof Error ? e.message : String(e));
  }
  const message = [
    'the native CPU addon of scissorhands could not be loaded:',
    ...failures.map((f) => `  - ${f}`),
    'Run `npm rebuild scissorhands` to build it (it needs python3, make and a C++17 compiler such as g++),',
    "or create the cache with backend: 'reference' (pure TypeScript, slower).",
  ].join('\n');
  return { error: new LoadError(message) };
}

/**
 * The native addon, loaded on first use and cached for this thread.
 * @throws {@link LoadError} when no usable build is found; the message lists every candidate tried.
 * @example
 * ```ts
 * const binding = loadNative();
 * binding.info().simd; // 'avx2' or 'scalar'
 * ```
 */
export function loadNative(): RawBinding {
  loaded ??= load();
  if ('error' in loaded) throw loaded.error;
  return loaded.binding;
}

/**
 * Whether the addon loads here, from where, or why not (for `backendInfo()`). Tries to load it once.
 * @example
 * ```ts
 * const status = nativeStatus();
 * if (!status.loaded) console.warn(status.error);
 * ```
 */
export function nativeStatus(): { loaded: boolean; path?: string; error?: string } {
  loaded ??= load();
  return 'error' in loaded ? { loaded: false, error: loaded.error.message } : { loaded: true, path: loaded.path };
}

/** File name of the CUDA addon (built when nvcc was found at install time). */
const CUDA_ADDON = 'scissorhands_cuda.node';

/** What loading the CUDA addon gave: the binding and a usable device, or why not. */
export type CudaStatus =
  | { readonly available: true; readonly binding: RawCudaBinding; readonly path: string; readonly info: CudaInfo }
  | { readonly available: false; readonly built: boolean; readonly path?: string; readonly reason: string; readonly info?: CudaInfo };

let cudaLoaded: CudaStatus | undefined;

function loadCudaAddon(): CudaStatus {
  const failures: string[] = [];
  let root: string;
  let version: string;
  try {
    ({ root, version } = packageRoot());
  } catch (e) {
    return { available: false, built: false, reason: e instanceof Error ? e.message : String(e) };
  }
  const require = createRequire(join(root, 'package.json'));
  for (const build of ['Release', 'Debug']) {
    const path = join(root, 'build', build, CUDA_ADDON);
    if (!existsSync(path)) continue;
    try {
      const binding = require(path) as RawCudaBinding;
      const built = binding.info().version;
      if (built !== version) {
        failures.push(`${path}: built for scissorhands ${built}, this is ${version} (a stale build)`);
        continue;
      }
      binding.setErrorFactory(errorFactory);
      const info = binding.cudaInfo();
      if (!info.available) {
        const driver = info.driverVersion === 0 ? 'no NVIDIA driver was found' : `driver CUDA ${info.driverVersion}`;
        return {
          available: false, built: true, path, info,
          reason: `the CUDA addon is built (${path}) but no usable CUDA device or driver is present: ${info.reason ?? 'no device'}`
            + ` (${driver}, runtime CUDA ${info.runtimeVersion}, ${info.devices} device(s))`,
        };
      }
      return { available: true, binding, path, info };
    } catch (e) {
      failures.push(`${path}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  if (failures.length > 0) {
    return { available: false, built: true, reason: ['the CUDA addon of scissorhands could not be loaded:', ...failures.map((f) => `  - ${f}`)].join('\n') };
  }
  return {
    available: false, built: false,
    reason: 'this build of scissorhands has no CUDA addon: nvcc and libcudart_static.a were not found at install time, '
      + 'or SCISSORHANDS_CPU_ONLY=1 was set (install the CUDA toolkit and run `npm rebuild scissorhands`)',
  };
}

/**
 * The CUDA addon with a usable device, or why there is none (loaded once per thread; never throws).
 * @example
 * ```ts
 * const status = cudaStatus();
 * if (!status.available) console.warn(status.reason);
 * ```
 */
export function cudaStatus(): CudaStatus {
  cudaLoaded ??= loadCudaAddon();
  return cudaLoaded;
}

/**
 * The CUDA addon, when a device is usable.
 * @throws {@link BackendError} naming why not (no CUDA build, no driver, no device).
 * @example
 * ```ts
 * const cuda = loadCuda();
 * const stream = cuda.cudaStreamCreate();
 * ```
 */
export function loadCuda(): RawCudaBinding {
  const status = cudaStatus();
  if (!status.available) throw new BackendError(`the cuda backend is not available: ${status.reason}`, 'backend');
  return status.binding;
}
