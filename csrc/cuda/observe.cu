// observe (docs/semantics.md): one observation of engine-computed probabilities ([queryHeads][stride],
// device f32), GQA-combined per kept token and fed to the tracker rule. A one-thread kernel advances the
// clock first, so the observation kernel reads its step as steps[seq] - 1.
#include <algorithm>

#include "common.cuh"

namespace sh::cuda {
namespace {

struct ObserveParams {
  const int32_t* lengths;
  const double* steps;
  float* scores;
  uint32_t* aux;
  const float* probs;
  int64_t stride;
  HeadMap heads;
  int32_t seq;
  int32_t kv_heads;
  int32_t group;
  TrackerArgs tracker;
};

__global__ void advance_clock(double* steps, int32_t seq, double by) { steps[seq] += by; }

__global__ void __launch_bounds__(256) observe_kernel(const ObserveParams p) {
  const int hk = blockIdx.y;
  const size_t i = static_cast<size_t>(p.seq) * p.kv_heads + hk;
  const HeadAt at = head_at(p.heads, i);
  int n = p.lengths[i];
  n = n < 0 ? 0 : (n > at.cap ? at.cap : n);
  if (n > p.stride) n = static_cast<int>(p.stride);
  const uint64_t step = static_cast<uint64_t>(p.steps[p.seq]) - 1;
  const float* rows = p.probs + static_cast<size_t>(hk) * p.group * p.stride;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < n; j += gridDim.x * blockDim.x) {
    float c = 0.0f;
    for (int g = 0; g < p.group; ++g) c = gqa_fold(c, rows[g * p.stride + j], g, p.tracker.gqa_max);
    c = gqa_finish(c, p.group, p.tracker.gqa_max);
    observe_token(p.scores + at.base + j, p.aux + at.aux + j, at.aux_stride, p.tracker, c, n, step);
  }
}

}  // namespace

Result observe(const Store& store, int32_t seq, int32_t length, const float* probs, int64_t stride, int32_t query_heads,
               const TrackerSpec& tracker, void* stream) {
  const StoreSpec& s = store.spec;
  if (seq < 0 || seq >= s.max_sequences || stride < 0 || query_heads < 1 || query_heads % s.kv_heads != 0) {
    return Result{Status::Argument, 0, "observe"};
  }
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  advance_clock<<<1, 1, 0, st>>>(store.steps, seq, 1.0);
  Result r = launched("observe_clock");
  if (!ok(r)) return r;
  ObserveParams p{};
  p.tracker = tracker_args(tracker);
  if (!tracker_observes(p.tracker)) return r;
  p.lengths = store.lengths;
  p.steps = store.steps;
  p.scores = store.scores;
  p.aux = store.aux;
  p.probs = probs;
  p.stride = stride;
  p.seq = seq;
  p.heads = head_map(store);
  p.kv_heads = s.kv_heads;
  p.group = query_heads / s.kv_heads;
  const int32_t longest = std::max(1, std::min(length, s.capacity));
  observe_kernel<<<dim3(static_cast<unsigned>(std::min(256, (longest + 255) / 256)), static_cast<unsigned>(s.kv_heads)), 256, 0, st>>>(p);
  return launched("observe");
}

}  // namespace sh::cuda
