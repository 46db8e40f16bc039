/**
 * KVCache with packed storage on the cuda backend counts bytes in a device ledger: it queues a recount of
 * a (layer, sequence) after every change to it (appends, evictions, clears) and reads the totals in
 * stats(). Without a GPU, a stand-in for the cuda backend (the cpu backend under its name, whose ledger
 * recounts from the stores as the kernel `account_packed` does: packed bytes, and tokens from the lengths)
 * checks that the cache reports exactly what the same cache counting on the host reports.
 */
import { describe, expect, it, vi } from 'vitest';
import type { Backend, LayerStore } from '../../../src/backend/backend.js';
import type { DeviceByteLedger } from '../../../src/backend/cuda.js';
import { KVCache, type KVCacheOptions, byteBudget, fixedBudget, h2o, scissorhands, streamingLLM } from '../../../src/index.js';
import { Rng } from '../../../src/testing/rng.js';

const ledgers = vi.hoisted(() => ({ made: 0 }));
vi.mock('../../../src/backend/cuda.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../../src/backend/cuda.js')>();
  const { createCpuBackend } = await import('../../../src/backend/cpu.js');
  const { packedKvBytesUsed } = await import('../../../src/backend/packed-store.js');
  return {
    ...original,
    createCudaBackend: (): Backend => ({
      ...createCpuBackend(),
      name: 'cuda',
      createLedger(entries: number, metaPerToken: number): DeviceByteLedger {
        ledgers.made += 1;
        const counted = new Float64Array(2 * entries);
        let kvBytes = 0;
        let tokens = 0;
        let peakBytesUsed = 0;
        return {
          bytes: 8 * (3 + 2 * entries),
          account(store: LayerStore, seq: number, entry: number): void {
            const bytes = packedKvBytesUsed(store, seq);
            const kept = store.lengths.subarray(seq * store.kvHeads, (seq + 1) * store.kvHeads).reduce((a, b) => a + b, 0);
            kvBytes += bytes - counted[2 * entry]!;
            tokens += kept - counted[2 * entry + 1]!;
            counted[2 * entry] = bytes;
            counted[2 * entry + 1] = kept;
            peakBytesUsed = Math.max(peakBytesUsed, kvBytes + tokens * metaPerToken);
          },
          read: () => ({ kvBytes, tokens, peakBytesUsed }),
        };
      },
    }) as Backend,
  };
});

const geometry = { layers: 2, queryHeads: 4, kvHeads: 2, headDim: 16 };

/** The same calls on both caches; stats() compared after each (the ledger's bytes count 16 per entry, the host's 8). */
function runTwins(options: KVCacheOptions, seed: number): void {
  using device = KVCache.create({ ...options, backend: 'cuda' });
  using host = KVCache.create({ ...options, backend: 'cpu' });
  const rng = new Rng(seed);
  const rows = (n: number, width: number): Float32Array => Float32Array.from({ length: n * width }, () => rng.range(-1, 1));
  const entries = geometry.layers * (options.maxSequences ?? 1);
  const expectSame = (what: string): void => {
    const a = device.stats();
    const b = host.stats();
    expect({ ...a, backend: 'cpu', bytesReserved: a.bytesReserved - 8 * (3 + entries) }, what).toEqual(b);
  };
  const [q1, kv1] = [geometry.queryHeads * geometry.headDim, geometry.kvHeads * geometry.headDim];
  const seqs = [device.open(), device.open()];
  host.open();
  host.open();
  for (let step = 0; step < 160; step++) {
    const seq = seqs[step % 2]!;
    const roll = rng.float();
    if (roll < 0.02) {
      device.reset(seq);
      host.reset(seq);
    } else if (roll < 0.04) {
      device.close(seq);
      host.close(seq);
      expectSame(`close at ${step}`);
      device.open();
      host.open();
    } else if (roll < 0.1) {
      const n = 1 + Math.floor(rng.float() * 24);
      const [q, k, v] = [rows(n, q1), rows(n, kv1), rows(n, kv1)];
      for (let layer = 0; layer < geometry.layers; layer++) {
        expect(device.prefill(seq, layer, q, k, v)).toEqual(host.prefill(seq, layer, q, k, v));
      }
    } else {
      const [q, k, v] = [rows(1, q1), rows(1, kv1), rows(1, kv1)];
      for (let layer = 0; layer < geometry.layers; layer++) {
        expect(device.attend(seq, layer, q, k, v)).toEqual(host.attend(seq, layer, q, k, v));
      }
    }
    expectSame(`step ${step}`);
  }
  expect(host.stats().evictions).toBeGreaterThan(0);
}

describe('KVCache bytes from a device ledger (a stand-in for the cuda backend)', () => {
  const storage = { format: 'int4', groupSize: 8, residual: 3 } as const;
  it('packed storage: the same stats() as counting on the host, with fixed and byte budgets', () => {
    const made = ledgers.made;
    runTwins({ geometry, maxSequences: 2, storage, tracker: h2o(), policy: fixedBudget({ tokens: 40, sinks: 1, recent: 2 }) }, 1);
    runTwins({ geometry, maxSequences: 2, storage: { ...storage, format: 'int2' }, tracker: scissorhands({ window: 12 }), policy: byteBudget({ bytes: 9000, recent: 3 }) }, 2);
    runTwins({ geometry, maxSequences: 2, storage: { format: 'int8', groupSize: 16, residual: 0 }, tracker: streamingLLM(), policy: fixedBudget({ tokens: 33, sinks: 2 }) }, 3);
    expect(ledgers.made - made).toBe(3);
  });

  it('dense storage keeps counting on the host (no ledger, no launch on the decode path)', () => {
    const made = ledgers.made;
    using cache = KVCache.create({ geometry, backend: 'cuda', tracker: h2o(), policy: fixedBudget({ tokens: 16 }) });
    const seq = cache.open();
    cache.attend(seq, 0, new Float32Array(64), new Float32Array(32), new Float32Array(32));
    expect(cache.stats().bytesKV).toBe(2 * 2 * 16 * 4);
    expect(ledgers.made).toBe(made);
  });
});
