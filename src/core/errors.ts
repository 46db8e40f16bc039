/**
 * Typed errors with stable codes. Every public entry point throws one of these (never a bare `Error`),
 * and names the offending argument, so callers can branch on `code` rather than on message text.
 * @module
 */

/** Stable error codes. The string values are part of the public API and never change meaning. */
export const KvErrorCode = {
  /** An argument has the wrong length or shape for the cache's geometry. */
  Shape: 'KV_SHAPE',
  /** An argument has an element type the operation does not accept. */
  DType: 'KV_DTYPE',
  /** An argument is out of range or otherwise invalid (not a shape or dtype problem). */
  Argument: 'KV_ARGUMENT',
  /** A budget cannot be honoured: smaller than the protected windows, or no room left. */
  Budget: 'KV_BUDGET',
  /** The sequence id is not open in this cache. */
  Sequence: 'KV_SEQUENCE',
  /** All sequence slots are in use. */
  Capacity: 'KV_CAPACITY',
  /** The object was used after `dispose()`. */
  Disposed: 'KV_DISPOSED',
  /** The native backend reported a failure, or a requested backend is not available. */
  Backend: 'KV_BACKEND',
  /** The native addon could not be found or loaded. */
  Load: 'KV_LOAD',
} as const;

/** One of the stable {@link KvErrorCode} values. */
export type KvErrorCode = (typeof KvErrorCode)[keyof typeof KvErrorCode];

/**
 * Base class of every error the SDK throws.
 *
 * @example
 * ```ts
 * import { KvError, KvErrorCode } from 'scissorhands';
 * try {
 *   cache.attend(seq, 99, q, k, v);
 * } catch (e) {
 *   if (e instanceof KvError && e.code === KvErrorCode.Argument) console.error(e.argument, e.message);
 * }
 * ```
 */
export class KvError extends Error {
  /** Stable machine-readable code. */
  readonly code: KvErrorCode;
  /** Name of the argument at fault, when there is one. */
  readonly argument: string | undefined;

  constructor(code: KvErrorCode, message: string, argument?: string, options?: ErrorOptions) {
    super(argument === undefined ? message : `${argument}: ${message}`, options);
    this.code = code;
    this.argument = argument;
    this.name = new.target.name;
  }
}

/**
 * Wrong length or shape of an array argument.
 * @example
 * ```ts
 * throw new ShapeError('expected 256 elements, got 128', 'q');
 * ```
 */
export class ShapeError extends KvError {
  constructor(message: string, argument?: string) {
    super(KvErrorCode.Shape, message, argument);
  }
}

/**
 * Wrong element type of an array argument, or an unknown dtype name.
 * @example
 * ```ts
 * throw new DTypeError('expected Float32Array', 'k');
 * ```
 */
export class DTypeError extends KvError {
  constructor(message: string, argument?: string) {
    super(KvErrorCode.DType, message, argument);
  }
}

/**
 * An argument out of range or otherwise invalid.
 * @example
 * ```ts
 * throw new ArgumentError('must be a non-negative integer', 'layer');
 * ```
 */
export class ArgumentError extends KvError {
  constructor(message: string, argument?: string) {
    super(KvErrorCode.Argument, message, argument);
  }
}

/**
 * A budget that cannot be honoured.
 * @example
 * ```ts
 * throw new BudgetError('budget 8 is smaller than sinks + recent = 14', 'tokens');
 * ```
 */
export class BudgetError extends KvError {
  constructor(message: string, argument?: string) {
    super(KvErrorCode.Budget, message, argument);
  }
}

/**
 * A sequence id that is not open in the cache.
 * @example
 * ```ts
 * throw new SequenceError('sequence 3 is not open', 'seq');
 * ```
 */
export class SequenceError extends KvError {
  constructor(message: string, argument?: string) {
    super(KvErrorCode.Sequence, message, argument);
  }
}

/**
 * No free sequence slot.
 * @example
 * ```ts
 * throw new CapacityError('all 4 sequence slots are open');
 * ```
 */
export class CapacityError extends KvError {
  constructor(message: string, argument?: string) {
    super(KvErrorCode.Capacity, message, argument);
  }
}

/**
 * Use of an object after `dispose()`.
 * @example
 * ```ts
 * throw new DisposedError('KVCache');
 * ```
 */
export class DisposedError extends KvError {
  constructor(what: string) {
    super(KvErrorCode.Disposed, `${what} was used after dispose()`);
  }
}

/**
 * A native backend failure, or a backend that is not available here.
 * @example
 * ```ts
 * throw new BackendError('the cuda backend is not available: no device', 'backend');
 * ```
 */
export class BackendError extends KvError {
  constructor(message: string, argument?: string, options?: ErrorOptions) {
    super(KvErrorCode.Backend, message, argument, options);
  }
}

/**
 * The native addon could not be found or loaded; the message says what to do.
 * @example
 * ```ts
 * throw new LoadError('no addon found; run `npm rebuild scissorhands`');
 * ```
 */
export class LoadError extends KvError {
  constructor(message: string, options?: ErrorOptions) {
    super(KvErrorCode.Load, message, undefined, options);
  }
}
