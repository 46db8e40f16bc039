/**
 * The CUDA build falls back cleanly where there is no GPU (CI builds the CUDA addon when it has nvcc,
 * and has no GPU): the addon loads, reports why no device is usable, and backendInfo() says so while the
 * CPU backend keeps working. On a machine with a GPU this file checks nothing (test/gpu covers it).
 */
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { backendInfo, KVCache, fixedBudget, KvError } from '../../src/index.js';
import { cudaStatus } from '../../src/native/loader.js';

const built = existsSync(new URL('../../build/Release/scissorhands_cuda.node', import.meta.url));
const status = cudaStatus();

describe.runIf(!status.available)('cuda fallback on a machine without a usable GPU', () => {
  it('backendInfo() reports cuda unavailable, with the reason', () => {
    const info = backendInfo();
    expect(info.cuda.available).toBe(false);
    expect(info.cuda.built).toBe(built);
    if (built) {
      // The addon loaded (static cudart), and the CUDA runtime said there is no driver or no device.
      expect(info.cuda.reason).toMatch(/driver|device/i);
      expect(info.cuda.reason).toMatch(/CUDA error \d+/);
      expect(info.cuda.archs).toMatch(/^\d+(_\d+)*$/);
    } else {
      expect(info.cuda.reason).toMatch(/no CUDA addon/);
    }
    expect(info.auto).toBe('cpu');
    expect(info.cpu.available).toBe(true);
  });

  it("backend: 'cuda' is a typed error naming the reason, and the cpu backend still works", () => {
    const options = { geometry: { layers: 1, queryHeads: 2, kvHeads: 1, headDim: 64 }, policy: fixedBudget({ tokens: 16 }) };
    let error: unknown;
    try {
      KVCache.create({ ...options, backend: 'cuda' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(KvError);
    expect((error as KvError).code).toBe('KV_BACKEND');
    expect((error as KvError).message).toContain(backendInfo().cuda.reason!);
    // Packed storage is no longer refused by the options: what stops it here is the missing device.
    expect(() => KVCache.create({ ...options, backend: 'cuda', storage: { format: 'int4' } }))
      .toThrow(expect.objectContaining({ code: 'KV_BACKEND', argument: 'backend', message: expect.stringContaining(backendInfo().cuda.reason!) }));
    using cache = KVCache.create({ ...options, backend: 'auto' });
    expect(cache.backend).toBe('cpu');
  });
});
