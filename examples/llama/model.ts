/**
 * A Llama model's weights and its per-token math (everything except attention, which the KV cache does).
 *
 * Weights and activations live in one f32 heap over a `SharedArrayBuffer` so a worker thread can share
 * the matrix products (`parallel.ts`). Projections that read the same input are stored back to back and
 * run as one product: `q|k|v` (the rows of `q_proj`, `k_proj`, `v_proj` are contiguous in the heap) and
 * `gate|up`. HF's conventions are followed exactly: RMSNorm `w * x / sqrt(mean(x²) + eps)`, RoPE in the
 * `rotate_half` layout (dimension `i` paired with `i + headDim/2`) with f32 frequencies, SwiGLU
 * `down(silu(gate(x)) * up(x))`, output tied to the embedding unless `lm_head.weight` exists.
 * @module
 */
import { loadConfig, type LlamaConfig } from './config.js';
import { loadTensors, listTensors } from './safetensors.js';
import { matmul, type MatmulJob } from './matmul.js';
import { MatmulPool } from './parallel.js';
import { simdKernel, sharedMemory, type Kernel, type SharedMemory } from './simd.js';

/** Heap offsets of one layer's weights. */
interface LayerWeights {
  attnNorm: number;
  /** `[q + 2 kv][hidden]`: q_proj, k_proj, v_proj rows. */
  qkv: number;
  /** `[hidden][q]`. */
  o: number;
  mlpNorm: number;
  /** `[2 I][hidden]`: gate_proj then up_proj rows. */
  gateUp: number;
  /** `[hidden][I]`. */
  down: number;
}

/** Options of {@link LlamaModel.load}. */
export interface ModelOptions {
  /** Rows one forward pass can hold: the decode batch, or the prefill chunk (default 8). */
  maxRows?: number;
  /**
   * 2 shares every large matrix product with a worker thread, 1 keeps to the main thread; `'auto'`
   * (default) uses the worker when the model has at least 2M parameters (measured: below that the
   * products are too small for a second core to pay on this engine).
   */
  threads?: 1 | 2 | 'auto';
  /**
   * `'simd'`: the WebAssembly SIMD kernel (`simd.ts`), `'js'`: the plain TypeScript one (`matmul.ts`);
   * `'auto'` (default) takes SIMD where the runtime has it.
   */
  kernel?: 'simd' | 'js' | 'auto';
  /** Products smaller than this many multiply-adds stay on the main thread (default {@link MIN_SHARED_WORK}). */
  minSharedWork?: number;
}

/** Products smaller than this many multiply-adds stay on the main thread. */
export const MIN_SHARED_WORK = 1 << 15;

/** A bump allocator over a shared f32 heap. */
class HeapLayout {
  size = 0;
  take(n: number): number {
    const at = this.size;
    this.size += (n + 15) & ~15; // 64-byte aligned blocks
    return at;
  }
}

/**
 * Weights, scratch activations and the forward pass of everything but attention.
 * @example
 * ```ts
 * const model = await LlamaModel.load('models/stories260K');
 * model.config.layers; // 5
 * ```
 */
export class LlamaModel {
  /** Weights and activations; offsets below index it. */
  readonly heap: Float32Array;
  readonly embed: number;
  readonly lmHead: number;
  readonly finalNorm: number;
  readonly layerWeights: readonly LayerWeights[];
  /** Activation rows (`maxRows` of each). */
  readonly x: number;
  readonly hn: number;
  readonly qkv: number;
  readonly att: number;
  readonly gateUp: number;
  readonly act: number;
  readonly tmp: number;
  readonly logits: number;
  /** RoPE tables: `[maxPositions][headDim/2]` cosines and sines. */
  readonly cos: Float32Array;
  readonly sin: Float32Array;
  readonly parameters: number;
  /** The product kernel in use. */
  readonly kernelName: 'simd' | 'js';
  private readonly kernel: Kernel;
  private readonly memory: SharedMemory | undefined;
  private pool: MatmulPool | undefined;
  private minSharedWork = MIN_SHARED_WORK;

