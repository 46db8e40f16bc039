// The built-in tracker rules of docs/semantics.md: what a token's state starts as, and how one
// observation (GQA-combined probabilities over n slots) updates it.
#include <cmath>
#include <cstring>

#include "internal.h"
#include "scissorhands/cpu.h"

namespace sh::cpu {
namespace {

// Slots combined at a time: a stack buffer, and loops over it that vectorise.
constexpr size_t kChunk = 256;

// Math.max: NaN wins, +0 beats -0.
inline float js_max(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  if (a == b) return std::signbit(a) ? b : a;
  return a > b ? a : b;
}

// c[j] = the GQA-combined probability of slot j0 + j, j < m (docs/semantics.md: in f32 and in query-head
// order). Looping over heads outside and slots inside keeps each slot's order of operations while
// letting the slot loop vectorise.
void combine(const float* p, const float* weight, size_t group, size_t stride, size_t j0, size_t m, GqaReduce reduce,
             float* c) {
  const float w0 = weight == nullptr ? 1.0f : weight[0];
  const float* row = p + j0;
  if (reduce == GqaReduce::Max) {
    for (size_t j = 0; j < m; ++j) c[j] = row[j] * w0;
    for (size_t g = 1; g < group; ++g) {
      const float w = weight == nullptr ? 1.0f : weight[g];
      row = p + g * stride + j0;
      for (size_t j = 0; j < m; ++j) c[j] = js_max(c[j], row[j] * w);
    }
    return;
  }
  for (size_t j = 0; j < m; ++j) c[j] = 0.0f + row[j] * w0;
  for (size_t g = 1; g < group; ++g) {
    const float w = weight == nullptr ? 1.0f : weight[g];
    row = p + g * stride + j0;
    for (size_t j = 0; j < m; ++j) c[j] = c[j] + row[j] * w;
  }
  const float divisor = static_cast<float>(group);
  for (size_t j = 0; j < m; ++j) c[j] = c[j] / divisor;
}

}  // namespace

void observe_head(const LayerView& view, int32_t seq, int32_t head, const float* p, const float* weight, size_t group,
                  size_t stride, size_t n, uint64_t step, const TrackerSpec& tracker, float* custom_out) {
  if (!tracker.observes) return;
  switch (tracker.kind) {
    case TrackerKind::KeyNorm:
    case TrackerKind::Random:
    case TrackerKind::Position:
      return;
    case TrackerKind::Custom:
      if (custom_out == nullptr) return;
      break;
    case TrackerKind::Scissorhands:
    case TrackerKind::H2O:
    case TrackerKind::Tova:
      break;
  }
  const size_t base = view.head_base(seq, head);
  float c[kChunk];
  for (size_t j0 = 0; j0 < n; j0 += kChunk) {
    const size_t m = n - j0 < kChunk ? n - j0 : kChunk;
    combine(p, weight, group, stride, j0, m, tracker.gqa, c);
    float* scores = view.scores + base + j0;
    switch (tracker.kind) {
      case TrackerKind::Custom:
        std::memcpy(custom_out + j0, c, m * sizeof(float));
        break;
      case TrackerKind::Scissorhands: {
        // Bit (step mod w) of the token's window records whether it was unimportant at this step; the
        // score is minus the number of set bits, kept up to date incrementally.
        const uint64_t bit = step % tracker.window;
        const size_t words = static_cast<size_t>(view.aux_words);
        uint32_t* word = view.aux + (base + j0) * words + (bit >> 5);
        const uint32_t mask = 1u << (bit & 31);
        const double threshold = 1.0 / static_cast<double>(n);
        for (size_t j = 0; j < m; ++j, word += words) {
          const int unimportant = static_cast<double>(c[j]) < threshold ? 1 : 0;
          const int old = (*word & mask) != 0 ? 1 : 0;
          scores[j] = scores[j] - static_cast<float>(unimportant - old);
          *word = unimportant != 0 ? (*word | mask) : (*word & ~mask);
        }
        break;
      }
      case TrackerKind::H2O:
        for (size_t j = 0; j < m; ++j) scores[j] = scores[j] + c[j];
        break;
      case TrackerKind::Tova:
        std::memcpy(scores, c, m * sizeof(float));
        break;
      case TrackerKind::KeyNorm:
      case TrackerKind::Random:
      case TrackerKind::Position:
        break;
    }
  }
}

void init_slot(const LayerView& view, int32_t seq, int32_t head, int32_t slot, int32_t position, const float* key,
               const TrackerSpec& tracker) {
  // A fresh slot starts from zero state whatever an evicted token left in it (custom hooks included).
  float& score = view.scores[view.head_base(seq, head) + static_cast<size_t>(slot)];
  score = 0.0f;
  switch (tracker.kind) {
    case TrackerKind::Custom:
    case TrackerKind::Scissorhands:
    case TrackerKind::H2O:
    case TrackerKind::Tova:
      return;
    case TrackerKind::KeyNorm: {
      // Sum of squares in f64, in element order, over the key as stored.
      double sum = 0.0;
      for (int32_t i = 0; i < view.head_dim; ++i) {
        const double x = key[i];
        sum += x * x;
      }
      score = -static_cast<float>(std::sqrt(sum));
      return;
    }
    case TrackerKind::Random:
      score = random_score(tracker.seed, view.layer, static_cast<uint32_t>(head), position);
      return;
    case TrackerKind::Position:
      score = static_cast<float>(position);
      return;
  }
}

Status observe(const LayerView& view, int32_t seq, const float* probs, size_t stride, int32_t query_heads,
               const TrackerSpec& tracker, float* probs_out) {
  if (seq < 0 || seq >= view.max_sequences) return Status::Argument;
  if (query_heads <= 0 || query_heads % view.kv_heads != 0) return Status::Argument;
  if (tracker.kind == TrackerKind::Scissorhands &&
      (tracker.window == 0 || tracker_aux_words(tracker) > static_cast<uint32_t>(view.aux_words))) {
    return Status::Argument;
  }
  if (!lengths_valid(view, seq, 0) || !step_valid(view, seq, 1)) return Status::Argument;
  const size_t group = static_cast<size_t>(query_heads / view.kv_heads);
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    if (static_cast<size_t>(kept(view, seq, h)) > stride) return Status::Shape;
  }
  const uint64_t step = static_cast<uint64_t>(view.steps[seq]);
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    const size_t n = static_cast<size_t>(kept(view, seq, h));
    float* custom = probs_out == nullptr ? nullptr : probs_out + static_cast<size_t>(h) * static_cast<size_t>(view.capacity);
    if (n > 0) {
      observe_head(view, seq, h, probs + static_cast<size_t>(h) * group * stride, nullptr, group, stride, n, step, tracker,
                   custom);
    }
  }
  view.steps[seq] += 1.0;
  return Status::Ok;
}

}  // namespace sh::cpu
