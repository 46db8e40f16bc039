// Decode attention (one query row per sequence) over the kept tokens, split over the key length so one
// sequence fills the card (flash-decoding), with the tracker fed in the same launch:
//
//  decode_split / decode_stream (dense) and decode_packed: block (split, KV head x query batch, sequence)
//  streams its share of the head's keys and values once for all the group's query heads (GQA): an online
//  softmax per query, the raw scores written to scratch for the tracker, and a partial output with its
//  running max and sum. Then finish_decode merges the partials into the output and gives each kept token
//  its probability per query head, GQA-combined, to the tracker rule. When a head's keys are split over
//  several blocks, the launch is cooperative and the head's blocks meet at a barrier, then share that
//  work: each merges a slice of the output channels and observes its own keys. (Without the barrier the
//  merge and the observation need a second kernel: at batch 1 x 32 heads x 4096 its launch gap and tail
//  cost a quarter of the decode on an H100.) A grid larger than one wave cannot wait, so there the last
//  of a head's blocks to finish does both alone.
//
// The clock: every block reads steps[seq] as the observation's step; the last block of the sequence to
// finish advances it.
//
// attend (dense stores) appends the token it attends in the same launch: the split block whose key range
// holds the new slot writes the key, value and tracker state there before reading its keys, and every
// block counts the token in the head's length. No block may write lengths while others read it, so the
// new length is published once the head's blocks have met (finish_decode). Saves the append's launch.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "internal.cuh"
#include "packing.cuh"

namespace sh::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kTile = 128;

struct SeqList {
  int32_t ids[kMaxBatch];
};

// The token an attend appends (kernel argument of the split kernels; unused by a plain decode).
struct FusedAppend {
  int32_t* positions;
  int32_t* error;
  Tensor k;
  Tensor v;
  int32_t aux_words;
  int32_t first_position;
  uint32_t layer;
};

struct DecodeParams {
  const uint8_t* keys;
  const uint8_t* values;
  int32_t* lengths;  // written once per head by an attend (finish_decode)
  double* steps;
  float* scratch;
  float* partial;
  Tensor q;
  HeadMap heads;
  int32_t kv_heads;
  // Scratch rows per query head (the store's capacity).
  int32_t capacity;
  int32_t group;
  int32_t gbatches;
  int32_t scratch_heads;
  int32_t max_splits;
  int32_t splits;
  int32_t chunk;
  float scale;
  SeqList seqs;
  // Packed stores: the packed arrays (decode_packed); unused by the dense kernels.
  PackedArgs pk;
  // What finish_decode needs: the output, the tracker state and rule, the meeting points (Store::sync).
  float* scores;
  uint32_t* aux;
  void* out;
  DType out_dtype;
  int64_t out_stride;
  TrackerArgs tracker;
  int32_t* sync;
  // 1 when the launch is cooperative (every block resident): a head's blocks wait for each other.
  int32_t wait;
  // attend: the token appended before the decode (fused != 0, dense stores only).
  int32_t fused;
  FusedAppend fa;
};

// The keys of a head that a decode attends: `stored` is its length before the call; an attend counts the
// token it appends when the head has room (`appends`), and n is what the blocks attend.
struct HeadKeys {
  int32_t stored;
  bool appends;
  int n;
};

__device__ __forceinline__ HeadKeys head_keys(const DecodeParams& p, const HeadAt& at, size_t slot) {
  const int32_t stored = p.lengths[slot];
  const bool appends = p.fused != 0 && stored >= 0 && stored < at.cap;
  const int n = appends ? stored + 1 : stored;
  return HeadKeys{stored, appends, n < 0 ? 0 : min(n, at.cap)};
}

struct KeyRange {
  int t0;
  int t1;
};

// The slots [t0, t1) of a head's n that split block `split` takes (the last split takes the rest).
__device__ __forceinline__ KeyRange split_keys(const DecodeParams& p, int n, int split) {
  const int t0 = split * p.chunk;
  return KeyRange{t0, split == p.splits - 1 ? n : min(n, t0 + p.chunk)};
}

// Waits until all `parties` blocks that share `meet` ([arrived, generation]) have called it, with their
// global writes visible to each other. A sense-reversing barrier: the last to arrive resets the count
// and opens the next generation, so the same two ints serve every launch.
__device__ __forceinline__ void head_barrier(int32_t* meet, int parties) {
  __syncthreads();
  if (threadIdx.x == 0) {
    // Read before arriving (the arrival's release keeps it there): the generation cannot move before then.
    const int32_t seen = *reinterpret_cast<volatile int32_t*>(meet + 1);
    if (atomic_add_acq_rel(meet, 1) == parties - 1) {
      meet[0] = 0;
      store_release(meet + 1, seen + 1);
    } else {
      while (load_acquire(meet + 1) == seen) __nanosleep(40);
    }
  }
  __syncthreads();
}