  private constructor(
    readonly config: LlamaConfig,
    readonly maxRows: number,
    dir: string,
    kernel: 'simd' | 'js' | 'auto',
  ) {
    const c = config;
    const q = c.heads * c.headDim;
    const kv = c.kvHeads * c.headDim;
    const L = new HeapLayout();
    const names = new Map<string, number>();
    const place = (name: string, n: number): number => {
      const at = L.take(n);
      names.set(name, at);
      return at;
    };
    const infos = new Map(listTensors(dir).map((t) => [t.name, t]));
    this.embed = place('model.embed_tokens.weight', c.vocabSize * c.hidden);
    const layers: LayerWeights[] = [];
    for (let i = 0; i < c.layers; i++) {
      const p = `model.layers.${i}.`;
      const attnNorm = place(`${p}input_layernorm.weight`, c.hidden);
      const qkv = place(`${p}self_attn.q_proj.weight`, (q + 2 * kv) * c.hidden);
      names.set(`${p}self_attn.k_proj.weight`, qkv + q * c.hidden);
      names.set(`${p}self_attn.v_proj.weight`, qkv + (q + kv) * c.hidden);
      const o = place(`${p}self_attn.o_proj.weight`, c.hidden * q);
      const mlpNorm = place(`${p}post_attention_layernorm.weight`, c.hidden);
      const gateUp = place(`${p}mlp.gate_proj.weight`, 2 * c.intermediate * c.hidden);
      names.set(`${p}mlp.up_proj.weight`, gateUp + c.intermediate * c.hidden);
      const down = place(`${p}mlp.down_proj.weight`, c.hidden * c.intermediate);
      layers.push({ attnNorm, qkv, o, mlpNorm, gateUp, down });
    }
    this.finalNorm = place('model.norm.weight', c.hidden);
    const untied = infos.has('lm_head.weight');
    this.lmHead = untied ? place('lm_head.weight', c.vocabSize * c.hidden) : this.embed;
    this.layerWeights = layers;
    this.parameters = L.size;
    const R = maxRows;
    this.x = L.take(R * c.hidden);
    this.hn = L.take(R * c.hidden);
    this.qkv = L.take(R * (q + 2 * kv));
    this.att = L.take(R * q);
    this.gateUp = L.take(R * 2 * c.intermediate);
    this.act = L.take(R * c.intermediate);
    this.tmp = L.take(R * c.hidden);
    this.logits = L.take(R * c.vocabSize);
    // The heap: a shared WebAssembly memory when the SIMD kernel runs over it, else a SharedArrayBuffer.
    const memory = kernel === 'js' ? undefined : sharedMemory(L.size);
    const simd = memory && simdKernel(memory);
    if (kernel === 'simd' && !simd) throw new Error('the WebAssembly SIMD kernel is not available here');
    this.memory = simd ? memory : undefined;
    this.kernel = simd ?? matmul;
    this.kernelName = simd ? 'simd' : 'js';
    this.heap = new Float32Array(this.memory ? this.memory.buffer : new SharedArrayBuffer(L.size * 4));

    for (const name of names.keys()) {
      if (!infos.has(name)) throw new Error(`${dir}: missing tensor ${name}`);
    }
    const loaded = loadTensors(dir, (info, length) => {
      const at = names.get(info.name);
      return at === undefined ? new Float32Array(length) : this.heap.subarray(at, at + length);
    });
    for (const [name, t] of loaded) {
      const expected = name === 'model.embed_tokens.weight' || name === 'lm_head.weight' ? [c.vocabSize, c.hidden] : undefined;
      if (expected && (t.info.shape[0] !== expected[0] || t.info.shape[1] !== expected[1])) {
        throw new Error(`${name} has shape [${t.info.shape.join(', ')}], expected [${expected.join(', ')}]`);
      }
    }

    // RoPE, as HF computes it: inv_freq and pos * inv_freq in f32, then cos and sin rounded to f32.
    const half = c.headDim / 2;
    this.cos = new Float32Array(c.maxPositions * half);
    this.sin = new Float32Array(c.maxPositions * half);
    for (let i = 0; i < half; i++) {
      const inv = Math.fround(1 / Math.fround(c.ropeTheta ** Math.fround((2 * i) / c.headDim)));
      for (let p = 0; p < c.maxPositions; p++) {
        const angle = Math.fround(p * inv);
        this.cos[p * half + i] = Math.cos(angle);
        this.sin[p * half + i] = Math.sin(angle);
      }
    }
  }

  /**
   * Loads `config.json` and the safetensors weights of a Hugging Face Llama folder.
   * @example
   * ```ts
   * const model = await LlamaModel.load('../shared/models/ref-12m', { maxRows: 8, threads: 2 });
   * ```
   */
  static async load(dir: string, options: ModelOptions = {}): Promise<LlamaModel> {
    const model = new LlamaModel(loadConfig(dir), options.maxRows ?? 8, dir, options.kernel ?? 'auto');
    model.minSharedWork = options.minSharedWork ?? MIN_SHARED_WORK;
    const threads = options.threads ?? 'auto';
    if (threads === 2 || (threads === 'auto' && model.parameters >= 2_000_000)) {
      model.pool = await MatmulPool.create(model.heap, { kernel: model.kernel, memory: model.memory });
    }
    return model;
  }

