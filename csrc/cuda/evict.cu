// evict (docs/semantics.md): per KV head, choose the `count` lowest (score, slot) candidates among slots
// [sinks, length - recent) (NaN lowest) and compact the kept tokens to the front, in order, in place.
//
// One block per KV head. Selection is an exact radix select over order-preserving 32-bit keys of the
// scores (four passes of 8 bits), then ties at the threshold go to the lower slots. Compaction walks the
// head in chunks: two block scans give each token its tie rank and the number dropped before it, the
// chunk's moving rows are staged in shared memory, and after a barrier written to their new slots (all
// of which lie in this chunk or earlier ones, whose reads are done), so in-place moves never race.
// With scope 'layer' a first kernel writes the per-slot mean over heads to scratch and every head uses it.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "packing.cuh"
#include "internal.cuh"

namespace sh::cuda {
namespace {

constexpr int kThreads = 512;
// Staging when the device's opt-in limit is unknown: within the 99 KB sm_86/sm_89 allow, beside the
// static shared memory. prepare_kernels raises it to what the device allows (about 220 KB on Hopper).
constexpr int kDefaultStagingBytes = 88 * 1024;
constexpr int kMaxDevices = 64;
int staging_bytes[kMaxDevices] = {0};

struct SeqList {
  int32_t ids[kMaxBatch];
};

struct EvictParams {
  uint8_t* keys;
  uint8_t* values;
  int32_t* positions;
  float* scores;
  uint32_t* aux;
  int32_t* lengths;
  int32_t* error;
  // Layer scope: each sequence's mean scores at mean + seq * mean_stride; else null.
  const float* mean;
  size_t mean_stride;
  SeqList seqs;
  HeadMap heads;
  // Per-head counts of one sequence (evict_heads: [kvHeads] on the device), else null and `count` for all.
  const int32_t* counts;
  int32_t kv_heads;
  int32_t aux_words;
  int32_t row_bytes;
  int32_t count;
  int32_t sinks;
  int32_t recent;
  int32_t chunk;
};

// Order-preserving key: NaN lowest (0), -0 as +0, then IEEE order.
__device__ __forceinline__ uint32_t order_key(float x) {
  if (x != x) return 0u;
  uint32_t b = __float_as_uint(x);
  if (b == 0x80000000u) b = 0u;
  return (b & 0x80000000u) != 0 ? ~b : (b | 0x80000000u);
}

// Exclusive prefix sum over a block of THREADS threads; *total receives the sum. Ends with a barrier.
template <int THREADS>
__device__ int block_scan(int v, int* warp_sums, int* total) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int w = lane < THREADS / 32 ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < THREADS / 32) warp_sums[lane] = w;
  }
  __syncthreads();
  const int before = warp == 0 ? 0 : warp_sums[warp - 1];
  const int result = before + x - v;
  *total = warp_sums[THREADS / 32 - 1];
  __syncthreads();
  return result;
}

// The radix digit holding the k-th lowest key (1-based) of a 256-bin histogram, by the first warp: each lane
// sums 8 bins, a warp scan gives the counts before each lane, and the one lane whose bins cross k writes the
// digit (into prefix at shift) and the rank within it. (One thread walking the 256 bins took about 4 us a
// pass on an H200, most of the selection's 28 us.) Call with the 32 threads of warp 0.
__device__ __forceinline__ void select_bin(const uint32_t* hist, uint32_t k, uint32_t prefix, int shift, uint32_t* s_prefix,
                                           uint32_t* s_k) {
  const int lane = threadIdx.x;
  uint32_t bins[8];
  uint32_t total = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    bins[i] = hist[lane * 8 + i];
    total += bins[i];
  }
  uint32_t inclusive = total;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += y;
  }
  uint32_t cum = inclusive - total;
  if (cum >= k || inclusive < k) return;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    if (cum + bins[i] >= k) {
      *s_prefix = prefix | (static_cast<uint32_t>(lane * 8 + i) << shift);
      *s_k = k - cum;
      return;
    }
    cum += bins[i];
  }
}

