/**
 * The loader: finds the local build, caches it, reports it for backendInfo(), and refuses a build made
 * for another version of the package with a message that says what to do.
 */
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LoadError } from '../../src/core/errors.js';
import { loadNative, nativeStatus } from '../../src/native/loader.js';

const packageVersion = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

describe('loader', () => {
  afterEach(() => {
    vi.doUnmock('node:fs');
    vi.resetModules();
  });

  it('loads build/Release once and reports where from', () => {
    const status = nativeStatus();
    expect(status.loaded).toBe(true);
    expect(status.path).toMatch(/build[\\/]Release[\\/]scissorhands_cpu\.node$/);
    expect(loadNative()).toBe(loadNative());
    const info = loadNative().info();
    expect(info.version).toBe(packageVersion);
    expect(info.napiVersion).toBe(8);
    expect(['avx512', 'avx2', 'scalar']).toContain(info.simd);
  });

  it('refuses a build of another package version, listing every candidate and what to do', async () => {
    vi.resetModules();
    vi.doMock('node:fs', async (importOriginal) => {
      const fs = await importOriginal<typeof import('node:fs')>();
      const readFileSync = ((path: unknown, ...rest: unknown[]) => {
        const text = (fs.readFileSync as (...a: unknown[]) => string)(path, ...rest);
        return String(path).endsWith('package.json') ? text.replace(`"version": "${packageVersion}"`, '"version": "99.0.0"') : text;
      }) as typeof fs.readFileSync;
      return { ...fs, readFileSync, default: { ...fs, readFileSync } };
    });
    const fresh = await import('../../src/native/loader.js');
    const status = fresh.nativeStatus();
    expect(status.loaded).toBe(false);
    expect(status.error).toMatch(/Release.*built for scissorhands .* this is 99\.0\.0 \(a stale build\)/);
    expect(status.error).toMatch(/Debug.*not built/);
    expect(status.error).toMatch(/npm rebuild scissorhands/);
    const error = (() => {
      try {
        fresh.loadNative();
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect((error as Error).name).toBe(LoadError.name);
    expect((error as { code: string }).code).toBe('KV_LOAD');
  });
});
