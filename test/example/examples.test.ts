/**
 * The examples a user reads first must keep running: each is executed as a user would run it.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
const tsx = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));

function runExample(file: string, args: string[] = []): string {
  return execFileSync(tsx, [file, ...args], { cwd: root, encoding: 'utf8', timeout: 120_000 });
}

describe('examples', () => {
  it('generate.ts: generates with a full and a compressed cache and reports memory and agreement', () => {
    const out = runExample('examples/generate.ts', ['--tokens', '60', '--budget', '24']);
    expect(out).toMatch(/agree/i);
    expect(out).toMatch(/KiB/);
  });

  it('custom-tracker.ts: a TypeScript tracker and policy keep the cache within their budget', () => {
    const out = runExample('examples/custom-tracker.ts');
    const kept = /kept per head: (\d+) of (\d+) tokens seen/.exec(out);
    expect(kept).not.toBeNull();
    expect(Number(kept![1])).toBeLessThanOrEqual(96);
    expect(Number(kept![2])).toBeGreaterThan(96);
  });
});