__global__ void layer_mean(const float* scores, const int32_t* lengths, float* mean, size_t mean_stride, SeqList seqs,
                           int32_t kv_heads, HeadMap heads) {
  const int seq = seqs.ids[blockIdx.y];
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int n = lengths[static_cast<size_t>(seq) * kv_heads];
  if (j >= n || j >= head_at(heads, static_cast<size_t>(seq) * kv_heads).cap) return;
  mean += static_cast<size_t>(seq) * mean_stride;
  float acc = 0.0f;
  for (int h = 0; h < kv_heads; ++h) acc = __fadd_rn(acc, scores[head_at(heads, static_cast<size_t>(seq) * kv_heads + h).base + j]);
  mean[j] = __fdiv_rn(acc, static_cast<float>(kv_heads));
}

__global__ void __launch_bounds__(kThreads) evict_kernel(const EvictParams p) {
  extern __shared__ uint4 staging[];
  __shared__ uint32_t hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ uint32_t s_k;
  __shared__ int warp_sums[kThreads / 32];
  __shared__ int dest[kThreads];
  const int tid = threadIdx.x;
  const size_t slot = static_cast<size_t>(p.seqs.ids[blockIdx.y]) * p.kv_heads + blockIdx.x;
  const HeadAt at = head_at(p.heads, slot);
  const int count = p.counts != nullptr ? p.counts[blockIdx.x] : p.count;
  const int n = p.lengths[slot];
  if (n < 0 || n > at.cap) {
    if (tid == 0) atomicOr(p.error, kErrorBadLength);
    return;
  }
  // A head evict_heads drops nothing from may be shorter than its sinks and recent tokens.
  if (count <= 0) return;
  if (static_cast<int64_t>(count) > static_cast<int64_t>(n) - p.sinks - p.recent) {
    if (tid == 0) atomicOr(p.error, kErrorCandidates);
    return;
  }
  const size_t head = at.base;
  const float* sc = p.mean != nullptr ? p.mean + static_cast<size_t>(p.seqs.ids[blockIdx.y]) * p.mean_stride : p.scores + head;
  const int cand_end = n - p.recent;

  // The count-th lowest key among the candidates, 8 bits at a time.
  uint32_t prefix = 0;
  uint32_t mask = 0;
  uint32_t k = static_cast<uint32_t>(count);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int j = p.sinks + tid; j < cand_end; j += kThreads) {
      const uint32_t u = order_key(sc[j]);
      if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid < 32) select_bin(hist, k, prefix, shift, &s_prefix, &s_k);
    __syncthreads();
    prefix = s_prefix;
    k = s_k;
    mask |= 255u << shift;
  }
  const uint32_t threshold = prefix;
  const int need_equal = static_cast<int>(k);

  const int row_vecs = p.row_bytes / 16;
  const int words = p.aux_words;
  uint32_t* aux_stage = reinterpret_cast<uint32_t*>(staging + static_cast<size_t>(p.chunk) * 2 * row_vecs);
  int carry_equal = 0;
  int carry_drop = 0;
  for (int c0 = p.sinks; c0 < n; c0 += p.chunk) {
    const int j = c0 + tid;
    const bool in = tid < p.chunk && j < n;
    const bool cand = in && j < cand_end;
    const uint32_t u = cand ? order_key(sc[j]) : 0u;
    const bool equal = cand && u == threshold;
    int equal_total = 0;
    const int rank = carry_equal + block_scan<kThreads>(equal ? 1 : 0, warp_sums, &equal_total);
    const bool drop = (cand && u < threshold) || (equal && rank < need_equal);
    int drop_total = 0;
    const int before = carry_drop + block_scan<kThreads>(drop ? 1 : 0, warp_sums, &drop_total);
    const bool moving = in && !drop && before > 0;
    int32_t position = 0;
    float score = 0.0f;
    if (moving) {
      position = p.positions[head + j];
      score = p.scores[head + j];
    }
    dest[tid] = moving ? j - before : -1;
    carry_equal += equal_total;
    carry_drop += drop_total;
    if (carry_drop == 0) {
      // Nothing moves before the first dropped token.
      __syncthreads();
      continue;
    }
    __syncthreads();
    const int vecs = p.chunk * 2 * row_vecs;
    for (int idx = tid; idx < vecs; idx += kThreads) {
      const int t = idx / (2 * row_vecs);
      if (dest[t] < 0) continue;
      const int r = idx - t * 2 * row_vecs;
      const uint8_t* base = r < row_vecs ? p.keys : p.values;
      const int v = r < row_vecs ? r : r - row_vecs;
      staging[idx] = *reinterpret_cast<const uint4*>(base + (head + c0 + t) * p.row_bytes + v * 16);
    }
    for (int idx = tid; idx < p.chunk * words; idx += kThreads) {
      const int w = idx / p.chunk;
      const int t = idx - w * p.chunk;
      if (dest[t] >= 0) aux_stage[idx] = p.aux[at.aux + static_cast<size_t>(w) * at.aux_stride + c0 + t];
    }
    __syncthreads();
    for (int idx = tid; idx < vecs; idx += kThreads) {
      const int t = idx / (2 * row_vecs);
      const int to = dest[t];
      if (to < 0) continue;
      const int r = idx - t * 2 * row_vecs;
      uint8_t* base = r < row_vecs ? p.keys : p.values;
      const int v = r < row_vecs ? r : r - row_vecs;
      *reinterpret_cast<uint4*>(base + (head + to) * p.row_bytes + v * 16) = staging[idx];
    }
    for (int idx = tid; idx < p.chunk * words; idx += kThreads) {
      const int w = idx / p.chunk;
      const int t = idx - w * p.chunk;
      const int to = dest[t];
      if (to >= 0) p.aux[at.aux + static_cast<size_t>(w) * at.aux_stride + to] = aux_stage[idx];
    }
    if (moving) {
      p.positions[head + j - before] = position;
      p.scores[head + j - before] = score;
    }
    __syncthreads();
  }
  if (tid == 0) p.lengths[slot] = n - count;
}

