/**
 * The quality plot as a standalone SVG (no dependencies): perplexity against compression, one line
 * with markers per method, every line starting from the full cache at compression 1.
 * @module
 */

/** One method's points: compression (x) and perplexity (y). */
export interface Series {
  readonly label: string;
  readonly points: readonly { readonly x: number; readonly y: number }[];
  /** Drawn thicker (the method the benchmark singles out). */
  readonly highlight?: boolean;
}

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
const MARKERS = ['circle', 'square', 'triangle', 'diamond', 'circle', 'square', 'triangle', 'diamond', 'circle', 'square'] as const;

function escape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Round tick steps (1, 2, 5 x 10^k) giving about `count` ticks over `[lo, hi]`. */
export function niceTicks(lo: number, hi: number, count = 6): number[] {
  const raw = (hi - lo) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power;
  const ticks: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function marker(kind: (typeof MARKERS)[number], x: number, y: number, color: string, r: number): string {
  const p = (n: number): string => n.toFixed(1);
  switch (kind) {
    case 'circle': return `<circle cx="${p(x)}" cy="${p(y)}" r="${r}" fill="${color}"/>`;
    case 'square': return `<rect x="${p(x - r)}" y="${p(y - r)}" width="${2 * r}" height="${2 * r}" fill="${color}"/>`;
    case 'triangle': return `<polygon points="${p(x)},${p(y - r * 1.2)} ${p(x - r * 1.1)},${p(y + r * 0.8)} ${p(x + r * 1.1)},${p(y + r * 0.8)}" fill="${color}"/>`;
    case 'diamond': return `<polygon points="${p(x)},${p(y - r * 1.3)} ${p(x - r * 1.1)},${p(y)} ${p(x)},${p(y + r * 1.3)} ${p(x + r * 1.1)},${p(y)}" fill="${color}"/>`;
  }
}

/**
 * Draws the series on a logarithmic x axis. The y axis goes up to `clipFactor` (default 1.25) times the
 * smallest of the per-series maxima, so that the close methods stay readable; points above it (e.g. key
 * norm's) are drawn on the top edge as open markers, their values listed under the edge.
 * @example
 * ```ts
 * writeFileSync('quality.svg', plotSvg({ title: 'ref-12m', series }));
 * ```
 */
export function plotSvg(options: {
  title: string; subtitle?: string; series: readonly Series[]; xLabel?: string; yLabel?: string;
  /** x ticks (default: every x of the points, for series measured at the same nominal compressions). */
  xTicks?: readonly number[];
  reference?: number; clipFactor?: number; width?: number; height?: number;
}): string {
  const width = options.width ?? 760;
  const height = options.height ?? 480;
  const m = { left: 70, right: 200, top: 56, bottom: 56 };
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const all = options.series.flatMap((s) => s.points);
  const xs = all.map((p) => p.x);
  const xMin = Math.min(1, ...xs);
  const xMax = Math.max(...xs);
  const maxima = options.series.map((s) => Math.max(...s.points.map((p) => p.y)));
  const limit = Math.min(...maxima) * (options.clipFactor ?? 1.25);
  const inRange = all.map((p) => p.y).filter((y) => y <= limit);
  const yLo0 = Math.min(...inRange, options.reference ?? Infinity);
  const yHi0 = Math.max(...inRange);
  const pad = (yHi0 - yLo0) * 0.06 || 1;
  const yTicks = niceTicks(yLo0 - pad, yHi0 + pad, 7);
  const yLo = Math.min(yTicks[0]!, yLo0 - pad);
  const yHi = Math.max(yTicks[yTicks.length - 1]!, yHi0 + pad);
  const X = (x: number): number => m.left + (Math.log(x / xMin) / (Math.log(xMax / xMin) || 1)) * plotW;
  const Y = (y: number): number => m.top + (1 - (Math.min(y, yHi) - yLo) / (yHi - yLo || 1)) * plotH;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  out.push(`<text x="${m.left}" y="22" font-size="15" font-weight="bold">${escape(options.title)}</text>`);
  if (options.subtitle) out.push(`<text x="${m.left}" y="40" fill="#555">${escape(options.subtitle)}</text>`);
  // Grid and ticks.
  for (const t of yTicks) {
    if (t < yLo || t > yHi) continue;
    out.push(`<line x1="${m.left}" x2="${m.left + plotW}" y1="${Y(t).toFixed(1)}" y2="${Y(t).toFixed(1)}" stroke="#e6e6e6"/>`);
    out.push(`<text x="${m.left - 8}" y="${(Y(t) + 4).toFixed(1)}" text-anchor="end">${t}</text>`);
  }
  const xTicks = (options.xTicks ?? [...new Set(xs)].sort((a, b) => a - b)).filter((t) => t >= xMin && t <= xMax * 1.0001);
  for (const t of xTicks) {
    out.push(`<line x1="${X(t).toFixed(1)}" x2="${X(t).toFixed(1)}" y1="${m.top}" y2="${m.top + plotH}" stroke="#f0f0f0"/>`);
    out.push(`<line x1="${X(t).toFixed(1)}" x2="${X(t).toFixed(1)}" y1="${m.top + plotH}" y2="${m.top + plotH + 5}" stroke="#333"/>`);
    out.push(`<text x="${X(t).toFixed(1)}" y="${m.top + plotH + 19}" text-anchor="middle">${t === 1 ? 'full' : `${Number(t.toFixed(2))}x`}</text>`);
  }
  out.push(`<rect x="${m.left}" y="${m.top}" width="${plotW}" height="${plotH}" fill="none" stroke="#333"/>`);
  out.push(`<text x="${m.left + plotW / 2}" y="${height - 14}" text-anchor="middle">${escape(options.xLabel ?? 'compression: context / tokens kept per head (log scale)')}</text>`);
  out.push(`<text transform="translate(18 ${m.top + plotH / 2}) rotate(-90)" text-anchor="middle">${escape(options.yLabel ?? 'perplexity')}</text>`);
  if (options.reference !== undefined) {
    out.push(`<line x1="${m.left}" x2="${m.left + plotW}" y1="${Y(options.reference).toFixed(1)}" y2="${Y(options.reference).toFixed(1)}" stroke="#000" stroke-dasharray="5 4" stroke-width="1"/>`);
  }
  // Series; values above the axis are listed under the top edge, one line per series, at their x.
  const clippedAt = new Map<number, number>();
  options.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length]!;
    const kind = MARKERS[i % MARKERS.length]!;
    const pts = [...s.points].sort((a, b) => a.x - b.x);
    const w = s.highlight ? 3 : 1.6;
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="${w}" points="${pts.map((p) => `${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join(' ')}"/>`);
    for (const p of pts) {
      if (p.y > yHi) {
        // Labels within 40 px of each other stack (measured x values of packed runs differ slightly).
        const bucket = Math.round(X(p.x) / 40);
        const k = clippedAt.get(bucket) ?? 0;
        clippedAt.set(bucket, k + 1);
        const anchor = X(p.x) > m.left + plotW - 30 ? 'end' : 'start';
        const dx = anchor === 'end' ? -6 : 6;
        out.push(`<circle cx="${X(p.x).toFixed(1)}" cy="${Y(p.y).toFixed(1)}" r="4" fill="white" stroke="${color}" stroke-width="1.5"/>`);
        out.push(`<text x="${(X(p.x) + dx).toFixed(1)}" y="${(Y(p.y) + 16 + 12 * k).toFixed(1)}" text-anchor="${anchor}" fill="${color}" font-size="10">${p.y >= 100 ? p.y.toFixed(0) : p.y.toPrecision(3)}</text>`);
      } else {
        out.push(marker(kind, X(p.x), Y(p.y), color, s.highlight ? 4.5 : 3.5));
      }
    }
    // Legend.
    const ly = m.top + 8 + i * 20;
    const lx = m.left + plotW + 16;
    out.push(`<line x1="${lx}" x2="${lx + 26}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="${w}"/>`);
    out.push(marker(kind, lx + 13, ly, color, 3.5));
    out.push(`<text x="${lx + 32}" y="${ly + 4}"${s.highlight ? ' font-weight="bold"' : ''}>${escape(s.label)}</text>`);
  });
  if (options.reference !== undefined) {
    const ly = m.top + 8 + options.series.length * 20;
    const lx = m.left + plotW + 16;
    out.push(`<line x1="${lx}" x2="${lx + 26}" y1="${ly}" y2="${ly}" stroke="#000" stroke-dasharray="5 4"/>`);
    out.push(`<text x="${lx + 32}" y="${ly + 4}">full cache</text>`);
  }
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
