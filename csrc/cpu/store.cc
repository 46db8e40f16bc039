// Checks of the store invariants every kernel relies on.
#include <cmath>

#include "internal.h"

namespace sh::cpu {

bool lengths_valid(const LayerView& view, int32_t seq, int32_t min_length) {
  const int32_t* lengths = view.lengths + static_cast<size_t>(seq) * static_cast<size_t>(view.kv_heads);
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    if (lengths[h] < min_length || lengths[h] > view.head_capacity(seq, h)) return false;
  }
  return true;
}

bool step_valid(const LayerView& view, int32_t seq, int32_t by) {
  const double step = view.steps[seq];
  return step >= 0.0 && step + by <= 9007199254740992.0 && std::floor(step) == step;
}

}  // namespace sh::cpu
