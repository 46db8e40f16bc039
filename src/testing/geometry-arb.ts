/**
 * The {@link geometryArb} arbitrary.
 * @module
 */
import * as fc from 'fast-check';
import type { Geometry } from '../core/geometry.js';

/**
 * Constraints of {@link geometryArb}.
 * @example
 * ```ts
 * const c: GeometryConstraints = { maxLayers: 2, maxHeadDim: 64 };
 * ```
 */
export interface GeometryConstraints {
  /** Most layers; default 3. */
  readonly maxLayers?: number;
  /** Most KV heads; default 3. */
  readonly maxKvHeads?: number;
  /** Most query heads per KV head (the GQA group); default 3. */
  readonly maxGroup?: number;
  /** Largest head size; default 33. */
  readonly maxHeadDim?: number;
}

/**
 * Small attention geometries for fast tests: 1 to 3 layers, 1 to 3 KV heads, GQA groups of 1 to 3
 * (so multi-head, grouped and multi-query attention all appear), and head sizes that mix the usual
 * powers of two with odd ones (1, 3, 5, 7, 17, 33) that catch vectorised loops without a tail.
 *
 * @example
 * ```ts
 * import fc from 'fast-check';
 * import { geometryArb } from 'scissorhands/testing';
 * fc.assert(fc.property(geometryArb(), (g) => g.queryHeads % g.kvHeads === 0));
 * ```
 */
export function geometryArb(constraints: GeometryConstraints = {}): fc.Arbitrary<Geometry> {
  const maxLayers = constraints.maxLayers ?? 3;
  const maxKvHeads = constraints.maxKvHeads ?? 3;
  const maxGroup = constraints.maxGroup ?? 3;
  const maxHeadDim = constraints.maxHeadDim ?? 33;
  const usual = [1, 2, 3, 4, 5, 7, 8, 16, 17, 32, 33, 64, 128].filter((d) => d <= maxHeadDim);
  const headDim = fc.oneof(
    { arbitrary: fc.constantFrom(...usual), weight: 3 },
    { arbitrary: fc.integer({ min: 1, max: maxHeadDim }), weight: 1 },
  );
  return fc
    .record({
      layers: fc.integer({ min: 1, max: maxLayers }),
      kvHeads: fc.integer({ min: 1, max: maxKvHeads }),
      group: fc.integer({ min: 1, max: maxGroup }),
      headDim,
    })
    .map(({ layers, kvHeads, group, headDim: d }): Geometry => ({ layers, queryHeads: kvHeads * group, kvHeads, headDim: d }));
}
