/**
 * Validation of the options objects that factories take. Options are strict: an unknown key is an
 * error, so that a typo such as `{ windw: 100 }` fails loudly instead of silently running the default.
 * @module
 */
import { ArgumentError } from './errors.js';
import { checkInt } from './geometry.js';

/** A validated options object: its keys are all known to the factory. */
export type OptionBag = Readonly<Record<string, unknown>>;

/**
 * Checks that `value` is an options object (or `undefined`, read as `{}`) whose keys are all in `known`.
 * Throws {@link ArgumentError} naming `options`, or naming the first unknown key.
 * @example
 * ```ts
 * const o = readOptions(options, ['window', 'gqa']);
 * ```
 */
export function readOptions(value: unknown, known: readonly string[]): OptionBag {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ArgumentError(`expected an options object, got ${String(value)}`, 'options');
  }
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) {
      const expected = known.length === 0 ? 'none' : known.join(', ');
      throw new ArgumentError(`unknown option (known options: ${expected})`, key);
    }
  }
  return value as OptionBag;
}

/**
 * Reads an integer option, `fallback` when absent; throws {@link ArgumentError} naming the option when
 * it is not an integer in `[min, max]`.
 * @example
 * ```ts
 * const window = intOption(o, 'window', 400, 1, 65536);
 * ```
 */
export function intOption(options: OptionBag, name: string, fallback: number, min: number, max = 2 ** 31 - 1): number {
  const value = options[name];
  return value === undefined ? fallback : checkInt(value, name, min, max);
}

/**
 * Reads an option that must be one of `choices`, `fallback` when absent; throws {@link ArgumentError}
 * naming the option otherwise.
 * @example
 * ```ts
 * const gqa = choiceOption(o, 'gqa', 'mean', ['mean', 'max'] as const);
 * ```
 */
export function choiceOption<T extends string>(options: OptionBag, name: string, fallback: T, choices: readonly T[]): T {
  const value = options[name];
  if (value === undefined) return fallback;
  if (typeof value === 'string' && (choices as readonly string[]).includes(value)) return value as T;
  throw new ArgumentError(`expected one of ${choices.map((c) => `'${c}'`).join(', ')}, got ${String(value)}`, name);
}
