// Per-head layouts and prompt compression on the device (docs/semantics.md "Per-head layout" and
// "Prompt compression"): the even start of a sequence's layout, relayout, score pooling and the restart
// of tracker state. The CPU twins are relayoutHostStore, poolHostScores and restartHostState
// (src/backend/host-store.ts); test/gpu/head-layout.test.ts compares them. These run on the prompt
// path only: each copies its per-call arguments (kvHeads ints) to the store's head_args first.
#include <algorithm>

#include "common.cuh"
#include "internal.cuh"

namespace sh::cuda {
namespace {

constexpr int kMoveThreads = 1024;

__global__ void spread_kernel(int32_t* bases, int32_t* caps, int32_t kv_heads, int32_t capacity, int32_t slots, int32_t seq0,
                              int32_t seqs) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(seqs) * kv_heads) return;
  const int32_t seq = seq0 + static_cast<int32_t>(i / kv_heads);
  const int32_t h = static_cast<int32_t>(i % kv_heads);
  const int32_t share = min(capacity, slots / kv_heads);
  bases[static_cast<size_t>(seq) * kv_heads + h] = seq * slots + h * share;
  caps[static_cast<size_t>(seq) * kv_heads + h] = share;
}

// memmove of n words by one block: chunks of blockDim words are read into registers, then (after a
// barrier) written, lowest chunk first when moving down and highest first when moving up, so that no
// write lands on a word a later chunk has still to read.
__device__ void block_move(uint32_t* dst, const uint32_t* src, size_t n) {
  if (dst == src || n == 0) return;
  const size_t chunks = (n + blockDim.x - 1) / blockDim.x;
  for (size_t k = 0; k < chunks; ++k) {
    const size_t c = dst < src ? k : chunks - 1 - k;
    const size_t j = c * blockDim.x + threadIdx.x;
    const uint32_t v = j < n ? src[j] : 0u;
    __syncthreads();
    if (j < n) dst[j] = v;
    __syncthreads();
  }
}

struct RelayoutParams {
  uint8_t* keys;
  uint8_t* values;
  int32_t* positions;
  float* scores;
  uint32_t* aux;
  const int32_t* lengths;
  int32_t* bases;
  int32_t* caps;
  // [kvHeads] new capacities, then [kvHeads] their bases (written here).
  int32_t* args;
  int64_t plane;
  int32_t seq;
  int32_t kv_heads;
  int32_t slots;
  int32_t aux_words;
  int32_t row_words;
};

// One block: the heads of seq go to their new bases, those moving down first in head order, then those
// moving up in reverse head order (relayoutHostStore's order), so that no head overwrites one not yet moved.
__global__ void __launch_bounds__(kMoveThreads) relayout_kernel(const RelayoutParams p) {
  const size_t first = static_cast<size_t>(p.seq) * p.kv_heads;
  int32_t* new_bases = p.args + p.kv_heads;
  if (threadIdx.x == 0) {
    int32_t next = p.seq * p.slots;
    for (int h = 0; h < p.kv_heads; ++h) {
      new_bases[h] = next;
      next += p.args[h];
    }
  }
  __syncthreads();
  for (int pass = 0; pass < 2; ++pass) {
    for (int k = 0; k < p.kv_heads; ++k) {
      const int h = pass == 0 ? k : p.kv_heads - 1 - k;
      const size_t from = static_cast<size_t>(p.bases[first + h]);
      const size_t to = static_cast<size_t>(new_bases[h]);
      if (pass == 0 ? to > from : to <= from) continue;
      const size_t n = static_cast<size_t>(max(p.lengths[first + h], 0));
      const size_t rw = static_cast<size_t>(p.row_words);
      block_move(reinterpret_cast<uint32_t*>(p.keys) + to * rw, reinterpret_cast<const uint32_t*>(p.keys) + from * rw, n * rw);
      block_move(reinterpret_cast<uint32_t*>(p.values) + to * rw, reinterpret_cast<const uint32_t*>(p.values) + from * rw, n * rw);
      block_move(reinterpret_cast<uint32_t*>(p.positions) + to, reinterpret_cast<const uint32_t*>(p.positions) + from, n);
      block_move(reinterpret_cast<uint32_t*>(p.scores) + to, reinterpret_cast<const uint32_t*>(p.scores) + from, n);
      for (int w = 0; w < p.aux_words; ++w) block_move(p.aux + w * p.plane + to, p.aux + w * p.plane + from, n);
      if (threadIdx.x == 0) {
        p.bases[first + h] = static_cast<int32_t>(to);
        p.caps[first + h] = p.args[h];
      }
      __syncthreads();
    }
  }
}

// One block per head: scores [0, ends[h]) are copied to the sequence's scratch (the pooling reads the
// unpooled scores), then each slot takes the avg (f64 sum in slot order over the window's present
// slots, divided by kernel, rounded once to f32) or max (NaN if any is NaN, +0 over -0, as Math.max).
__global__ void pool_kernel(float* scores, const int32_t* lengths, HeadMap heads, float* scratch, const int32_t* ends, int32_t seq,
                            int32_t kv_heads, int32_t kernel, bool max_pool) {
  const int h = blockIdx.x;
  const size_t i = static_cast<size_t>(seq) * kv_heads + h;
  const HeadAt at = head_at(heads, i);
  const int end = min(max(ends[h], 0), min(lengths[i], at.cap));
  float* raw = scratch + static_cast<size_t>(h) * heads.capacity;
  float* sc = scores + at.base;
  for (int j = threadIdx.x; j < end; j += blockDim.x) raw[j] = sc[j];
  __syncthreads();
  const int half = kernel / 2;
  for (int j = threadIdx.x; j < end; j += blockDim.x) {
    const int from = max(0, j - half);
    const int to = min(end, j + half + 1);
    if (!max_pool) {
      double acc = 0.0;
      for (int t = from; t < to; ++t) acc = __dadd_rn(acc, static_cast<double>(raw[t]));
      sc[j] = __double2float_rn(__ddiv_rn(acc, static_cast<double>(kernel)));
    } else {
      float acc = -INFINITY;
      for (int t = from; t < to; ++t) {
        const float x = raw[t];
        if (x != x || acc != acc) acc = x != x ? x : acc;
        else if (x > acc || (x == acc && signbit(acc) && !signbit(x))) acc = x;
      }
      sc[j] = acc;
    }
  }
}

