// The built-in tracker rules of docs/semantics.md: what a token's state starts as, and how one
// observation (GQA-combined probabilities over n slots) updates it.
#include <cmath>

#include "internal.h"
#include "scissorhands/cpu.h"

namespace sh::cpu {

void observe_head(const LayerView& view, int32_t seq, int32_t head, const float* p, size_t group, size_t stride,
                  size_t n, uint64_t step, const TrackerSpec& tracker, float* custom_out) {
  if (!tracker.observes) return;
  const GqaReduce reduce = tracker.gqa;
  const size_t base = view.head_base(seq, head);
  float* scores = view.scores + base;
  switch (tracker.kind) {
    case TrackerKind::Custom:
      if (custom_out != nullptr) {
        for (size_t j = 0; j < n; ++j) custom_out[j] = combine_gqa(p, group, stride, j, reduce);
      }
      return;
    case TrackerKind::Scissorhands: {
      // Bit (step mod w) of the token's window records whether it was unimportant at this step; the score
      // is minus the number of set bits, kept up to date incrementally.
      const uint64_t bit = step % tracker.window;
      const size_t words = static_cast<size_t>(view.aux_words);
      uint32_t* word = view.aux + base * words + (bit >> 5);
      const uint32_t mask = 1u << (bit & 31);
      const double threshold = 1.0 / static_cast<double>(n);
      for (size_t j = 0; j < n; ++j, word += words) {
        const int unimportant = static_cast<double>(combine_gqa(p, group, stride, j, reduce)) < threshold ? 1 : 0;
        const int old = (*word & mask) != 0 ? 1 : 0;
        scores[j] = scores[j] - static_cast<float>(unimportant - old);
        *word = unimportant != 0 ? (*word | mask) : (*word & ~mask);
      }
      return;
    }
    case TrackerKind::H2O:
      for (size_t j = 0; j < n; ++j) scores[j] = scores[j] + combine_gqa(p, group, stride, j, reduce);
      return;
    case TrackerKind::Tova:
      for (size_t j = 0; j < n; ++j) scores[j] = combine_gqa(p, group, stride, j, reduce);
      return;
    case TrackerKind::KeyNorm:
    case TrackerKind::Random:
    case TrackerKind::Position:
      return;
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
    if (n > 0) observe_head(view, seq, h, probs + static_cast<size_t>(h) * group * stride, group, stride, n, step, tracker, custom);
  }
  view.steps[seq] += 1.0;
  return Status::Ok;
}

}  // namespace sh::cpu