// The end of every split block, once its partial (output, max, sum) is written: the merge into the
// output and the tracker's observation (see the top of the file). `spare` is shared memory the kernel is
// done with, at least 2 * group floats (each kernel's reduction buffer: GT = 8 whenever the group is
// larger). The block's coordinates are recomputed here rather than passed, so that the split loop does
// not keep them in registers.
template <int D, int GT>
__device__ void finish_decode(const DecodeParams& p, float* spare) {
  const int split = blockIdx.x;
  const int hk = blockIdx.y / p.gbatches;
  const int gb = blockIdx.y - hk * p.gbatches;
  const int b = blockIdx.z;
  const int seq = p.seqs.ids[b];
  const size_t slot = static_cast<size_t>(seq) * p.kv_heads + hk;
  const HeadAt at = head_at(p.heads, slot);
  // Read before this block arrives below: lengths[slot] changes only after every block of the head has.
  const HeadKeys keys = head_keys(p, at, slot);
  const int n = keys.n;
  const KeyRange range = split_keys(p, n, split);
  const int t0 = range.t0;
  const int t1 = range.t1;
  float* gmax = spare;
  float* ginv = spare + p.group;
  __shared__ float split_weight[64];  // splits <= 64 (splits_for in store.cu)
  __shared__ int last;
  __shared__ double clock;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int parties = p.splits * p.gbatches;
  int32_t* seq_meet = p.sync + static_cast<size_t>(seq) * (1 + 2 * p.kv_heads);
  int32_t* head_meet = seq_meet + 1 + 2 * hk;
  if (tid == 0) clock = __ldcg(p.steps + seq);
  const bool has_word = p.tracker.kind == static_cast<int32_t>(TrackerKind::Scissorhands);
  // What this block merges (query heads [h0, h1), channels [c0, c1)) and observes (keys [j0, j1)): its
  // own share when the head's blocks wait for each other, else everything if it is the last to finish.
  int h0 = 0, h1 = 0, c0 = 0, c1 = 0, j0 = 0, j1 = 0;
  if (p.wait != 0) {
    h0 = gb * GT;
    h1 = min(p.group, h0 + GT);
    const int slice = (D + p.splits - 1) / p.splits;
    c0 = min(D, split * slice);
    c1 = min(D, c0 + slice);
    const int len = max(0, t1 - t0);
    j0 = t0 + static_cast<int>(static_cast<int64_t>(len) * gb / p.gbatches);
    j1 = t0 + static_cast<int>(static_cast<int64_t>(len) * (gb + 1) / p.gbatches);
    // The tracker state it will observe is fetched into L2 before it waits: the wait hides the trip to DRAM.
    if (tracker_observes(p.tracker)) {
      __syncthreads();
      const uint32_t* words = p.aux + at.aux + observed_word(p.tracker, static_cast<uint64_t>(clock)) * at.aux_stride;
      prefetch_lines(p.scores + at.base + j0, (j1 - j0) * 4);
      if (has_word) prefetch_lines(words + j0, (j1 - j0) * 4);
    }
    head_barrier(head_meet, parties);
  } else {
    __syncthreads();
    if (tid == 0) {
      int done = 1;
      if (parties > 1) {
        done = atomic_add_acq_rel(head_meet, 1) == parties - 1 ? 1 : 0;
        if (done != 0) head_meet[0] = 0;
      }
      last = done;
    }
    __syncthreads();
    if (last != 0) {
      h1 = p.group;
      c1 = D;
      j1 = n;
    }
  }
  // Every block of the head has read its length: an attend's new length can be published.
  if (keys.appends && tid == 0 && (p.wait != 0 ? split == 0 && gb == 0 : last != 0)) p.lengths[slot] = keys.stored + 1;
  const bool observes = tracker_observes(p.tracker) && j1 > j0;
  const size_t stride = static_cast<size_t>(D) + 2;
  const float* part = p.partial + (static_cast<size_t>(seq) * p.scratch_heads + static_cast<size_t>(hk) * p.group) * p.max_splits * stride;

  // Each query head's max and sum over the splits: the block's own heads, or the whole group to observe.
  const int g0 = observes ? 0 : h0;
  const int g1 = observes ? p.group : h1;
  // A lane holds splits lane and lane + 32 (splits <= 64), both loaded at once: one trip to L2.
  for (int g = g0 + warp; g < g1; g += kThreads / 32) {
    const float* pg = part + static_cast<size_t>(g) * p.max_splits * stride;
    float ms[2] = {-INFINITY, -INFINITY};
    float ls[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int s = lane + 32 * i;
      if (s < p.splits) {
        ms[i] = __ldcg(pg + s * stride + D);
        ls[i] = __ldcg(pg + s * stride + D + 1);
      }
    }
    const float mx = warp_max(fmaxf(ms[0], ms[1]));
    float l = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (ms[i] != -INFINITY) l += ls[i] * __expf(ms[i] - mx);
    }
    l = warp_sum(l);
    if (lane == 0) {
      gmax[g] = mx;
      ginv[g] = 1.0f / l;
    }
  }
  __syncthreads();

  // The merge. Each split's weight exp(m_s - max) first, so the sum over splits is independent loads
  // that can all be in flight.
  for (int g = h0; g < h1 && c1 > c0; ++g) {
    const float* pg = part + static_cast<size_t>(g) * p.max_splits * stride;
    if (tid < p.splits) {
      const float ms = __ldcg(pg + tid * stride + D);
      split_weight[tid] = ms == -INFINITY ? 0.0f : __expf(ms - gmax[g]);
    }
    __syncthreads();
    for (int c = c0 + tid; c < c1; c += kThreads) {
      float o = 0.0f;
#pragma unroll 8
      for (int s = 0; s < p.splits; ++s) o += __ldcg(pg + s * stride + c) * split_weight[s];
      store_output(p.out, p.out_dtype, b * p.out_stride + static_cast<int64_t>(hk * p.group + g) * D + c, o * ginv[g]);
    }
    __syncthreads();
  }

  if (observes) {
    // UNROLL tokens a thread at a time, every load of a pass issued before any is used: a block may observe
    // a few thousand tokens (2048 in the GQA benchmark case), and the last head to finish streaming waits
    // for this loop with memory idle. Loaded where they were used (under the exponential), the raw scores
    // each waited for the one before: UNROLL trips to L2 per query head and pass (ncu, H100).
    constexpr int UNROLL = 8;
    const uint64_t step = static_cast<uint64_t>(clock);
    const float* raw = p.scratch + (static_cast<size_t>(seq) * p.scratch_heads + static_cast<size_t>(hk) * p.group) * p.capacity;
    float* scores = p.scores + at.base;
    uint32_t* words = p.aux + at.aux + observed_word(p.tracker, step) * at.aux_stride;
    for (int j = j0 + tid; j < j1; j += kThreads * UNROLL) {
      float c[UNROLL];
      float score[UNROLL];
      uint32_t word[UNROLL];
      float r[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int k = min(j + u * kThreads, j1 - 1);
        score[u] = scores[k];
        word[u] = has_word ? words[k] : 0u;
        r[u] = __ldcg(raw + k);
        c[u] = 0.0f;
      }
      for (int g = 0; g < p.group; ++g) {
        if (g > 0) {
#pragma unroll
          for (int u = 0; u < UNROLL; ++u) r[u] = __ldcg(raw + static_cast<size_t>(g) * p.capacity + min(j + u * kThreads, j1 - 1));
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) c[u] = gqa_fold(c[u], __fmul_rn(expf(r[u] - gmax[g]), ginv[g]), g, p.tracker.gqa_max);
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int k = j + u * kThreads;
        if (k >= j1) break;
        observe_rule(score[u], word[u], p.tracker, gqa_finish(c[u], p.group, p.tracker.gqa_max), n, step);
        scores[k] = score[u];
        if (has_word) words[k] = word[u];
      }
    }
  }

  // The clock moves once every block of the sequence has read it.
  if (tid == 0 && atomicAdd(seq_meet, 1) == static_cast<int>(gridDim.x * gridDim.y) - 1) {
    atomicExch(seq_meet, 0);
    p.steps[seq] = clock + 1.0;
  }
}

// The end of a streaming split block: each key group's softmax state (m, l) and its output (already in
// red[(grp * GT + i) * D + channel]) are rescaled to the block's max and summed into the split's partial.
template <int D, int GT, int GROUPS>
__device__ __forceinline__ void merge_key_groups(const DecodeParams& p, float* red, const float (&m)[GT], const float (&l)[GT],
                                                 int grp, bool leader, int split, int hk, int gb, int seq) {
  __shared__ float mred[GROUPS][GT];
  __shared__ float lred[GROUPS][GT];
  __shared__ float factor[GROUPS][GT];
  __shared__ float total[GT][2];
  const int tid = threadIdx.x;
#pragma unroll
  for (int i = 0; i < GT; ++i) {
    if (leader) {
      mred[grp][i] = m[i];
      lred[grp][i] = l[i];
    }
  }
  __syncthreads();
  if (tid < GT) {
    float mx = -INFINITY;
    for (int r = 0; r < GROUPS; ++r) mx = fmaxf(mx, mred[r][tid]);
    float sum = 0.0f;
    for (int r = 0; r < GROUPS; ++r) {
      const float f = mred[r][tid] == -INFINITY ? 0.0f : __expf(mred[r][tid] - mx);
      factor[r][tid] = f;
      sum += lred[r][tid] * f;
    }
    total[tid][0] = mx;
    total[tid][1] = sum;
  }
  __syncthreads();
  for (int idx = tid; idx < GT * D; idx += kThreads) {
    const int i = idx / D;
    const int c = idx - i * D;
    const int g = gb * GT + i;
    if (g >= p.group) continue;
    float o = 0.0f;
#pragma unroll 4
    for (int r = 0; r < GROUPS; ++r) o += red[(r * GT + i) * D + c] * factor[r][i];
    float* out = p.partial + ((static_cast<size_t>(seq) * p.scratch_heads + hk * p.group + g) * p.max_splits + split) * (D + 2);
    out[c] = o;
    if (c == 0) {
      out[D] = total[i][0];
      out[D + 1] = total[i][1];
    }
  }
}

