/**
 * The methods the quality benchmark compares: a tracker and a budget policy from the SDK's registries,
 * with options that may depend on the budget `B`.
 * @module
 */
import { policies, trackers, type BudgetPolicy, type ImportanceTracker, type PromptMethod } from '../../src/index.js';

/**
 * An option value: a number, or a string that depends on the budget `B` (tokens kept per head):
 * `"B"`, `"0.5B"` (`floor(0.5 * B)`), `"B/10"` (`floor(B / 10)`).
 */
export type OptionValue = number | string | boolean | readonly number[];

/** A method: how to build its tracker and policy at any budget. */
export interface MethodSpec {
  /** Identifier on the command line and in the results. */
  readonly name: string;
  /** What it is, in one line (for the tables). */
  readonly description: string;
  /** Registry name of the tracker (`trackers`). */
  readonly tracker: string;
  readonly trackerOptions: Readonly<Record<string, OptionValue>>;
  /** Registry name of the policy (`policies`); `fullCache` for the uncompressed baseline. */
  readonly policy: string;
  readonly policyOptions: Readonly<Record<string, OptionValue>>;
  /** Policy options that depend on the budget in ways a string cannot say (e.g. calibrated per-layer budgets). */
  readonly policyOptionsAt?: (budget: number) => Record<string, OptionValue>;
  /**
   * A different method for prompts (the cache's `prompt` option): its tracker and prompt-compression
   * policy run `prefill`, so they act only on a run's prompt prefix (`--prefix`).
   */
  readonly prompt?: {
    readonly tracker: string;
    readonly trackerOptions: Readonly<Record<string, OptionValue>>;
    readonly policy: string;
    readonly policyOptions: Readonly<Record<string, OptionValue>>;
  };
}

/**
 * The built-in configurations. `full`, `streaming`, `scissorhands`, `h2o`, `tova` and `keyNorm` are
 * the semantics of `shared/data/oracle-eviction.md` (and `reference-eval.json` for `full` and
 * `streaming`); `scissorhands-m10` is the oracle's `m=B/10` variant; `random` has no oracle.
 */
