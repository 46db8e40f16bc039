import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'src/index.ts', testing: 'src/testing/index.ts' },
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  clean: true,
  // One shared chunk for both entries, so `scissorhands` and `scissorhands/testing` share KvError and friends in CJS too.
  splitting: true,
  shims: true,
  target: 'node20',
  external: ['fast-check'],
});