// The GT queries of group batch gb of KV head hk, row b, as lane lid of a key holds them: element
// v * VEC + e is channel (v * LANES + lid) * VEC + e; query heads past the group are 0.
template <int D, int GT, int VEC, int LANES>
__device__ __forceinline__ void load_queries(const DecodeParams& p, int b, int hk, int gb, int lid, float (&q)[GT][D / LANES]) {
  constexpr int NV = D / (VEC * LANES);
#pragma unroll
  for (int i = 0; i < GT; ++i) {
    const int g = gb * GT + i;
#pragma unroll
    for (int v = 0; v < NV; ++v) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const int c = (v * LANES + lid) * VEC + e;
        q[i][v * VEC + e] =
            g < p.group ? load_input(p.q.data, p.q.dtype, b * p.q.row_stride + static_cast<int64_t>(hk * p.group + g) * D + c)
                        : 0.0f;
      }
    }
  }
}

// An attend's new token in block (split, hk, gb), whose range [t0, t1) holds its slot `stored`: every
// query batch's block of that split reads the slot, so each writes the same key and value bits; batch 0
// writes its position and tracker state.
template <typename T, int D>
__device__ __forceinline__ void append_attended(const DecodeParams& p, const HeadAt& at, int32_t stored, int hk, int gb) {
  const FusedAppend& f = p.fa;
  // The store's own arrays, read-only to the decode proper.
  T* keys = const_cast<T*>(reinterpret_cast<const T*>(p.keys)) + (at.base + stored) * D;
  T* values = const_cast<T*>(reinterpret_cast<const T*>(p.values)) + (at.base + stored) * D;
  append_rows(keys, values, p.aux, at, stored, f.k, f.v, hk, D, gb == 0 ? f.aux_words : 0, 1);
  __syncthreads();
  if (gb == 0) append_state(keys, f.positions, p.scores, at.base + stored, D, 1, f.first_position, p.tracker, f.layer, hk);
}

// The slots [t0, t1) of the head's n that split block (split, hk, gb) attends. An attend's n counts the
// new token when the head has room, and the block whose range holds its slot stores it first; without
// room, block (0, batch 0) sets the error flag append would set.
template <typename T, int D>
__device__ __forceinline__ KeyRange key_range(const DecodeParams& p, const HeadAt& at, size_t slot, int split, int hk, int gb) {
  const HeadKeys keys = head_keys(p, at, slot);
  const KeyRange range = split_keys(p, keys.n, split);
  if (p.fused != 0) {
    if (!keys.appends && split == 0 && gb == 0 && threadIdx.x == 0) {
      atomicOr(p.fa.error, keys.stored < 0 || keys.stored > at.cap ? kErrorBadLength : kErrorNoRoom);
    }
    if (keys.appends && keys.stored >= range.t0 && keys.stored < range.t1) append_attended<T, D>(p, at, keys.stored, hk, gb);
  }
  return range;
}

template <typename T, int D, int GT>
__global__ void __launch_bounds__(kThreads) decode_split(const DecodeParams p) {
  constexpr int VEC = 16 / static_cast<int>(sizeof(T));
  constexpr int LANES = (D / VEC) < 32 ? (D / VEC) : 32;
  constexpr int NV = D / (VEC * LANES);
  constexpr int PER = NV * VEC;
  constexpr int GROUPS = kThreads / LANES;
  constexpr int UNROLL = GT <= 4 ? 4 : 2;
  __shared__ float s_sh[GT][kTile];
  __shared__ float red[GROUPS * GT * D];
  __shared__ float wred[kThreads / 32][GT];

  const int split = blockIdx.x;
  const int hk = blockIdx.y / p.gbatches;
  const int gb = blockIdx.y - hk * p.gbatches;
  const int b = blockIdx.z;
  const int seq = p.seqs.ids[b];
  const int tid = threadIdx.x;
  const int grp = tid / LANES;
  const int lid = tid % LANES;
  const int warp = tid / 32;
  const int lane = tid % 32;

  const HeadAt at = head_at(p.heads, static_cast<size_t>(seq) * p.kv_heads + hk);
  const KeyRange range = key_range<T, D>(p, at, static_cast<size_t>(seq) * p.kv_heads + hk, split, hk, gb);
  const int t0 = range.t0;
  const int t1 = range.t1;
  const size_t head = at.base;
  const T* K = reinterpret_cast<const T*>(p.keys) + head * D;
  const T* V = reinterpret_cast<const T*>(p.values) + head * D;

  float q[GT][PER];
  load_queries<D, GT, VEC, LANES>(p, b, hk, gb, lid, q);
  float acc[GT][PER];
  float m[GT];
  float lsum[GT];
#pragma unroll
  for (int i = 0; i < GT; ++i) {
    m[i] = -INFINITY;
    lsum[i] = 0.0f;
#pragma unroll
    for (int e = 0; e < PER; ++e) acc[i][e] = 0.0f;
  }

  for (int base = t0; base < t1; base += kTile) {
    const int nt = min(kTile, t1 - base);
    // Scores of the tile: LANES threads per key, keys GROUPS apart, UNROLL keys in flight per thread. The
    // loop bound is uniform over the block so every lane of a warp reaches the shuffles.
    for (int k0 = 0; k0 < nt; k0 += GROUPS * UNROLL) {
      uint4 raw[UNROLL][NV];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int k = k0 + u * GROUPS + grp;
#pragma unroll
        for (int v = 0; v < NV; ++v) {
          raw[u][v] = k < nt ? stream16(K + static_cast<size_t>(base + k) * D + (v * LANES + lid) * VEC) : make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int k = k0 + u * GROUPS + grp;
        float x[PER];
#pragma unroll
        for (int v = 0; v < NV; ++v) decode16<T>(raw[u][v], x + v * VEC);
#pragma unroll
        for (int i = 0; i < GT; ++i) {
          float dot = 0.0f;
#pragma unroll
          for (int e = 0; e < PER; ++e) dot = fmaf(q[i][e], x[e], dot);
#pragma unroll
          for (int o = LANES / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
          if (lid == 0 && k < nt) s_sh[i][k] = p.scale * dot;
        }
      }
    }
    __syncthreads();
    // Tile max per query, the rescale of what came before, exponentials in place, raw scores to scratch.
#pragma unroll
    for (int i = 0; i < GT; ++i) {
      const float s = tid < nt ? s_sh[i][tid] : -INFINITY;
      const float w = warp_max(s);
      if (lane == 0) wred[warp][i] = w;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < GT; ++i) {
      float tmax = wred[0][i];
#pragma unroll
      for (int w = 1; w < kThreads / 32; ++w) tmax = fmaxf(tmax, wred[w][i]);
      const float mnew = fmaxf(m[i], tmax);
      const float alpha = mnew == -INFINITY ? 1.0f : __expf(m[i] - mnew);
      m[i] = mnew;
      lsum[i] *= alpha;
#pragma unroll
      for (int e = 0; e < PER; ++e) acc[i][e] *= alpha;
      if (tid < nt) {
        const float s = s_sh[i][tid];
        const int g = gb * GT + i;
        if (g < p.group) {
          p.scratch[(static_cast<size_t>(seq) * p.scratch_heads + hk * p.group + g) * p.capacity + base + tid] = s;
        }
        const float e = mnew == -INFINITY ? 0.0f : __expf(s - mnew);
        lsum[i] += e;
        s_sh[i][tid] = e;
      }
    }
    __syncthreads();
    // Values: each key group accumulates its keys' rows into its own partial output.
    for (int k0 = 0; k0 < nt; k0 += GROUPS * UNROLL) {
      uint4 raw[UNROLL][NV];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int k = k0 + u * GROUPS + grp;
        if (k < nt) {
#pragma unroll
          for (int v = 0; v < NV; ++v) raw[u][v] = stream16(V + static_cast<size_t>(base + k) * D + (v * LANES + lid) * VEC);
        }
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int k = k0 + u * GROUPS + grp;
        if (k < nt) {
          float x[PER];
#pragma unroll
          for (int v = 0; v < NV; ++v) decode16<T>(raw[u][v], x + v * VEC);
#pragma unroll
          for (int i = 0; i < GT; ++i) {
            const float e = s_sh[i][k];
#pragma unroll
            for (int j = 0; j < PER; ++j) acc[i][j] = fmaf(e, x[j], acc[i][j]);
          }
        }
      }
    }
    __syncthreads();
  }

  // Block sums of the exponentials; partial outputs summed over key groups.
#pragma unroll
  for (int i = 0; i < GT; ++i) {
    const float w = warp_sum(lsum[i]);
    if (lane == 0) wred[warp][i] = w;
  }
#pragma unroll
  for (int i = 0; i < GT; ++i) {
#pragma unroll
    for (int v = 0; v < NV; ++v) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) red[(grp * GT + i) * D + (v * LANES + lid) * VEC + e] = acc[i][v * VEC + e];
    }
  }
  __syncthreads();
  for (int idx = tid; idx < GT * D; idx += kThreads) {
    const int i = idx / D;
    const int c = idx - i * D;
    const int g = gb * GT + i;
    if (g >= p.group) continue;
    float o = 0.0f;
#pragma unroll 4
    for (int r = 0; r < GROUPS; ++r) o += red[(r * GT + i) * D + c];
    float* out = p.partial + ((static_cast<size_t>(seq) * p.scratch_heads + hk * p.group + g) * p.max_splits + split) * (D + 2);
    out[c] = o;
    if (c == 0) {
      float l = 0.0f;
#pragma unroll
      for (int w = 0; w < kThreads / 32; ++w) l += wred[w][i];
      out[D] = m[i];
      out[D + 1] = l;
    }
  }
  finish_decode<D, GT>(p, red);
}