// ---- The ordered variant (the default): many blocks per head ----
//
// evict_select (one block per head) finds the threshold as above, then counts per chunk of `chunk` slots
// how many tokens are dropped before it (and how many threshold ties), stores that in the head's evict
// state and sets the head's new length. evict_move (one block per chunk and head) stages the chunk's
// moving rows in shared memory, marks the chunk read, waits until every earlier chunk its rows land on
// has been read, and writes. Blocks take their chunk from a per-head ticket counter, so a block only ever
// waits on blocks that are already running (as in decoupled look-back scans): no deadlock, and in-place
// moves never overwrite rows not yet read. An epoch per head tells this eviction's marks from older ones.

// Head evict state: kStateHeader ints, then per chunk: drops before it, ties before it, the read mark.
constexpr int kStateHeader = 8;
enum StateField { kEpoch = 0, kTicket = 1, kLengthBefore = 2, kThreshold = 3, kNeedEqual = 4 };

constexpr int kMoveThreads = 256;

struct OrderedParams {
  uint8_t* keys;
  uint8_t* values;
  int32_t* positions;
  float* scores;
  uint32_t* aux;
  int32_t* lengths;
  int32_t* error;
  int32_t* state;
  // Packed stores: each slot's drop flag goes here ([head][capacity]) for packed_compact; else null.
  uint8_t* dropped;
  const float* mean;
  size_t mean_stride;
  SeqList seqs;
  HeadMap heads;
  // Per-head counts of one sequence (evict_heads: [kvHeads] on the device), else null and `count` for all.
  const int32_t* counts;
  int32_t kv_heads;
  int32_t aux_words;
  int32_t row_bytes;
  int32_t count;
  int32_t sinks;
  int32_t recent;
  int32_t chunk;
  int32_t chunks;
};

__device__ __forceinline__ int32_t* head_state(const OrderedParams& p, size_t slot) {
  return p.state + slot * (kStateHeader + 3 * static_cast<size_t>(p.chunks));
}