// One block per head: scores and aux words of the kept slots zeroed, then the append rule on each.
template <typename T>
__global__ void restart_kernel(const uint8_t* keys, const int32_t* positions, float* scores, uint32_t* aux, const int32_t* lengths,
                               HeadMap heads, int32_t seq, int32_t kv_heads, int32_t head_dim, uint32_t layer, TrackerArgs tracker) {
  const int h = blockIdx.x;
  const size_t i = static_cast<size_t>(seq) * kv_heads + h;
  const HeadAt at = head_at(heads, i);
  const int n = min(max(lengths[i], 0), at.cap);
  for (int64_t idx = threadIdx.x; idx < static_cast<int64_t>(n) * heads.aux_words; idx += blockDim.x) {
    const int64_t w = idx / n;
    aux[at.aux + w * at.aux_stride + (idx - w * n)] = 0;
  }
  const T* k = reinterpret_cast<const T*>(keys) + at.base * head_dim;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    scores[at.base + j] = append_score(k + static_cast<size_t>(j) * head_dim, head_dim, tracker, layer, h, positions[at.base + j]);
  }
}

Result upload_args(const Store& store, const int32_t* args, void* stream) {
  const cudaError_t e = cudaMemcpyAsync(store.head_args, args, static_cast<size_t>(store.spec.kv_heads) * 4, cudaMemcpyHostToDevice,
                                        static_cast<cudaStream_t>(stream));
  return e == cudaSuccess ? Result{} : Result{Status::Ok, static_cast<int>(e), "head_args"};
}

}  // namespace

Result spread_evenly(const Store& store, int32_t seq, void* stream) {
  const StoreSpec& s = store.spec;
  const int32_t seqs = seq < 0 ? s.max_sequences : 1;
  const int64_t n = static_cast<int64_t>(seqs) * s.kv_heads;
  spread_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      store.bases, store.caps, s.kv_heads, s.capacity, s.slots, seq < 0 ? 0 : seq, seqs);
  return launched("spread_evenly");
}

Result relayout(const Store& store, int32_t seq, const int32_t* capacities, void* stream) {
  const StoreSpec& s = store.spec;
  if (seq < 0 || seq >= s.max_sequences || s.slots == 0) return Result{Status::Argument, 0, "relayout"};
  int64_t total = 0;
  for (int32_t h = 0; h < s.kv_heads; ++h) {
    if (capacities[h] < 0 || capacities[h] > s.capacity) return Result{Status::Argument, 0, "capacities"};
    total += capacities[h];
  }
  if (total > s.slots) return Result{Status::Budget, 0, "capacities"};
  const Result up = upload_args(store, capacities, stream);
  if (!ok(up)) return up;
  RelayoutParams p{};
  p.keys = store.keys;
  p.values = store.values;
  p.positions = store.positions;
  p.scores = store.scores;
  p.aux = store.aux;
  p.lengths = store.lengths;
  p.bases = store.bases;
  p.caps = store.caps;
  p.args = store.head_args;
  p.plane = head_map(store).plane;
  p.seq = seq;
  p.kv_heads = s.kv_heads;
  p.slots = s.slots;
  p.aux_words = s.aux_words;
  p.row_words = static_cast<int32_t>(row_bytes(s) / 4);
  relayout_kernel<<<1, kMoveThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launched("relayout");
}

Result pool_scores(const Store& store, int32_t seq, int32_t kernel, bool max, const int32_t* ends, void* stream) {
  const StoreSpec& s = store.spec;
  if (seq < 0 || seq >= s.max_sequences || kernel < 1) return Result{Status::Argument, 0, "pool_scores"};
  const Result up = upload_args(store, ends, stream);
  if (!ok(up)) return up;
  // Each head stages its scores in its own capacity floats of the sequence's scratch (queryHeads >= kvHeads).
  float* scratch = store.scratch + static_cast<size_t>(seq) * s.query_heads * s.capacity;
  pool_kernel<<<s.kv_heads, 256, 0, static_cast<cudaStream_t>(stream)>>>(store.scores, store.lengths, head_map(store), scratch,
                                                                          store.head_args, seq, s.kv_heads, kernel, max);
  return launched("pool_scores");
}

Result restart_state(const Store& store, int32_t seq, const TrackerSpec& tracker, void* stream) {
  const StoreSpec& s = store.spec;
  if (seq < 0 || seq >= s.max_sequences || s.bits != 0) return Result{Status::Argument, 0, "restart_state"};
  const TrackerArgs t = tracker_args(tracker);
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  return SH_DISPATCH_DTYPE(s.dtype, T, [&] {
    restart_kernel<T><<<s.kv_heads, 256, 0, st>>>(store.keys, store.positions, store.scores, store.aux, store.lengths, head_map(store),
                                                  seq, s.kv_heads, s.head_dim, s.layer, t);
    return launched("restart_state");
  });
}

}  // namespace sh::cuda