// The streaming variant (the default): no barrier in the main loop. Each key group keeps its own online
// softmax over the keys it takes (keys GROUPS apart), with the key and value rows of UNROLL keys loaded
// together, so loads stay in flight back to back; the groups' states merge once at the end.
template <typename T, int D, int GT>
__global__ void __launch_bounds__(kThreads) decode_stream(const DecodeParams p) {
  constexpr int VEC = 16 / static_cast<int>(sizeof(T));
  constexpr int LANES = (D / VEC) < 32 ? (D / VEC) : 32;
  constexpr int NV = D / (VEC * LANES);
  constexpr int PER = NV * VEC;
  constexpr int GROUPS = kThreads / LANES;
  constexpr int UNROLL = GT <= 2 ? 4 : 2;
  __shared__ float red[GROUPS * GT * D];

  const int split = blockIdx.x;
  const int hk = blockIdx.y / p.gbatches;
  const int gb = blockIdx.y - hk * p.gbatches;
  const int b = blockIdx.z;
  const int seq = p.seqs.ids[b];
  const int tid = threadIdx.x;
  const int grp = tid / LANES;
  const int lid = tid % LANES;

  const HeadAt at = head_at(p.heads, static_cast<size_t>(seq) * p.kv_heads + hk);
  const KeyRange range = key_range<T, D>(p, at, static_cast<size_t>(seq) * p.kv_heads + hk, split, hk, gb);
  const int t0 = range.t0;
  const int t1 = range.t1;
  const size_t head = at.base;
  const T* K = reinterpret_cast<const T*>(p.keys) + head * D;
  const T* V = reinterpret_cast<const T*>(p.values) + head * D;
  float* raw_scores = p.scratch + (static_cast<size_t>(seq) * p.scratch_heads + hk * p.group + gb * GT) * p.capacity;

  float q[GT][PER];
  load_queries<D, GT, VEC, LANES>(p, b, hk, gb, lid, q);
  float acc[GT][PER];
  float m[GT];
  float l[GT];
#pragma unroll
  for (int i = 0; i < GT; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int e = 0; e < PER; ++e) acc[i][e] = 0.0f;
  }

  // The loop bound is uniform over the block so every lane of a warp reaches the shuffles.
  for (int k0 = t0; k0 < t1; k0 += GROUPS * UNROLL) {
    uint4 kr[UNROLL][NV];
    uint4 vr[UNROLL][NV];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int k = k0 + u * GROUPS + grp;
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        const size_t at = static_cast<size_t>(k) * D + (v * LANES + lid) * VEC;
        kr[u][v] = k < t1 ? stream16(K + at) : make_uint4(0, 0, 0, 0);
        vr[u][v] = k < t1 ? stream16(V + at) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int k = k0 + u * GROUPS + grp;
      const bool valid = k < t1;
      float x[PER];
#pragma unroll
      for (int v = 0; v < NV; ++v) decode16<T>(kr[u][v], x + v * VEC);
      float w[GT];
#pragma unroll
      for (int i = 0; i < GT; ++i) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < PER; ++e) dot = fmaf(q[i][e], x[e], dot);
#pragma unroll
        for (int o = LANES / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        const float s = p.scale * dot;
        w[i] = 0.0f;
        if (valid) {
          if (lid == 0 && gb * GT + i < p.group) raw_scores[static_cast<size_t>(i) * p.capacity + k] = s;
          w[i] = online_softmax<PER>(s, m[i], l[i], acc[i]);
        }
      }
#pragma unroll
      for (int v = 0; v < NV; ++v) decode16<T>(vr[u][v], x + v * VEC);
#pragma unroll
      for (int i = 0; i < GT; ++i) {
#pragma unroll
        for (int e = 0; e < PER; ++e) acc[i][e] = fmaf(w[i], x[e], acc[i][e]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < GT; ++i) {
#pragma unroll
    for (int v = 0; v < NV; ++v) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) red[(grp * GT + i) * D + (v * LANES + lid) * VEC + e] = acc[i][v * VEC + e];
    }
  }
  // Merge the key groups: rescale each to the block's max.
  merge_key_groups<D, GT, GROUPS>(p, red, m, l, grp, lid == 0, split, hk, gb, seq);
  finish_decode<D, GT>(p, red);
}