__global__ void __launch_bounds__(kThreads) evict_select(const OrderedParams p) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ uint32_t s_k;
  const int tid = threadIdx.x;
  const size_t slot = static_cast<size_t>(p.seqs.ids[blockIdx.y]) * p.kv_heads + blockIdx.x;
  int32_t* state = head_state(p, slot);
  const HeadAt at = head_at(p.heads, slot);
  const int count = p.counts != nullptr ? p.counts[blockIdx.x] : p.count;
  const int n = p.lengths[slot];
  // A head evict_heads drops nothing from may be shorter than its sinks and recent tokens.
  const bool bad = n < 0 || n > at.cap || (count > 0 && static_cast<int64_t>(count) > static_cast<int64_t>(n) - p.sinks - p.recent);
  if (bad || count <= 0) {
    if (tid == 0) {
      state[kEpoch] += 1;
      state[kLengthBefore] = -1;
      if (bad) atomicOr(p.error, n < 0 || n > at.cap ? kErrorBadLength : kErrorCandidates);
    }
    return;
  }
  const size_t head = at.base;
  const float* sc = p.mean != nullptr ? p.mean + static_cast<size_t>(p.seqs.ids[blockIdx.y]) * p.mean_stride : p.scores + head;
  const int cand_end = n - p.recent;
  uint32_t prefix = 0;
  uint32_t mask = 0;
  uint32_t k = static_cast<uint32_t>(count);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int j = p.sinks + tid; j < cand_end; j += kThreads) {
      const uint32_t u = order_key(sc[j]);
      if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid < 32) select_bin(hist, k, prefix, shift, &s_prefix, &s_k);
    __syncthreads();
    prefix = s_prefix;
    k = s_k;
    mask |= 255u << shift;
  }
  const int need_equal = static_cast<int>(k);
  // Per chunk: drops and threshold ties before it (one pass, a chunk per step, counts by barrier votes).
  int32_t* drops_before = state + kStateHeader;
  int32_t* equal_before = drops_before + p.chunks;
  int drops = 0;
  int equals = 0;
  for (int c = 0; c * p.chunk < n; ++c) {
    int less_here = 0;
    int equal_here = 0;
    for (int j0 = c * p.chunk; j0 < min(n, (c + 1) * p.chunk); j0 += kThreads) {
      const int j = j0 + tid;
      const bool cand = j < min(n, (c + 1) * p.chunk) && j >= p.sinks && j < cand_end;
      const uint32_t u = cand ? order_key(sc[j]) : 0u;
      less_here += __syncthreads_count(cand && u < prefix);
      equal_here += __syncthreads_count(cand && u == prefix);
    }
    if (tid == 0) {
      drops_before[c] = drops;
      equal_before[c] = equals;
    }
    const int ties_dropped = max(0, min(equal_here, need_equal - equals));
    drops += less_here + ties_dropped;
    equals += equal_here;
  }
  if (tid == 0) {
    state[kEpoch] += 1;
    state[kLengthBefore] = n;
    state[kThreshold] = static_cast<int32_t>(prefix);
    state[kNeedEqual] = need_equal;
    p.lengths[slot] = n - count;
  }
}

