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

#include "common.cuh"
#include "internal.cuh"

namespace sh::cuda {
namespace {

constexpr int kThreads = 512;
// Within the 99 KB a block may opt into on sm_86/sm_89, beside the static shared memory.
constexpr int kStagingBytes = 88 * 1024;

struct EvictParams {
  uint8_t* keys;
  uint8_t* values;
  int32_t* positions;
  float* scores;
  uint32_t* aux;
  int32_t* lengths;
  int32_t* error;
  const float* mean;
  int32_t seq;
  int32_t kv_heads;
  int32_t capacity;
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

// Exclusive prefix sum over the block; *total receives the sum. Ends with a barrier.
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
    int w = lane < kThreads / 32 ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < kThreads / 32) warp_sums[lane] = w;
  }
  __syncthreads();
  const int before = warp == 0 ? 0 : warp_sums[warp - 1];
  const int result = before + x - v;
  *total = warp_sums[kThreads / 32 - 1];
  __syncthreads();
  return result;
}

__global__ void layer_mean(const float* scores, float* mean, int32_t seq, int32_t kv_heads, int32_t capacity, int32_t n) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float acc = 0.0f;
  for (int h = 0; h < kv_heads; ++h) acc = __fadd_rn(acc, scores[(static_cast<size_t>(seq) * kv_heads + h) * capacity + j]);
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
  const size_t slot = static_cast<size_t>(p.seq) * p.kv_heads + blockIdx.x;
  const int n = p.lengths[slot];
  if (n < 0 || n > p.capacity) {
    if (tid == 0) atomicOr(p.error, kErrorBadLength);
    return;
  }
  if (static_cast<int64_t>(p.count) > static_cast<int64_t>(n) - p.sinks - p.recent) {
    if (tid == 0) atomicOr(p.error, kErrorCandidates);
    return;
  }
  if (p.count <= 0) return;
  const size_t head = slot * p.capacity;
  const float* sc = p.mean != nullptr ? p.mean : p.scores + head;
  const int cand_end = n - p.recent;

  // The count-th lowest key among the candidates, 8 bits at a time.
  uint32_t prefix = 0;
  uint32_t mask = 0;
  uint32_t k = static_cast<uint32_t>(p.count);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int j = p.sinks + tid; j < cand_end; j += kThreads) {
      const uint32_t u = order_key(sc[j]);
      if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      uint32_t cum = 0;
      for (uint32_t b = 0; b < 256; ++b) {
        const uint32_t h = hist[b];
        if (cum + h >= k) {
          s_prefix = prefix | (b << shift);
          s_k = k - cum;
          break;
        }
        cum += h;
      }
    }
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
    const int rank = carry_equal + block_scan(equal ? 1 : 0, warp_sums, &equal_total);
    const bool drop = (cand && u < threshold) || (equal && rank < need_equal);
    int drop_total = 0;
    const int before = carry_drop + block_scan(drop ? 1 : 0, warp_sums, &drop_total);
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
      const int t = idx / words;
      if (dest[t] >= 0) aux_stage[idx] = p.aux[(head + c0 + t) * words + (idx - t * words)];
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
      const int t = idx / words;
      const int to = dest[t];
      if (to >= 0) p.aux[(head + to) * words + (idx - t * words)] = aux_stage[idx];
    }
    if (moving) {
      p.positions[head + j - before] = position;
      p.scores[head + j - before] = score;
    }
    __syncthreads();
  }
  if (tid == 0) p.lengths[slot] = n - p.count;
}

std::atomic<uint64_t> prepared_devices{0};

}  // namespace

Result prepare_kernels() {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return Result{Status::Ok, static_cast<int>(e), "cudaGetDevice"};
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (prepared_devices.load() & bit) != 0) return Result{};
  e = cudaFuncSetAttribute(evict_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kStagingBytes);
  if (e != cudaSuccess) return Result{Status::Ok, static_cast<int>(e), "cudaFuncSetAttribute"};
  prepared_devices.fetch_or(bit);
  return Result{};
}

Result evict(const Store& store, int32_t seq, int32_t length, int32_t count, int32_t sinks, int32_t recent, EvictScope scope,
             void* stream) {
  const StoreSpec& s = store.spec;
  if (seq < 0 || seq >= s.max_sequences || count < 0 || sinks < 0 || recent < 0) return Result{Status::Argument, 0, "evict"};
  if (count == 0) return Result{};
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  EvictParams p{};
  p.keys = store.keys;
  p.values = store.values;
  p.positions = store.positions;
  p.scores = store.scores;
  p.aux = store.aux;
  p.lengths = store.lengths;
  p.error = store.error;
  p.seq = seq;
  p.kv_heads = s.kv_heads;
  p.capacity = s.capacity;
  p.aux_words = s.aux_words;
  p.row_bytes = static_cast<int32_t>(row_bytes(s));
  p.count = count;
  p.sinks = sinks;
  p.recent = recent;
  const int token_bytes = 2 * p.row_bytes + 4 * s.aux_words;
  p.chunk = std::max(1, std::min(kThreads, kStagingBytes / token_bytes));
  if (scope == EvictScope::Layer) {
    float* mean = store.scratch + static_cast<size_t>(seq) * s.query_heads * s.capacity;
    const int32_t n = std::max(1, std::min(length, s.capacity));
    layer_mean<<<(n + 255) / 256, 256, 0, st>>>(store.scores, mean, seq, s.kv_heads, s.capacity, n);
    const Result r = launched("evict_mean");
    if (!ok(r)) return r;
    p.mean = mean;
  }
  const size_t smem = static_cast<size_t>(p.chunk) * token_bytes;
  evict_kernel<<<s.kv_heads, kThreads, smem, st>>>(p);
  return launched("evict");
}

}  // namespace sh::cuda