// Packed stores (docs/packing.md): helpers of decode_packed below.
// A lane's 8 codes (BITS bytes) of a token.
template <int BITS>
__device__ __forceinline__ uint64_t load_codes(const uint8_t* p) {
  if constexpr (BITS == 2) return __ldg(reinterpret_cast<const uint16_t*>(p));
  if constexpr (BITS == 4) return __ldg(reinterpret_cast<const uint32_t*>(p));
  const uint2 w = __ldg(reinterpret_cast<const uint2*>(p));
  return static_cast<uint64_t>(w.x) | (static_cast<uint64_t>(w.y) << 32);
}

// 8 consecutive elements of T as floats.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float* out) {
  decode16<T>(raw16(p), out);
  if constexpr (sizeof(T) == 4) decode16<T>(raw16(p + 4), out + 4);
}

// The codes of a 32-bit word (low bits first) as floats. 4- and 8-bit codes become the low byte of
// 0x4B0000xx (2^23 + code) by one byte permute each, then lose the 2^23: cheaper than shift, mask and or.
template <int BITS>
__device__ __forceinline__ void word_codes(uint32_t w, float (&out)[32 / BITS]) {
  if constexpr (BITS == 8) {
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = __fsub_rn(__uint_as_float(__byte_perm(w, 0x4B000000u, 0x7650u | k)), 8388608.0f);
  } else if constexpr (BITS == 4) {
    const uint32_t lo = w & 0x0F0F0F0Fu;
    const uint32_t hi = (w >> 4) & 0x0F0F0F0Fu;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[2 * k] = __fsub_rn(__uint_as_float(__byte_perm(lo, 0x4B000000u, 0x7650u | k)), 8388608.0f);
      out[2 * k + 1] = __fsub_rn(__uint_as_float(__byte_perm(hi, 0x4B000000u, 0x7650u | k)), 8388608.0f);
    }
  } else {
#pragma unroll
    for (int k = 0; k < 16; ++k) out[k] = code_float((w >> (2 * k)) & 3u);
  }
}

// A lane's 8 codes (from load_codes) as floats.
template <int BITS>
__device__ __forceinline__ void lane_codes(uint64_t word, float (&out)[8]) {
  if constexpr (BITS == 8) {
    float a[4];
    float b[4];
    word_codes<8>(static_cast<uint32_t>(word), a);
    word_codes<8>(static_cast<uint32_t>(word >> 32), b);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      out[k] = a[k];
      out[k + 4] = b[k];
    }
  } else if constexpr (BITS == 4) {
    word_codes<4>(static_cast<uint32_t>(word), out);
  } else {
    float all[16];
    word_codes<2>(static_cast<uint32_t>(word), all);
#pragma unroll
    for (int k = 0; k < 8; ++k) out[k] = all[k];
  }
}

// The packed split kernel: a tile of kThreads keys at a time, whose loads (runs, key and value codes,
// value scales) are all issued at the tile's start, so a tile waits for memory once. A thread per key
// computes its score in one pass over its codes, with q already multiplied by the run scales (q . k =
// sum_c code_c (q_c s_c) + sum_c q_c z_c, staged in shared memory for the RUNS runs from the tile's
// first; a key of a later run, after heavy eviction, dequantises exactly from global scales): one
// code-to-float and GT fused multiply-adds a channel, no shuffles. The tile's softmax is block-wide (as
// decode_split); then D / 8 lanes per token add the tile's value codes into the outputs as code * (w s),
// with w z kept aside once per token. The sums are reassociated, so outputs agree with the CPU's
// dequantise-then-dot within rounding, not bit for bit.
template <int BITS>
__device__ __forceinline__ uint64_t load_codes_shared(const uint8_t* p) {
  if constexpr (BITS == 2) return *reinterpret_cast<const uint16_t*>(p);
  if constexpr (BITS == 4) return *reinterpret_cast<const uint32_t*>(p);
  const uint2 w = *reinterpret_cast<const uint2*>(p);
  return static_cast<uint64_t>(w.x) | (static_cast<uint64_t>(w.y) << 32);
}