__global__ void __launch_bounds__(kMoveThreads) evict_move(const OrderedParams p) {
  extern __shared__ uint4 staging[];
  __shared__ int warp_sums[kThreads / 32];
  __shared__ int dest[kMoveThreads];
  __shared__ int s_chunk;
  const int tid = threadIdx.x;
  const size_t slot = static_cast<size_t>(p.seqs.ids[blockIdx.z]) * p.kv_heads + blockIdx.y;
  int32_t* state = head_state(p, slot);
  if (tid == 0) s_chunk = atomicAdd(&state[kTicket], 1) % static_cast<int>(gridDim.x);
  __syncthreads();
  const int c = s_chunk;
  const int n = state[kLengthBefore];
  const int epoch = state[kEpoch];
  int32_t* marks = state + kStateHeader + 2 * p.chunks;
  const int c0 = c * p.chunk;
  if (n < 0 || c0 >= n) {
    if (tid == 0) store_release(marks + c, epoch);
    return;
  }
  const uint32_t threshold = static_cast<uint32_t>(state[kThreshold]);
  const int need_equal = state[kNeedEqual];
  const int drops_before = state[kStateHeader + c];
  const int equal_before = state[kStateHeader + p.chunks + c];
  const HeadAt at = head_at(p.heads, slot);
  const size_t head = at.base;
  const float* sc = p.mean != nullptr ? p.mean + static_cast<size_t>(p.seqs.ids[blockIdx.z]) * p.mean_stride : p.scores + head;
  const int cand_end = n - p.recent;

  const int j = c0 + tid;
  const bool in = tid < p.chunk && j < n;
  const bool cand = in && j >= p.sinks && j < cand_end;
  const uint32_t u = cand ? order_key(sc[j]) : 0u;
  const bool equal = cand && u == threshold;
  int total = 0;
  const int rank = equal_before + block_scan<kMoveThreads>(equal ? 1 : 0, warp_sums, &total);
  const bool drop = (cand && u < threshold) || (equal && rank < need_equal);
  const int before = drops_before + block_scan<kMoveThreads>(drop ? 1 : 0, warp_sums, &total);
  const bool moving = in && !drop && before > 0;
  if (in && p.dropped != nullptr) p.dropped[head + j] = drop ? 1 : 0;
  int32_t position = 0;
  float score = 0.0f;
  if (moving) {
    position = p.positions[head + j];
    score = p.scores[head + j];
  }
  dest[tid] = moving ? j - before : -1;
  const int moved_before_chunk = drops_before;
  __syncthreads();
  const int row_vecs = p.row_bytes / 16;
  const int words = p.aux_words;
  uint32_t* aux_stage = reinterpret_cast<uint32_t*>(staging + static_cast<size_t>(p.chunk) * 2 * row_vecs);
  const int vecs = p.chunk * 2 * row_vecs;
  for (int idx = tid; idx < vecs; idx += kMoveThreads) {
    const int t = idx / (2 * row_vecs);
    if (dest[t] < 0) continue;
    const int r = idx - t * 2 * row_vecs;
    const uint8_t* base = r < row_vecs ? p.keys : p.values;
    const int v = r < row_vecs ? r : r - row_vecs;
    staging[idx] = *reinterpret_cast<const uint4*>(base + (head + c0 + t) * p.row_bytes + v * 16);
  }
  for (int idx = tid; idx < p.chunk * words; idx += kMoveThreads) {
    const int w = idx / p.chunk;
    const int t = idx - w * p.chunk;
    if (dest[t] >= 0) aux_stage[idx] = p.aux[at.aux + static_cast<size_t>(w) * at.aux_stride + c0 + t];
  }
  __syncthreads();
  if (tid == 0) {
    // This chunk is read; then wait for the earlier chunks its rows land on.
    store_release(marks + c, epoch);
    const int lowest = max(0, c0 - moved_before_chunk) / p.chunk;
    for (int w = lowest; w < c; ++w) {
      while (load_acquire(marks + w) != epoch) __nanosleep(64);
    }
  }
  __syncthreads();
  for (int idx = tid; idx < vecs; idx += kMoveThreads) {
    const int t = idx / (2 * row_vecs);
    const int to = dest[t];
    if (to < 0) continue;
    const int r = idx - t * 2 * row_vecs;
    uint8_t* base = r < row_vecs ? p.keys : p.values;
    const int v = r < row_vecs ? r : r - row_vecs;
    *reinterpret_cast<uint4*>(base + (head + to) * p.row_bytes + v * 16) = staging[idx];
  }
  for (int idx = tid; idx < p.chunk * words; idx += kMoveThreads) {
    const int w = idx / p.chunk;
    const int t = idx - w * p.chunk;
    const int to = dest[t];
    if (to >= 0) p.aux[at.aux + static_cast<size_t>(w) * at.aux_stride + to] = aux_stage[idx];
  }
  if (moving) {
    p.positions[head + j - before] = position;
    p.scores[head + j - before] = score;
  }
}