export const BUILTIN_METHODS: readonly MethodSpec[] = [
  {
    name: 'full', description: 'no eviction',
    tracker: 'streamingLLM', trackerOptions: {}, policy: 'fullCache', policyOptions: { maxTokens: 'W' },
  },
  {
    name: 'streaming', description: 'StreamingLLM: 4 sinks + the most recent rest',
    tracker: 'streamingLLM', trackerOptions: {}, policy: 'fixedBudget', policyOptions: { tokens: 'B', sinks: 4, recent: 1 },
  },
  {
    name: 'scissorhands', description: 'Scissorhands: w 400, r 10, no sinks, m 1',
    tracker: 'scissorhands', trackerOptions: { window: 400 }, policy: 'fixedBudget', policyOptions: { tokens: 'B', sinks: 0, recent: 10, drop: 1 },
  },
  {
    name: 'scissorhands-m10', description: 'Scissorhands, m = B/10 dropped at once',
    tracker: 'scissorhands', trackerOptions: { window: 400 }, policy: 'fixedBudget', policyOptions: { tokens: 'B', sinks: 0, recent: 10, drop: 'B/10' },
  },
  {
    name: 'h2o', description: 'H2O: accumulated attention, newest B/2 protected',
    tracker: 'h2o', trackerOptions: {}, policy: 'fixedBudget', policyOptions: { tokens: 'B', recent: 'B/2' },
  },
  {
    name: 'tova', description: 'TOVA: latest attention, one decision per layer',
    tracker: 'tova', trackerOptions: {}, policy: 'fixedBudget', policyOptions: { tokens: 'B', recent: 1 },
  },
  {
    name: 'keyNorm', description: 'key norm: largest-norm keys go',
    tracker: 'keyNorm', trackerOptions: {}, policy: 'fixedBudget', policyOptions: { tokens: 'B', recent: 1 },
  },
  {
    name: 'random', description: 'seeded uniform (seed 0)',
    tracker: 'random', trackerOptions: { seed: 0 }, policy: 'fixedBudget', policyOptions: { tokens: 'B', recent: 1 },
  },
  // Prompt methods compress a prompt after it is prefilled: give the run a prompt (`--prefix`), else
  // they only decode (evicting by the attention summed since the tokens entered, the 32 newest kept).
  {
    name: 'snapkv', description: 'SnapKV on the prompt (window 32, avg pool 5), then H2O-like decoding to B',
    tracker: 'snapKVScores', trackerOptions: {}, policy: 'snapKV', policyOptions: { tokens: 'B' },
  },
  {
    name: 'pyramidkv', description: 'PyramidKV on the prompt (SnapKV scores, beta 20), then per-layer budgets while decoding',
    tracker: 'snapKVScores', trackerOptions: {}, policy: 'pyramidKV', policyOptions: { tokens: 'B' },
  },
  {
    name: 'adakv', description: 'Ada-KV on the prompt (SnapKV scores, B x heads per layer, floor 20%), then per-head budgets while decoding',
    tracker: 'snapKVScores', trackerOptions: {}, policy: 'adaKV', policyOptions: { tokens: 'B' },
  },
  {
    name: 'snapkv-scissorhands', description: 'SnapKV on the prompt, then Scissorhands (w 400, r 10, m 1) while decoding',
    tracker: 'scissorhands', trackerOptions: { window: 400 }, policy: 'fixedBudget', policyOptions: { tokens: 'B', sinks: 0, recent: 10, drop: 1 },
    prompt: { tracker: 'snapKVScores', trackerOptions: {}, policy: 'snapKV', policyOptions: { tokens: 'B' } },
  },
];

/**
 * The SDK's own method: StreamingLLM eviction (4 sinks, the most recent rest) under `layerBudget`, whose
 * per-layer budgets (`layers x B` tokens in all, the memory of `fixedBudget({ tokens: B })`) come from a
 * calibration (`calibrate.ts`, `allocateLayerBudgets`): `tokensAt(B)` gives them.
 * @example
 * ```ts
 * const m = layerBudgetMethod((b) => layerTokens(calibration, b), 'ref-12m, WikiText-2 windows 16-19');
 * ```
 */
export function layerBudgetMethod(tokensAt: (budget: number) => number[], calibratedOn: string): MethodSpec {
  return {
    name: 'layerBudget',
    description: `StreamingLLM eviction with per-layer budgets calibrated on ${calibratedOn}`,
    tracker: 'streamingLLM',
    trackerOptions: {},
    policy: 'layerBudget',
    policyOptions: { sinks: 4, recent: 1 },
    policyOptionsAt: (budget) => ({ tokens: tokensAt(budget) }),
  };
}

/**
 * Resolves a budget-dependent option value: numbers stay; `"B"`, `"xB"`, `"B/x"` use the budget `B`,
 * `"W"` the window length.
 * @example
 * ```ts
 * resolveValue('B/2', 409, 2048); // 204
 * ```
 */
export function resolveValue(value: OptionValue, budget: number, window: number): number | boolean | string | readonly number[] {
  if (typeof value !== 'string') return value;
  const s = value.replace(/\s+/g, '');
  if (s === 'B') return budget;
  if (s === 'W') return window;
  let m = /^([0-9.]+)\*?B$/.exec(s);
  if (m) return Math.floor(Number(m[1]) * budget);
  m = /^B\/([0-9.]+)$/.exec(s);
  if (m) return Math.floor(budget / Number(m[1]));
  return value; // a plain string option (e.g. gqa: 'max')
}

function resolveAll(options: Readonly<Record<string, OptionValue>>, budget: number, window: number): Record<string, unknown> {
  return Object.fromEntries(Object.entries(options).map(([k, v]) => [k, resolveValue(v, budget, window)]));
}

