/**
 * Statistics of the quality benchmark: perplexity from per-window mean NLLs, and paired differences
 * between two configurations with a Student t confidence interval over windows.
 * @module
 */

/** Mean of an array (NaN for an empty one). */
export function mean(values: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i]!;
  return sum / values.length;
}

/**
 * Perplexity of equal-length windows: `exp` of the mean of their mean NLLs (the token-level mean, since
 * every window scores the same number of tokens).
 * @example
 * ```ts
 * perplexity([4.66, 4.85]); // exp(4.755)
 * ```
 */
export function perplexity(perWindowMeanNll: readonly number[]): number {
  return Math.exp(mean(perWindowMeanNll));
}

/** `ln Γ(x)` (Lanczos, g = 7, 9 terms; about 15 significant digits for x > 0). */
function logGamma(x: number): number {
  const c = [
    0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
    12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
  ];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - logGamma(1 - x);
  x -= 1;
  let a = c[0]!;
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i]! / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

/** Continued fraction of the regularised incomplete beta function (modified Lentz). */
function betaContinuedFraction(a: number, b: number, x: number): number {
  const tiny = 1e-300;
  let c = 1;
  let d = 1 - ((a + b) * x) / (a + 1);
  if (Math.abs(d) < tiny) d = tiny;
  d = 1 / d;
  let h = d;
  for (let m = 1; m <= 300; m++) {
    const m2 = 2 * m;
    let aa = (m * (b - m) * x) / ((a + m2 - 1) * (a + m2));
    d = 1 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    h *= d * c;
    aa = (-(a + m) * (a + b + m) * x) / ((a + m2) * (a + m2 + 1));
    d = 1 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < 1e-15) break;
  }
  return h;
}

/** Regularised incomplete beta function `I_x(a, b)`. */
function incompleteBeta(x: number, a: number, b: number): number {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const front = Math.exp(logGamma(a + b) - logGamma(a) - logGamma(b) + a * Math.log(x) + b * Math.log(1 - x));
  return x < (a + 1) / (a + b + 2)
    ? (front * betaContinuedFraction(a, b, x)) / a
    : 1 - (front * betaContinuedFraction(b, a, 1 - x)) / b;
}

/**
 * Cumulative distribution function of Student's t with `df` degrees of freedom.
 * @example
 * ```ts
 * studentTCdf(2.131, 15); // about 0.975
 * ```
 */
export function studentTCdf(t: number, df: number): number {
  const tail = 0.5 * incompleteBeta(df / (df + t * t), df / 2, 0.5);
  return t >= 0 ? 1 - tail : tail;
}

/**
 * The `p` quantile of Student's t with `df` degrees of freedom (bisection on the CDF to 1e-12).
 * @example
 * ```ts
 * studentTQuantile(0.975, 15); // 2.1314...
 * ```
 */
export function studentTQuantile(p: number, df: number): number {
  if (!(p > 0 && p < 1) || !(df > 0)) return NaN;
  let lo = -1e3;
  let hi = 1e3;
  for (let i = 0; i < 200 && hi - lo > 1e-12; i++) {
    const mid = (lo + hi) / 2;
    if (studentTCdf(mid, df) < p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/** A paired comparison of two configurations over the same windows. */
export interface PairedDifference {
  /** Windows compared. */
  readonly n: number;
  /** Mean over windows of `a - b` (per-window mean NLL, nats). */
  readonly meanNll: number;
  /** Sample standard deviation of the per-window differences (nats). */
  readonly sdNll: number;
  /** 95% t-interval of the mean difference (nats); NaN with fewer than 2 windows. */
  readonly loNll: number;
  readonly hiNll: number;
  /** The same in percent of perplexity: `100 (exp(d) - 1)`. */
  readonly pct: number;
  readonly loPct: number;
  readonly hiPct: number;
}

/**
 * Paired difference of per-window mean NLLs `a - b` with a two-sided `level` (default 95%) Student t
 * interval over windows, also expressed as a percent change of perplexity (`exp(mean difference)` is
 * exactly the ratio of the two perplexities, since windows have equal length).
 * @example
 * ```ts
 * const d = pairedDifference(method.perWindow, full.perWindow);
 * `${d.pct.toFixed(1)}% [${d.loPct.toFixed(1)}, ${d.hiPct.toFixed(1)}]`;
 * ```
 */
export function pairedDifference(a: readonly number[], b: readonly number[], level = 0.95): PairedDifference {
  const n = Math.min(a.length, b.length);
  const d = Array.from({ length: n }, (_, i) => a[i]! - b[i]!);
  const m = mean(d);
  const variance = n > 1 ? d.reduce((s, x) => s + (x - m) ** 2, 0) / (n - 1) : NaN;
  const sd = Math.sqrt(variance);
  const half = n > 1 ? studentTQuantile(1 - (1 - level) / 2, n - 1) * (sd / Math.sqrt(n)) : NaN;
  const pct = (x: number): number => 100 * Math.expm1(x);
  return { n, meanNll: m, sdNll: sd, loNll: m - half, hiNll: m + half, pct: pct(m), loPct: pct(m - half), hiPct: pct(m + half) };
}