// Packed stores: after evict_select/evict_move compacted the per-slot state (with no key or value rows),
// one block per head compacts what the drop flags say in the packed arrays, as compactPacked in
// src/backend/packed-store.ts: kept codes move with their tokens (never re-quantised), a run keeps its
// scales and zero points with its survivors' count, an emptied run leaves the table, residual rows move
// within the window. Moves go to lower slots; each step's reads finish (barrier) before its writes.
constexpr int kCompactThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kCompactThreads) packed_compact(const OrderedParams o, const PackedArgs p) {
  __shared__ uint32_t stage_codes[32 * 2 * 64];
  __shared__ uint16_t stage_groups[32 * 2 * 32];
  __shared__ int dest[32];
  __shared__ int s_count;
  const int tid = threadIdx.x;
  const size_t slot = static_cast<size_t>(o.seqs.ids[blockIdx.y]) * o.kv_heads + blockIdx.x;
  const int n = head_state(o, slot)[kLengthBefore];
  if (n < 0) return;
  const int packed = p.packed[slot];
  const int runs = p.runs[slot];
  const uint8_t* dropped = p.dropped + slot * o.heads.capacity;
  int32_t* survivors = p.run_scratch + slot * p.max_runs;
  const int32_t* slot_run = p.slot_run + slot * p.packed_slots;
  for (int r = tid; r < runs; r += kCompactThreads) survivors[r] = 0;
  __syncthreads();
  for (int j = tid; j < packed; j += kCompactThreads) {
    if (dropped[j] == 0) atomicAdd(&survivors[slot_run[j]], 1);
  }
  __syncthreads();

  // Packed tokens, 32 slots a step.
  const int words = p.code_bytes / 4;
  const int d = p.code_bytes * 8 / p.bits;
  const int groups = d / p.group;
  uint32_t* key_words = reinterpret_cast<uint32_t*>(p.key_codes) + slot * p.packed_slots * words;
  uint32_t* value_words = reinterpret_cast<uint32_t*>(p.value_codes) + slot * p.packed_slots * words;
  uint16_t* scales = p.value_scales + slot * p.packed_slots * groups;
  uint16_t* zeros = p.value_zeros + slot * p.packed_slots * groups;
  int kept = 0;
  for (int c0 = 0; c0 < packed; c0 += 32) {
    if (tid < 32) {
      const int j = c0 + tid;
      const bool keep = j < packed && dropped[j] == 0;
      const uint32_t mask = __ballot_sync(0xffffffffu, keep);
      const int to = kept + __popc(mask & ((1u << tid) - 1u));
      dest[tid] = keep && to != j ? to : -1;
      if (tid == 0) s_count = __popc(mask);
    }
    __syncthreads();
    for (int idx = tid; idx < 32 * 2 * words; idx += kCompactThreads) {
      const int t = idx / (2 * words);
      const int w = idx - t * 2 * words;
      if (dest[t] >= 0) stage_codes[idx] = w < words ? key_words[(c0 + t) * words + w] : value_words[(c0 + t) * words + w - words];
    }
    for (int idx = tid; idx < 32 * 2 * groups; idx += kCompactThreads) {
      const int t = idx / (2 * groups);
      const int q = idx - t * 2 * groups;
      if (dest[t] >= 0) stage_groups[idx] = q < groups ? scales[(c0 + t) * groups + q] : zeros[(c0 + t) * groups + q - groups];
    }
    __syncthreads();
    for (int idx = tid; idx < 32 * 2 * words; idx += kCompactThreads) {
      const int t = idx / (2 * words);
      const int w = idx - t * 2 * words;
      const int to = dest[t];
      if (to < 0) continue;
      if (w < words) {
        key_words[to * words + w] = stage_codes[idx];
      } else {
        value_words[to * words + w - words] = stage_codes[idx];
      }
    }
    for (int idx = tid; idx < 32 * 2 * groups; idx += kCompactThreads) {
      const int t = idx / (2 * groups);
      const int q = idx - t * 2 * groups;
      const int to = dest[t];
      if (to < 0) continue;
      if (q < groups) {
        scales[to * groups + q] = stage_groups[idx];
      } else {
        zeros[to * groups + q - groups] = stage_groups[idx];
      }
    }
    kept += s_count;
    __syncthreads();
  }

  // The run table: runs with survivors move down in order, one entry at a time.
  int kept_runs = 0;
  uint16_t* key_scales = p.key_scales + slot * p.max_runs * d;
  uint16_t* key_zeros = p.key_zeros + slot * p.max_runs * d;
  int32_t* lengths = p.run_lengths + slot * p.max_runs;
  uint8_t* generations = p.run_generations + slot * p.max_runs;
  for (int r = 0; r < runs; ++r) {
    const int count = survivors[r];
    if (count == 0) continue;
    if (kept_runs != r) {
      for (int c = tid; c < d; c += kCompactThreads) {
        key_scales[kept_runs * d + c] = key_scales[r * d + c];
        key_zeros[kept_runs * d + c] = key_zeros[r * d + c];
      }
      if (tid == 0) generations[kept_runs] = generations[r];
    }
    if (tid == 0) lengths[kept_runs] = count;
    ++kept_runs;
    __syncthreads();
  }

  // Residual rows, one at a time.
  T* rk = reinterpret_cast<T*>(p.residual_keys) + slot * p.residual_slots * d;
  T* rv = reinterpret_cast<T*>(p.residual_values) + slot * p.residual_slots * d;
  int kept_residual = 0;
  for (int j = packed; j < n; ++j) {
    if (dropped[j] != 0) continue;
    const int from = j - packed;
    if (kept_residual != from) {
      for (int c = tid; c < d; c += kCompactThreads) {
        rk[kept_residual * d + c] = rk[from * d + c];
        rv[kept_residual * d + c] = rv[from * d + c];
      }
      __syncthreads();
    }
    ++kept_residual;
  }
  if (tid == 0) {
    p.packed[slot] = kept;
    p.runs[slot] = kept_runs;
  }
  __syncthreads();
  rebuild_slot_runs(p, slot);
}

