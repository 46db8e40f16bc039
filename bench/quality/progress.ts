/**
 * A progress bar on stderr: redrawn in place on a terminal, one line every `interval` seconds otherwise
 * (so that a log file of a background run stays readable).
 * @module
 */

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

/**
 * Tokens done out of a total, with rate and time left.
 * @example
 * ```ts
 * const bar = new Progress(32768 * 7, 'budget 512');
 * bar.update(4096);
 * bar.done();
 * ```
 */
export class Progress {
  readonly #start = performance.now();
  #last = 0;
  #done = 0;
  readonly #tty: boolean;

  constructor(readonly total: number, public label = '', readonly interval = 15, readonly stream: NodeJS.WriteStream = process.stderr) {
    this.#tty = stream.isTTY === true;
  }

  /** Sets the tokens done so far. */
  update(done: number): void {
    this.#done = done;
    const now = performance.now();
    if (now - this.#last < (this.#tty ? 250 : this.interval * 1000)) return;
    this.#last = now;
    this.#draw(now);
  }

  /** Draws the final state and ends the line. */
  done(): void {
    this.#draw(performance.now());
    if (this.#tty) this.stream.write('\n');
  }

  #draw(now: number): void {
    const seconds = (now - this.#start) / 1000;
    const rate = this.#done / Math.max(seconds, 1e-9);
    const fraction = this.total > 0 ? this.#done / this.total : 1;
    const width = 30;
    const filled = Math.round(fraction * width);
    const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
    const line = `${bar} ${(100 * fraction).toFixed(1).padStart(5)}% ${this.#done.toLocaleString('en-US')}/${this.total.toLocaleString('en-US')} tokens`
      + ` ${rate.toFixed(0)} tok/s, ${duration(seconds)} elapsed, ${duration((this.total - this.#done) / rate)} left ${this.label}`;
    this.stream.write(this.#tty ? `\r${line}\x1b[K` : `${line}\n`);
  }
}