/** A method at one budget: what to build the cache with. */
export interface Configuration {
  /** `method@budget`, e.g. `scissorhands@512` (`full` for the full cache). */
  readonly id: string;
  readonly method: MethodSpec;
  /** Tokens kept per (window, layer, KV head); the window length for `full`. */
  readonly budget: number;
  /** Compression `window / budget` (1 for full). */
  readonly compression: number;
  readonly trackerOptions: Record<string, unknown>;
  readonly policyOptions: Record<string, unknown>;
  /** The cache's tracker and policy, and its `prompt` method for composed methods. */
  make(): { tracker: ImportanceTracker; policy: BudgetPolicy; prompt?: PromptMethod };
}

/**
 * A method at budget `budget` for windows of `window` tokens.
 * @example
 * ```ts
 * const c = configure(method('h2o'), 512, 2048);
 * const { tracker, policy } = c.make();
 * ```
 */
export function configure(method: MethodSpec, budget: number, window: number): Configuration {
  const isFull = method.policy === 'fullCache';
  const b = isFull ? window : budget;
  const trackerOptions = resolveAll(method.trackerOptions, b, window);
  const policyOptions = { ...resolveAll(method.policyOptions, b, window), ...method.policyOptionsAt?.(b) };
  return {
    id: isFull ? method.name : `${method.name}@${b}`,
    method,
    budget: b,
    compression: window / b,
    trackerOptions,
    policyOptions,
    make: () => ({
      tracker: trackers.create(method.tracker, trackerOptions),
      policy: policies.create(method.policy, policyOptions),
      ...(method.prompt === undefined ? {} : {
        prompt: {
          tracker: trackers.create(method.prompt.tracker, resolveAll(method.prompt.trackerOptions, b, window)),
          policy: policies.create(method.prompt.policy, resolveAll(method.prompt.policyOptions, b, window)),
        },
      }),
    }),
  };
}

/**
 * Parses `--define name=base:{json}` (a variant of an existing method whose tracker and policy options
 * are merged with `{"tracker": {...}, "policy": {...}}`; `"trackerName"` and `"policyName"` switch the
 * factories) or `--options base:{json}` (the same change applied to a method in place).
 * @example
 * ```ts
 * derive(methods, 'sh-sinks=scissorhands:{"policy":{"sinks":4}}');
 * ```
 */
export function derive(methods: readonly MethodSpec[], text: string): MethodSpec {
  const eq = text.indexOf('=');
  const colon = text.indexOf(':', eq + 1);
  const name = eq > 0 && eq < colon ? text.slice(0, eq) : undefined;
  const baseName = text.slice(eq > 0 && eq < colon ? eq + 1 : 0, colon < 0 ? undefined : colon);
  const base = methods.find((m) => m.name === baseName);
  if (!base) throw new Error(`unknown base method '${baseName}' in '${text}' (known: ${methods.map((m) => m.name).join(', ')})`);
  const change = colon < 0 ? {} : (JSON.parse(text.slice(colon + 1)) as {
    tracker?: Record<string, OptionValue>; policy?: Record<string, OptionValue>;
    trackerName?: string; policyName?: string; description?: string;
  });
  return {
    name: name ?? base.name,
    description: change.description ?? (name ? `${base.description}; ${JSON.stringify(change)}` : base.description),
    tracker: change.trackerName ?? base.tracker,
    trackerOptions: { ...(change.trackerName ? {} : base.trackerOptions), ...change.tracker },
    policy: change.policyName ?? base.policy,
    policyOptions: { ...(change.policyName ? { tokens: 'B' } : base.policyOptions), ...change.policy },
    ...(base.policyOptionsAt && !change.policyName ? { policyOptionsAt: base.policyOptionsAt } : {}),
    ...(base.prompt === undefined ? {} : { prompt: base.prompt }),
  };
}