std::atomic<uint64_t> prepared_devices{0};

}  // namespace

Result prepare_kernels() {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return Result{Status::Ok, static_cast<int>(e), "cudaGetDevice"};
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (prepared_devices.load() & bit) != 0) return Result{};
  int optin = 0;
  cudaFuncAttributes attributes{};
  cudaFuncAttributes move_attributes{};
  e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e == cudaSuccess) e = cudaFuncGetAttributes(&attributes, evict_kernel);
  if (e == cudaSuccess) e = cudaFuncGetAttributes(&move_attributes, evict_move);
  if (e != cudaSuccess) return Result{Status::Ok, static_cast<int>(e), "cudaDeviceGetAttribute"};
  const int static_bytes = static_cast<int>(std::max(attributes.sharedSizeBytes, move_attributes.sharedSizeBytes));
  const int staging = std::max(kDefaultStagingBytes / 2, optin - static_bytes - 1024);
  e = cudaFuncSetAttribute(evict_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, staging);
  if (e == cudaSuccess) e = cudaFuncSetAttribute(evict_move, cudaFuncAttributeMaxDynamicSharedMemorySize, staging);
  if (e != cudaSuccess) return Result{Status::Ok, static_cast<int>(e), "cudaFuncSetAttribute"};
  if (device < kMaxDevices) staging_bytes[device] = staging;
  prepared_devices.fetch_or(bit);
  return Result{};
}

int evict_staging_bytes() {
  int device = 0;
  cudaGetDevice(&device);
  return device < kMaxDevices && staging_bytes[device] > 0 ? staging_bytes[device] : kDefaultStagingBytes;
}

// Staging bytes a move block may take (SCISSORHANDS_EVICT_CHUNK_BYTES, default 72 KiB: three blocks a
// multiprocessor on an H100).
int move_staging_cap() {
  static const int cap = [] {
    const char* text = std::getenv("SCISSORHANDS_EVICT_CHUNK_BYTES");
    const int value = text == nullptr ? 0 : std::atoi(text);
    return value >= 4096 && value <= 200 * 1024 ? value : 72 * 1024;
  }();
  return cap;
}

int32_t evict_chunk_for(const StoreSpec& spec) {
  // Up to 128 slots a move block, fewer when rows are large, so a block's staging stays modest and
  // several blocks share a multiprocessor.
  // A packed store without tracker words moves nothing per slot but positions and scores (not staged).
  const int token_bytes = std::max(1, 2 * static_cast<int>(dense_row_bytes(spec)) + 4 * spec.aux_words);
  const int staging = std::min(evict_staging_bytes(), move_staging_cap());
  return std::max(1, std::min(128, staging / token_bytes));
}

// SCISSORHANDS_EVICT_IMPL=block selects the one-block-per-head eviction instead of the ordered one.
bool block_evict() {
  static const bool block = [] {
    const char* text = std::getenv("SCISSORHANDS_EVICT_IMPL");
    return text != nullptr && std::strcmp(text, "block") == 0;
  }();
  return block;
}

