/**
 * A small seeded generator (mulberry32) for the data of generated operations: commands carry a seed,
 * and the same seed always gives the same numbers, whatever the backend or the platform.
 * @module
 */

/**
 * Deterministic pseudo-random numbers from a 32-bit seed.
 * @example
 * ```ts
 * const rng = new Rng(42);
 * rng.float(); // in [0, 1)
 * ```
 */
export class Rng {
  #state: number;

  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /**
   * The next unsigned 32-bit integer.
   * @example
   * ```ts
   * new Rng(1).uint32();
   * ```
   */
  uint32(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /**
   * A number in `[0, 1)` with 32 random bits.
   * @example
   * ```ts
   * new Rng(1).float();
   * ```
   */
  float(): number {
    return this.uint32() / 2 ** 32;
  }

  /**
   * A number in `[low, high)`.
   * @example
   * ```ts
   * new Rng(1).range(-2, 2);
   * ```
   */
  range(low: number, high: number): number {
    return low + (high - low) * this.float();
  }

  /**
   * An integer in `[0, n)`.
   * @example
   * ```ts
   * new Rng(1).int(10);
   * ```
   */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }
}