template <typename T, int D, int BITS, int GT>
__global__ void __launch_bounds__(kThreads) decode_packed(const DecodeParams p) {
  constexpr int TILE = kThreads;
  constexpr int RUNS = 1024 / D;  // so the epilogue's ROWS x GT x D sums fit in qs_sh
  constexpr int LANES = D / 8;
  constexpr int ROWS = kThreads / LANES;
  constexpr int CB = D * BITS / 8;
  constexpr int CODES = 32 / BITS;  // codes in a 32-bit word
  constexpr int MAX_GROUPS = D / 8;
  constexpr bool STAGE_VALUES = CB <= 64;  // value codes through shared memory (else read in the value pass)
  constexpr uint32_t kMask = (1u << BITS) - 1u;
  static_assert(ROWS * D <= RUNS * D, "the epilogue's sums must fit in qs_sh");
  __shared__ __align__(16) float q_sh[GT][D];
  __shared__ __align__(16) float qs_sh[RUNS][GT][D];
  __shared__ float qz_sh[RUNS][GT];
  __shared__ float w_sh[GT][TILE];
  __shared__ float wred[kThreads / 32][GT];
  __shared__ __align__(16) uint8_t vcode_sh[STAGE_VALUES ? TILE * CB : 16];
  __shared__ uint16_t vscale_sh[TILE][MAX_GROUPS];
  __shared__ uint16_t vzero_sh[TILE][MAX_GROUPS];
  float* red = &qs_sh[0][0][0];  // [ROWS][GT][D], after the last tile

  const int split = blockIdx.x;
  const int hk = blockIdx.y / p.gbatches;
  const int gb = blockIdx.y - hk * p.gbatches;
  const int b = blockIdx.z;
  const int seq = p.seqs.ids[b];
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int grp = tid / LANES;
  const int lid = tid % LANES;
  const int c0 = lid * 8;

  const PackedArgs& pk = p.pk;
  const size_t i = static_cast<size_t>(seq) * p.kv_heads + hk;
  int n = p.lengths[i];
  n = n < 0 ? 0 : min(n, p.capacity);
  const int packed = min(max(pk.packed[i], 0), min(n, pk.packed_slots));
  const KeyRange range = split_keys(p, n, split);
  const int t0 = range.t0;
  const int t1 = range.t1;
  float* raw_scores = p.scratch + (static_cast<size_t>(seq) * p.scratch_heads + hk * p.group + gb * GT) * p.capacity;
  const int groups = D / pk.group;
  const uint8_t* key_codes = pk.key_codes + i * pk.packed_slots * CB;
  const uint8_t* value_codes = pk.value_codes + i * pk.packed_slots * CB;
  const uint16_t* value_scales = pk.value_scales + i * pk.packed_slots * groups;
  const uint16_t* value_zeros = pk.value_zeros + i * pk.packed_slots * groups;
  const uint16_t* key_scales = pk.key_scales + i * pk.max_runs * D;
  const uint16_t* key_zeros = pk.key_zeros + i * pk.max_runs * D;
  const int32_t* slot_run = pk.slot_run + i * pk.packed_slots;
  const T* residual_keys = reinterpret_cast<const T*>(pk.residual_keys) + i * pk.residual_slots * D;
  const T* residual_values = reinterpret_cast<const T*>(pk.residual_values) + i * pk.residual_slots * D + c0;

  for (int idx = tid; idx < GT * D; idx += kThreads) {
    const int g = idx / D;
    const int qh = gb * GT + g;
    q_sh[g][idx - g * D] =
        qh < p.group ? load_input(p.q.data, p.q.dtype, b * p.q.row_stride + static_cast<int64_t>(hk * p.group + qh) * D + idx - g * D) : 0.0f;
  }
  __syncthreads();
  float m[GT];
  float lsum[GT];
  float acc[GT][8];
  float accz[GT];
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    m[g] = -INFINITY;
    lsum[g] = 0.0f;
    accz[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
  }

  // The tile's softmax: scores s (this thread's key, valid below nt) to raw scores and weights in w_sh,
  // the running max and the rescale of what came before. Block-wide; ends with a barrier.
  auto softmax_tile = [&](int base, int nt, const float (&s)[GT]) {
    const bool valid = tid < nt;
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      if (valid && gb * GT + g < p.group) raw_scores[static_cast<size_t>(g) * p.capacity + base + tid] = s[g];
      const float w = warp_max(valid ? s[g] : -INFINITY);
      if (lane == 0) wred[warp][g] = w;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      float tmax = wred[0][g];
#pragma unroll
      for (int w = 1; w < kThreads / 32; ++w) tmax = fmaxf(tmax, wred[w][g]);
      const float mnew = fmaxf(m[g], tmax);
      const float alpha = mnew == -INFINITY ? 1.0f : __expf(m[g] - mnew);
      m[g] = mnew;
      lsum[g] *= alpha;
      accz[g] *= alpha;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= alpha;
      const float e = valid && mnew != -INFINITY ? __expf(s[g] - mnew) : 0.0f;
      lsum[g] += e;
      w_sh[g][tid] = e;
    }
    __syncthreads();
  };

  // Packed slots [t0, min(t1, packed)).
  const int packed_end = min(t1, packed);
  // A tile's first and last runs (slots keep run order).
  auto tile_runs = [&](int from) { return make_int2(__ldg(slot_run + from), __ldg(slot_run + min(from + TILE, packed_end) - 1)); };
  // What the tile stages after its codes arrive (its value scales and zero points, its runs' key scales and
  // zero points) fetched into L2 a tile ahead: each staging loop below then waits on L2, not on DRAM. With
  // those loops waiting on DRAM one after another, that wait was 31% of the warps' time at batch 8 (ncu).
  auto prefetch_tile = [&](int from, int2 runs) {
    const int nt = min(TILE, packed_end - from);
    const int used = min(RUNS, runs.y - runs.x + 1);
    const size_t meta = static_cast<size_t>(from) * groups;
    prefetch_lines(value_scales + meta, nt * groups * 2);
    prefetch_lines(value_zeros + meta, nt * groups * 2);
    prefetch_lines(key_scales + static_cast<size_t>(runs.x) * D, used * D * 2);
    prefetch_lines(key_zeros + static_cast<size_t>(runs.x) * D, used * D * 2);
  };
  int2 runs = t0 < packed_end ? tile_runs(t0) : make_int2(0, 0);
  for (int base = t0; base < packed_end; base += TILE) {
    const int nt = min(TILE, packed_end - base);
    const int k = base + tid;
    const bool mine = tid < nt;
    const int first = runs.x;
    // The runs staged: those of the tile, at most RUNS (a key of a later run takes the exact path).
    const int used = min(RUNS, runs.y - first + 1);
    // Every load of the tile first.
    const int run = mine ? __ldg(slot_run + k) : first;
    uint4 kc[CB / 16];
    uint4 vc[STAGE_VALUES ? CB / 16 : 1];
#pragma unroll
    for (int v = 0; v < CB / 16; ++v) kc[v] = mine ? raw16(key_codes + static_cast<size_t>(k) * CB + v * 16) : make_uint4(0, 0, 0, 0);
    if constexpr (STAGE_VALUES) {
#pragma unroll
      for (int v = 0; v < CB / 16; ++v) vc[v] = mine ? raw16(value_codes + static_cast<size_t>(k) * CB + v * 16) : make_uint4(0, 0, 0, 0);
    }
    const int next = base + TILE;
    const int2 next_runs = next < packed_end ? tile_runs(next) : runs;
    if (base == t0) prefetch_tile(base, runs);
    for (int q = 0; q < groups; ++q) {
      vscale_sh[tid][q] = mine ? __ldg(value_scales + static_cast<size_t>(k) * groups + q) : 0;
      vzero_sh[tid][q] = mine ? __ldg(value_zeros + static_cast<size_t>(k) * groups + q) : 0;
    }
    for (int idx = tid; idx < used * D; idx += kThreads) {
      const int r = idx / D;
      const int c = idx - r * D;
      const float sc = f16_bits_to_f32(key_scales[static_cast<size_t>(first + r) * D + c]);
#pragma unroll
      for (int g = 0; g < GT; ++g) qs_sh[r][g][c] = q_sh[g][c] * sc;
    }
    for (int pair = warp; pair < used * GT; pair += kThreads / 32) {
      const int r = pair / GT;
      const int g = pair - r * GT;
      const uint16_t* zr = key_zeros + static_cast<size_t>(first + r) * D;
      float dot = 0.0f;
      for (int c = lane; c < D; c += 32) dot = fmaf(q_sh[g][c], f16_bits_to_f32(zr[c]), dot);
      dot = warp_sum(dot);
      if (lane == 0) qz_sh[r][g] = dot;
    }
    if constexpr (STAGE_VALUES) {
#pragma unroll
      for (int v = 0; v < CB / 16; ++v) *reinterpret_cast<uint4*>(vcode_sh + tid * CB + v * 16) = vc[v];
    }
    __syncthreads();
    float s[GT];
#pragma unroll
    for (int g = 0; g < GT; ++g) s[g] = 0.0f;
    if (mine) {
      const int r = run - first;
      if (r < used) {
#pragma unroll
        for (int g = 0; g < GT; ++g) s[g] = qz_sh[r][g];
#pragma unroll
        for (int v = 0; v < CB / 16; ++v) {
          const uint32_t words[4] = {kc[v].x, kc[v].y, kc[v].z, kc[v].w};
#pragma unroll
          for (int w = 0; w < 4; ++w) {
            float cf[CODES];
            word_codes<BITS>(words[w], cf);
#pragma unroll
            for (int e = 0; e < CODES; e += 4) {
              const int c = (v * 4 + w) * CODES + e;
#pragma unroll
              for (int g = 0; g < GT; ++g) {
                const float4 qs = *reinterpret_cast<const float4*>(&qs_sh[r][g][c]);
                s[g] = fmaf(cf[e + 3], qs.w, fmaf(cf[e + 2], qs.z, fmaf(cf[e + 1], qs.y, fmaf(cf[e], qs.x, s[g]))));
              }
            }
          }
        }
      } else {
        // A run beyond the staged ones: dequantise each key element exactly from the run's scales.
        const uint16_t* sr = key_scales + static_cast<size_t>(run) * D;
        const uint16_t* zr = key_zeros + static_cast<size_t>(run) * D;
#pragma unroll
        for (int v = 0; v < CB / 16; ++v) {
          const uint32_t words[4] = {kc[v].x, kc[v].y, kc[v].z, kc[v].w};
#pragma unroll
          for (int w = 0; w < 4; ++w) {
#pragma unroll
            for (int e = 0; e < CODES; ++e) {
              const int c = (v * 4 + w) * CODES + e;
              const float x = dequantise_d((words[w] >> (e * BITS)) & kMask, f16_bits_to_f32(sr[c]), f16_bits_to_f32(zr[c]));
#pragma unroll
              for (int g = 0; g < GT; ++g) s[g] = fmaf(q_sh[g][c], x, s[g]);
            }
          }
        }
      }
#pragma unroll
      for (int g = 0; g < GT; ++g) s[g] *= p.scale;
    }
    if (next < packed_end) prefetch_tile(next, next_runs);
    softmax_tile(base, nt, s);
    // Values: row grp takes the tile's keys grp, grp + ROWS, ...; a lane its 8 channels.
    const int q = c0 / pk.group;
    for (int j = grp; j < nt; j += ROWS) {
      const uint64_t word = STAGE_VALUES ? load_codes_shared<BITS>(vcode_sh + j * CB + lid * BITS)
                                         : load_codes<BITS>(value_codes + static_cast<size_t>(base + j) * CB + lid * BITS);
      const float sc = f16_bits_to_f32(vscale_sh[j][q]);
      const float z = f16_bits_to_f32(vzero_sh[j][q]);
      float cf[8];
      lane_codes<BITS>(word, cf);
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        const float w = w_sh[g][j];
        const float ws = w * sc;
        accz[g] = fmaf(w, z, accz[g]);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(cf[e], ws, acc[g][e]);
      }
    }
    __syncthreads();
    runs = next_runs;
  }

  // Residual slots [max(t0, packed), t1): rows of T, a tile at a time.
  for (int base = max(t0, packed); base < t1; base += TILE) {
    const int nt = min(TILE, t1 - base);
    float s[GT];
#pragma unroll
    for (int g = 0; g < GT; ++g) s[g] = 0.0f;
    if (tid < nt) {
      const T* key = residual_keys + static_cast<size_t>(base + tid - packed) * D;
      for (int c = 0; c < D; c += 8) {
        float x[8];
        load8<T>(key + c, x);
#pragma unroll
        for (int g = 0; g < GT; ++g) {
#pragma unroll
          for (int e = 0; e < 8; ++e) s[g] = fmaf(q_sh[g][c + e], x[e], s[g]);
        }
      }
#pragma unroll
      for (int g = 0; g < GT; ++g) s[g] *= p.scale;
    }
    softmax_tile(base, nt, s);
    for (int j = grp; j < nt; j += ROWS) {
      float x[8];
      load8<T>(residual_values + static_cast<size_t>(base + j - packed) * D, x);
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        const float w = w_sh[g][j];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(w, x[e], acc[g][e]);
      }
    }
    __syncthreads();
  }

  // Block sums; each row group's outputs (its w z added to every channel) summed into the split's partial.
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    const float w = warp_sum(lsum[g]);
    if (lane == 0) wred[warp][g] = w;