namespace {

// evict and evict_heads: `counts` (device, [kvHeads] of the one sequence) overrides `count` when set.
Result evict_launch(const Store& store, const int32_t* seqs, int32_t batch, int32_t length, int32_t count, const int32_t* counts,
                    int32_t sinks, int32_t recent, EvictScope scope, void* stream) {
  const StoreSpec& s = store.spec;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  EvictParams p{};
  for (int32_t b = 0; b < batch; ++b) {
    if (seqs[b] < 0 || seqs[b] >= s.max_sequences) return Result{Status::Argument, 0, "seq"};
    p.seqs.ids[b] = seqs[b];
  }
  int device = 0;
  cudaGetDevice(&device);
  const int staging = device < kMaxDevices && staging_bytes[device] > 0 ? staging_bytes[device] : kDefaultStagingBytes;
  p.keys = store.keys;
  p.values = store.values;
  p.positions = store.positions;
  p.scores = store.scores;
  p.aux = store.aux;
  p.lengths = store.lengths;
  p.error = store.error;
  p.heads = head_map(store);
  p.counts = counts;
  p.kv_heads = s.kv_heads;
  p.aux_words = s.aux_words;
  p.row_bytes = static_cast<int32_t>(dense_row_bytes(s));
  p.count = count;
  p.sinks = sinks;
  p.recent = recent;
  const int token_bytes = std::max(1, 2 * p.row_bytes + 4 * s.aux_words);
  p.chunk = std::max(1, std::min(kThreads, staging / token_bytes));
  if (scope == EvictScope::Layer) {
    // Each sequence's means go to the start of its own scratch.
    const size_t stride = static_cast<size_t>(s.query_heads) * s.capacity;
    const int32_t n = std::max(1, std::min(length, s.capacity));
    layer_mean<<<dim3((n + 255) / 256, batch), 256, 0, st>>>(store.scores, store.lengths, store.scratch, stride, p.seqs,
                                                             s.kv_heads, p.heads);
    const Result r = launched("evict_mean");
    if (!ok(r)) return r;
    p.mean = store.scratch;
    p.mean_stride = stride;
  }
  // Packed stores always take the ordered path, whose move kernel leaves the drop flags for packed_compact.
  if (!block_evict() || s.bits != 0) {
    OrderedParams o{};
    o.keys = p.keys;
    o.values = p.values;
    o.positions = p.positions;
    o.scores = p.scores;
    o.aux = p.aux;
    o.lengths = p.lengths;
    o.error = p.error;
    o.state = store.evict_state;
    o.mean = p.mean;
    o.mean_stride = p.mean_stride;
    o.seqs = p.seqs;
    o.heads = p.heads;
    o.counts = p.counts;
    o.kv_heads = p.kv_heads;
    o.aux_words = p.aux_words;
    o.row_bytes = p.row_bytes;
    o.count = p.count;
    o.sinks = p.sinks;
    o.recent = p.recent;
    o.chunk = store.evict_chunk;
    o.chunks = store.evict_chunks;
    o.dropped = s.bits != 0 ? store.packed.dropped : nullptr;
    evict_select<<<dim3(s.kv_heads, batch), kThreads, 0, st>>>(o);
    const Result r = launched("evict_select");
    if (!ok(r)) return r;
    const size_t move_smem = static_cast<size_t>(o.chunk) * token_bytes;
    evict_move<<<dim3(o.chunks, s.kv_heads, batch), kMoveThreads, move_smem, st>>>(o);
    if (s.bits == 0) return launched("evict_move");
    const Result moved = launched("evict_move");
    if (!ok(moved)) return moved;
    const PackedArgs pk = packed_args(store);
    return SH_DISPATCH_DTYPE(s.dtype, T, [&] {
      packed_compact<T><<<dim3(s.kv_heads, batch), kCompactThreads, 0, st>>>(o, pk);
      return launched("packed_compact");
    });
  }
  const size_t smem = static_cast<size_t>(p.chunk) * token_bytes;
  evict_kernel<<<dim3(s.kv_heads, batch), kThreads, smem, st>>>(p);
  return launched("evict");
}

}  // namespace

Result evict(const Store& store, const int32_t* seqs, int32_t batch, int32_t length, int32_t count, int32_t sinks,
             int32_t recent, EvictScope scope, void* stream) {
  if (batch < 1 || batch > kMaxBatch || count < 0 || sinks < 0 || recent < 0) return Result{Status::Argument, 0, "evict"};
  if (count == 0) return Result{};
  return evict_launch(store, seqs, batch, length, count, nullptr, sinks, recent, scope, stream);
}

Result evict_heads(const Store& store, int32_t seq, const int32_t* counts, int32_t sinks, int32_t recent, void* stream) {
  const StoreSpec& s = store.spec;
  if (seq < 0 || seq >= s.max_sequences || sinks < 0 || recent < 0) return Result{Status::Argument, 0, "evict_heads"};
  int32_t longest = 0;
  for (int32_t h = 0; h < s.kv_heads; ++h) {
    if (counts[h] < 0) return Result{Status::Argument, 0, "counts"};
    longest = std::max(longest, counts[h]);
  }
  if (longest == 0) return Result{};
  // Pageable source: the copy has read `counts` when it returns, and runs before the launch in stream order.
  const cudaError_t e = cudaMemcpyAsync(store.head_args, counts, static_cast<size_t>(s.kv_heads) * 4, cudaMemcpyHostToDevice,
                                        static_cast<cudaStream_t>(stream));
  if (e != cudaSuccess) return Result{Status::Ok, static_cast<int>(e), "evict_heads_counts"};
  return evict_launch(store, &seq, 1, s.capacity, 0, store.head_args, sinks, recent, EvictScope::Head, stream);
}

}  // namespace sh::cuda
