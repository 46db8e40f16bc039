/**
 * Shared dispose bookkeeping: idempotent `dispose()` and a typed error on use after it.
 * @module
 */
import { DisposedError } from './errors.js';

/**
 * Tracks whether an object was disposed.
 * @example
 * ```ts
 * const life = new Lifetime('KVCache');
 * life.check();   // fine
 * life.end();     // true the first time, false after
 * life.check();   // throws DisposedError
 * ```
 */
export class Lifetime {
  #ended = false;
  constructor(private readonly what: string) {}

  /** Whether `end()` was called. */
  get ended(): boolean {
    return this.#ended;
  }

  /** Throws {@link DisposedError} once ended. */
  check(): void {
    if (this.#ended) throw new DisposedError(this.what);
  }

  /** Marks the end; returns whether this call ended it (so cleanup runs once). */
  end(): boolean {
    if (this.#ended) return false;
    this.#ended = true;
    return true;
  }
}
