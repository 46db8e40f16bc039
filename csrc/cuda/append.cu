// append (docs/semantics.md) from strided device inputs: one block per KV head writes the tokens at the
// head's end, initialises their tracker state and advances the head's length.
#include "common.cuh"
#include "internal.cuh"

namespace sh::cuda {
namespace {

struct AppendParams {
  uint8_t* keys;
  uint8_t* values;
  int32_t* positions;
  float* scores;
  uint32_t* aux;
  int32_t* lengths;
  int32_t* error;
  Tensor k;
  Tensor v;
  HeadMap heads;
  int32_t seq;
  int32_t kv_heads;
  int32_t head_dim;
  int32_t aux_words;
  int32_t count;
  int32_t first_position;
  uint32_t layer;
  TrackerArgs tracker;
};

template <typename T>
__global__ void __launch_bounds__(256) append_kernel(const AppendParams p) {
  const int h = blockIdx.x;
  const size_t slot0 = static_cast<size_t>(p.seq) * p.kv_heads + h;
  const HeadAt at = head_at(p.heads, slot0);
  const int32_t n = p.lengths[slot0];
  if (n < 0 || n > at.cap || p.count > at.cap - n) {
    if (threadIdx.x == 0) atomicOr(p.error, n < 0 || n > at.cap ? kErrorBadLength : kErrorNoRoom);
    return;
  }
  const size_t base = at.base + n;
  T* keys = reinterpret_cast<T*>(p.keys) + base * p.head_dim;
  T* values = reinterpret_cast<T*>(p.values) + base * p.head_dim;
  append_rows(keys, values, p.aux, at, n, p.k, p.v, h, p.head_dim, p.aux_words, p.count);
  __syncthreads();
  append_state(keys, p.positions, p.scores, base, p.head_dim, p.count, p.first_position, p.tracker, p.layer, h);
  __syncthreads();
  if (threadIdx.x == 0) p.lengths[slot0] = n + p.count;
}

}  // namespace

Result append(const Store& store, int32_t seq, Tensor k, Tensor v, int32_t count, int32_t first_position,
              const TrackerSpec& tracker, void* stream) {
  const StoreSpec& s = store.spec;
  if (seq < 0 || seq >= s.max_sequences || count < 0 || count > s.capacity) return Result{Status::Argument, 0, "append"};
  if (count == 0) return Result{};
  if (s.bits != 0) return append_packed(store, seq, k, v, count, first_position, tracker, stream);
  AppendParams p{};
  p.keys = store.keys;
  p.values = store.values;
  p.positions = store.positions;
  p.scores = store.scores;
  p.aux = store.aux;
  p.lengths = store.lengths;
  p.error = store.error;
  p.k = k;
  p.v = v;
  p.seq = seq;
  p.heads = head_map(store);
  p.kv_heads = s.kv_heads;
  p.head_dim = s.head_dim;
  p.aux_words = s.aux_words;
  p.count = count;
  p.first_position = first_position;
  p.layer = s.layer;
  p.tracker = tracker_args(tracker);
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  return SH_DISPATCH_DTYPE(s.dtype, T, [&] {
    append_kernel<T><<<s.kv_heads, 256, 0, st>>>(p);
    return launched("append");
  });
}

}  // namespace sh::cuda