#pragma unroll
    for (int e = 0; e < 8; ++e) red[(grp * GT + g) * D + c0 + e] = acc[g][e] + accz[g];
  }
  __syncthreads();
  for (int idx = tid; idx < GT * D; idx += kThreads) {
    const int g = idx / D;
    const int c = idx - g * D;
    const int qh = gb * GT + g;
    if (qh >= p.group) continue;
    float o = 0.0f;
#pragma unroll 4
    for (int r = 0; r < ROWS; ++r) o += red[(r * GT + g) * D + c];
    float* out = p.partial + ((static_cast<size_t>(seq) * p.scratch_heads + hk * p.group + qh) * p.max_splits + split) * (D + 2);
    out[c] = o;
    if (c == 0) {
      float l = 0.0f;
#pragma unroll
      for (int w = 0; w < kThreads / 32; ++w) l += wred[w][g];
      out[D] = m[g];
      out[D + 1] = l;
    }
  }
  finish_decode<D, GT>(p, red);
}

// Which split kernel runs: the tiled one (per-tile block softmax with barriers) or the streaming one.
// Measured on an H100 (bench/results/gpu-decode.md): streaming is faster for 1-2 query heads per KV head
// (0.220 vs 0.262 ms at batch 8 x 32 heads x 4096), tiled for query batches of 4 and 8 (0.272 vs 0.294 ms
// at 32/8 heads x batch 16 x 8192). SCISSORHANDS_DECODE_IMPL=tiled or =stream forces one.
bool tiled_decode(int gt) {
  static const int forced = [] {
    const char* text = std::getenv("SCISSORHANDS_DECODE_IMPL");
    if (text != nullptr && std::strcmp(text, "tiled") == 0) return 1;
    if (text != nullptr && std::strcmp(text, "stream") == 0) return 0;
    return -1;
  }();
  return forced >= 0 ? forced == 1 : gt >= 4;
}

// Blocks of a split kernel resident per multiprocessor (asked once per kernel and process: `cached` is
// the kernel's own static).
template <typename Kernel>
int resident_blocks(Kernel kernel, int& cached) {
  if (cached == 0) {
    int blocks = 0;
    const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, 0);
    if (e != cudaSuccess || blocks < 1) {
      cudaGetLastError();
      blocks = 2;
    }
    cached = blocks;
  }
  return cached;
}

// Waves of blocks the split-K grid aims at (SCISSORHANDS_DECODE_WAVES, default 1: every block of the
// grid resident at once, no tail).
double target_waves() {
  static double waves = [] {
    const char* text = std::getenv("SCISSORHANDS_DECODE_WAVES");
    const double w = text == nullptr ? 1.0 : std::atof(text);
    return w > 0.0 && w < 64.0 ? w : 1.0;
  }();
  return waves;
}

// Launches a split kernel with the key length split so the grid fills the card about `target_waves()`
// times, at least 64 keys a block. With several splits and a grid that fits the card at once the launch
// is cooperative, so a head's blocks may wait for each other (finish_decode).
template <typename Kernel>
Result launch_splits(Kernel kernel, int resident, DecodeParams& p, int64_t per_split, int64_t longest, int32_t max_splits,
                     int32_t multiprocessors, int32_t batch, cudaStream_t stream) {
  // Rounded down: a grid one block over the resident slots runs a second, mostly idle wave (seen with
  // ncu on an H200: 768 blocks for 660 slots, 1.16 waves).
  const double slots = target_waves() * multiprocessors * resident;
  const int64_t want = std::max<int64_t>(1, static_cast<int64_t>(slots / static_cast<double>(per_split)));
  int32_t splits = static_cast<int32_t>(std::max<int64_t>(1, std::min<int64_t>({want, max_splits, (longest + 63) / 64})));
  int32_t chunk = static_cast<int32_t>((longest + splits - 1) / splits);
  chunk = (chunk + 31) / 32 * 32;
  splits = static_cast<int32_t>(std::max<int64_t>(1, (longest + chunk - 1) / chunk));
  p.splits = splits;
  p.chunk = chunk;
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(p.kv_heads * p.gbatches), static_cast<unsigned>(batch));
  p.wait = splits > 1 && per_split * splits <= static_cast<int64_t>(multiprocessors) * resident ? 1 : 0;
  cudaLaunchAttribute cooperative{};
  cooperative.id = cudaLaunchAttributeCooperative;
  cooperative.val.cooperative = p.wait;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(kThreads);
  config.stream = stream;
  config.attrs = &cooperative;
  config.numAttrs = 1;
  const cudaError_t e = cudaLaunchKernelEx(&config, kernel, p);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return Result{Status::Ok, static_cast<int>(e), "decode_split"};
  }
  return Result{};
}