  /** Whether matrix products are shared with a worker thread. */
  get threads(): 1 | 2 {
    return this.pool ? 2 : 1;
  }

  /** `y = x · Wᵀ` over `rows` rows, on two threads when large enough. */
  project(job: MatmulJob): void {
    if (this.pool && job.rows * job.n * job.out >= this.minSharedWork) this.pool.run(job);
    else this.kernel(this.heap, job.x, job.rows, job.n, job.w, job.out, job.y, 0, job.out);
  }

  /** Copies the embeddings of `tokens` into the residual rows `x`. */
  embedTokens(tokens: ArrayLike<number>, rows: number): void {
    const { hidden, vocabSize } = this.config;
    for (let r = 0; r < rows; r++) {
      const t = tokens[r]!;
      if (!Number.isInteger(t) || t < 0 || t >= vocabSize) throw new RangeError(`token ${t} is outside the vocabulary (0..${vocabSize - 1})`);
      this.heap.copyWithin(this.x + r * hidden, this.embed + t * hidden, this.embed + (t + 1) * hidden);
    }
  }

  /** `hn = rmsnorm(x) * weight`, row by row. */
  rmsNorm(weight: number, rows: number): void {
    const { hidden: d, eps } = this.config;
    const h = this.heap;
    for (let r = 0; r < rows; r++) {
      const src = this.x + r * d;
      const dst = this.hn + r * d;
      let ss = 0;
      for (let i = 0; i < d; i++) ss += h[src + i]! * h[src + i]!;
      const scale = 1 / Math.sqrt(Math.fround(ss / d) + eps);
      for (let i = 0; i < d; i++) h[dst + i] = h[weight + i]! * Math.fround(h[src + i]! * scale);
    }
  }

  /**
   * Rotates `heads` head vectors at `src` (heap) by position `pos` into `dst` (HF `rotate_half`:
   * `out[i] = x[i] cos - x[i + d/2] sin`, `out[i + d/2] = x[i + d/2] cos + x[i] sin`).
   */
  rope(src: number, heads: number, pos: number, dst: Float32Array, dstOffset: number): void {
    const d = this.config.headDim;
    const half = d / 2;
    const h = this.heap;
    const t = pos * half;
    for (let head = 0; head < heads; head++) {
      const s = src + head * d;
      const o = dstOffset + head * d;
      for (let i = 0; i < half; i++) {
        const c = this.cos[t + i]!;
        const sn = this.sin[t + i]!;
        const a = h[s + i]!;
        const b = h[s + i + half]!;
        dst[o + i] = a * c - b * sn;
        dst[o + i + half] = b * c + a * sn;
      }
    }
  }

  /** `x += (rows of heap at src) `, the residual connection. */
  addResidual(src: number, rows: number): void {
    const n = rows * this.config.hidden;
    const h = this.heap;
    for (let i = 0; i < n; i++) h[this.x + i] = h[this.x + i]! + h[src + i]!;
  }

  /** The MLP block on `rows` rows: `x += down(silu(gate(hn)) * up(hn))`, `hn` being `rmsnorm(x)`. */
  mlp(layer: number, rows: number): void {
    const c = this.config;
    const w = this.layerWeights[layer]!;
    const I = c.intermediate;
    this.rmsNorm(w.mlpNorm, rows);
    this.project({ x: this.hn, rows, n: c.hidden, w: w.gateUp, out: 2 * I, y: this.gateUp });
    const h = this.heap;
    for (let r = 0; r < rows; r++) {
      const g = this.gateUp + r * 2 * I;
      const a = this.act + r * I;
      for (let i = 0; i < I; i++) {
        const z = h[g + i]!;
        h[a + i] = (z / (1 + Math.exp(-z))) * h[g + I + i]!;
      }
    }
    this.project({ x: this.act, rows, n: I, w: w.down, out: c.hidden, y: this.tmp });
    this.addResidual(this.tmp, rows);
  }

  /** Final norm and output projection: logits rows at `this.logits`. */
  head(rows: number): void {
    const c = this.config;
    this.rmsNorm(this.finalNorm, rows);
    this.project({ x: this.hn, rows, n: c.hidden, w: this.lmHead, out: c.vocabSize, y: this.logits });
  }

  /** Stops the worker thread, if any. Idempotent. */
  close(): void {
    this.pool?.close();
    this.pool = undefined;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
