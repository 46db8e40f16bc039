/**
 * Named factories (the idea of tfjs' kernel registry): trackers and policies can be chosen by name,
 * for example from a configuration file, and users can add their own beside the built-ins.
 * @module
 */
import { ArgumentError } from './errors.js';

/**
 * A factory a registry can hold: an options object (required or optional) in, one instance out. Factories must
 * validate their options at run time, since {@link Registry.create} passes whatever it is given.
 */
export type Factory<T> = (options: never) => T;

/**
 * A map from names to factories of `T`. `Known` types the built-ins, so `get('h2o')` returns the
 * `h2o` factory with its own options type; other names give a factory that takes `unknown` options.
 *
 * @example
 * ```ts
 * const shapes = new Registry<Shape, { square: typeof square }>('shape', { square });
 * shapes.get('square')({ side: 2 });
 * shapes.register('circle', (o?: { radius?: number }) => circle(o));
 * shapes.create('circle', { radius: 1 });
 * ```
 */
export class Registry<T, Known extends { readonly [K in keyof Known]: Factory<T> }> {
  readonly #factories = new Map<string, (options?: unknown) => T>();
  /** What the registry holds, used in error messages (`'tracker'`, `'policy'`). */
  readonly what: string;

  /** Creates a registry holding `builtins` under their keys. */
  constructor(what: string, builtins: Known) {
    this.what = what;
    for (const name of Object.keys(builtins) as (keyof Known & string)[]) this.register(name, builtins[name]);
  }

  /**
   * Adds a factory under a new name; throws {@link ArgumentError} (`name`) if the name is empty or taken.
   * @example
   * ```ts
   * trackers.register('lastSeen', () => lastSeen);
   * ```
   */
  register<O>(name: string, factory: (options: O) => T): void {
    if (typeof name !== 'string' || name.length === 0) throw new ArgumentError('expected a non-empty string', 'name');
    if (typeof factory !== 'function') throw new ArgumentError('expected a function', 'factory');
    if (this.#factories.has(name)) throw new ArgumentError(`a ${this.what} named '${name}' is already registered`, 'name');
    this.#factories.set(name, factory as (options?: unknown) => T);
  }

  /**
   * The factory registered under `name`; throws {@link ArgumentError} (`name`) listing the known names.
   * @example
   * ```ts
   * const make = trackers.get('scissorhands');
   * const tracker = make({ window: 200 });
   * ```
   */
  get<N extends keyof Known & string>(name: N): Known[N];
  get(name: string): (options?: unknown) => T;
  get(name: string): Factory<T> {
    const factory = this.#factories.get(name);
    if (factory === undefined) {
      throw new ArgumentError(`no ${this.what} named '${String(name)}'; known: ${this.names().join(', ')}`, 'name');
    }
    return factory;
  }

  /**
   * Makes an instance by name: `get(name)(options)`.
   * @example
   * ```ts
   * const policy = policies.create('fixedBudget', { tokens: 512 });
   * ```
   */
  create(name: string, options?: unknown): T {
    return this.get(name)(options);
  }

  /**
   * Whether a factory is registered under `name`.
   * @example
   * ```ts
   * trackers.has('h2o'); // true
   * ```
   */
  has(name: string): boolean {
    return this.#factories.has(name);
  }

  /**
   * The registered names, in registration order.
   * @example
   * ```ts
   * trackers.names(); // ['scissorhands', 'h2o', 'tova', ...]
   * ```
   */
  names(): string[] {
    return [...this.#factories.keys()];
  }
}