template <typename T, int D, int GT>
Result launch_split(DecodeParams& p, int64_t per_split, int64_t longest, int32_t max_splits, int32_t multiprocessors,
                    int32_t batch, cudaStream_t stream) {
  static int tiled_resident = 0;
  static int stream_resident = 0;
  if (tiled_decode(GT)) {
    return launch_splits(decode_split<T, D, GT>, resident_blocks(decode_split<T, D, GT>, tiled_resident), p, per_split, longest,
                         max_splits, multiprocessors, batch, stream);
  }
  return launch_splits(decode_stream<T, D, GT>, resident_blocks(decode_stream<T, D, GT>, stream_resident), p, per_split, longest,
                       max_splits, multiprocessors, batch, stream);
}

template <typename T, int D, int BITS, int GT>
Result launch_packed(DecodeParams& p, int64_t per_split, int64_t longest, int32_t max_splits, int32_t multiprocessors,
                     int32_t batch, cudaStream_t stream) {
  static int resident = 0;
  return launch_splits(decode_packed<T, D, BITS, GT>, resident_blocks(decode_packed<T, D, BITS, GT>, resident), p, per_split,
                       longest, max_splits, multiprocessors, batch, stream);
}

}  // namespace

namespace {

// decode, appending `fused`'s token first when given (attend).
Result decode_rows(const Store& store, const int32_t* seqs, int32_t batch, int32_t max_length, Tensor q, Tensor out,
                   int32_t query_heads, float scale, const TrackerSpec& tracker, const FusedAppend* fused,
                   void* stream) {
  const StoreSpec& s = store.spec;
  if (batch < 1 || batch > kMaxBatch || query_heads < 1 || query_heads % s.kv_heads != 0 || query_heads > s.query_heads) {
    return Result{Status::Argument, 0, "decode"};
  }
  const int32_t group = query_heads / s.kv_heads;
  if (group > kMaxGroup) return Result{Status::Argument, 0, "queryHeads"};
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  // Query heads per split block: the packed kernels are built for 1 and 4 only (fewer variants to compile;
  // a group of 2 runs as two blocks of 1).
  const int32_t gt = s.bits != 0 ? (group >= 3 ? 4 : 1) : group >= 8 ? 8 : group >= 3 ? 4 : group;
  const int32_t gbatches = (group + gt - 1) / gt;

  DecodeParams p{};
  p.keys = store.keys;
  p.values = store.values;
  p.lengths = store.lengths;
  p.steps = store.steps;
  p.scratch = store.scratch;
  p.partial = store.partial;
  p.q = q;
  p.heads = head_map(store);
  p.kv_heads = s.kv_heads;
  p.capacity = s.capacity;
  p.group = group;
  p.gbatches = gbatches;
  p.scratch_heads = s.query_heads;
  p.max_splits = store.max_splits;
  p.scores = store.scores;
  p.aux = store.aux;
  p.out = const_cast<void*>(out.data);
  p.out_dtype = out.dtype;
  p.out_stride = out.row_stride;
  p.tracker = tracker_args(tracker);
  p.sync = store.sync;
  if (fused != nullptr) {
    p.fused = 1;
    p.fa = *fused;
  }
  for (int32_t b = 0; b < batch; ++b) {
    if (seqs[b] < 0 || seqs[b] >= s.max_sequences) return Result{Status::Argument, 0, "seq"};
    // A sequence twice would meet itself at finish_decode's barriers.
    if (std::find(seqs, seqs + b, seqs[b]) != seqs + b) return Result{Status::Argument, 0, "seqs"};
    p.seqs.ids[b] = seqs[b];
  }
  const int64_t per_split = static_cast<int64_t>(s.kv_heads) * gbatches * batch;
  const int64_t longest = std::max<int64_t>(1, std::min<int64_t>(max_length, s.capacity));
  p.scale = scale;
  const int32_t sms = store.multiprocessors;
  if (s.bits != 0) p.pk = packed_args(store);
  Result r = s.bits != 0 ? SH_DISPATCH_DTYPE(s.dtype, T, [&] {
    return SH_DISPATCH_HEAD_DIM(s.head_dim, D, [&] {
      auto by_group = [&](auto bits_tag) -> Result {
        constexpr int BITS = decltype(bits_tag)::value;
        return gt == 1 ? launch_packed<T, D, BITS, 1>(p, per_split, longest, store.max_splits, sms, batch, st)
                       : launch_packed<T, D, BITS, 4>(p, per_split, longest, store.max_splits, sms, batch, st);
      };
      switch (s.bits) {
        case 2:
          return by_group(std::integral_constant<int, 2>{});
        case 4:
          return by_group(std::integral_constant<int, 4>{});
        default:
          return by_group(std::integral_constant<int, 8>{});
      }
    });
  }) : SH_DISPATCH_DTYPE(s.dtype, T, [&] {
    return SH_DISPATCH_HEAD_DIM(s.head_dim, D, [&] {
      switch (gt) {
        case 1:
          return launch_split<T, D, 1>(p, per_split, longest, store.max_splits, sms, batch, st);
        case 2:
          return launch_split<T, D, 2>(p, per_split, longest, store.max_splits, sms, batch, st);
        case 4:
          return launch_split<T, D, 4>(p, per_split, longest, store.max_splits, sms, batch, st);
        default:
          return launch_split<T, D, 8>(p, per_split, longest, store.max_splits, sms, batch, st);
      }
    });
  });
  return r;
}

}  // namespace

Result decode(const Store& store, const int32_t* seqs, int32_t batch, int32_t max_length, Tensor q, Tensor out,
              int32_t query_heads, float scale, const TrackerSpec& tracker, void* stream) {
  return decode_rows(store, seqs, batch, max_length, q, out, query_heads, scale, tracker, nullptr, stream);
}

Result attend(const Store& store, int32_t seq, int32_t max_length, Tensor k, Tensor v, int32_t first_position, Tensor q,
              Tensor out, int32_t query_heads, float scale, const TrackerSpec& tracker, void* stream) {
  const StoreSpec& s = store.spec;
  if (seq < 0 || seq >= s.max_sequences) return Result{Status::Argument, 0, "attend"};
  if (s.bits != 0) {
    // Packed appends may pack a group and merge runs: their own kernel.
    const Result r = append(store, seq, k, v, 1, first_position, tracker, stream);
    if (!ok(r)) return r;
    return decode(store, &seq, 1, max_length, q, out, query_heads, scale, tracker, stream);
  }
  FusedAppend f{};
  f.positions = store.positions;
  f.error = store.error;
  f.k = k;
  f.v = v;
  f.aux_words = s.aux_words;
  f.first_position = first_position;
  f.layer = s.layer;
  return decode_rows(store, &seq, 1, max_length, q, out, query_heads, scale, tracker, &f, stream);
}

}  // namespace sh::cuda
