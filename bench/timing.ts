/**
 * Timing helpers shared by the benchmarks: medians, host wall-clock timing, and this machine's read
 * bandwidth (the baseline the CPU benchmarks report against).
 * @module
 */
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The median (the upper one for an even count). */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Median wall-clock milliseconds of `n` calls of `fn`. */
export function time(fn: () => void, n: number): number {
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    fn();
    samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return median(samples);
}

/** Best read bandwidth over 1..cores threads, from a small C++ program (bench/bandwidth.cc) built for this machine. */
export function measureBandwidth(): { gbps: number; perThreads: Record<string, number> } {
  const exe = join(tmpdir(), 'scissorhands-bandwidth');
  execFileSync('g++', ['-O3', '-march=native', '-pthread', join(dirname(fileURLToPath(import.meta.url)), 'bandwidth.cc'), '-o', exe]);
  const result = JSON.parse(execFileSync(exe, ['1024', '5']).toString()) as { threads: Record<string, number> };
  return { gbps: Math.max(...Object.values(result.threads)), perThreads: result.threads };
}
