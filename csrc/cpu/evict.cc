// evict (docs/semantics.md): choose the lowest (score, slot) candidates, then compact what is kept.
#include <algorithm>
#include <cstring>

#include "internal.h"
#include "scissorhands/cpu.h"

namespace sh::cpu {
namespace {

// Strict weak order of candidates: NaN scores first, then by score, ties to the lower slot.
struct Lower {
  const float* keys;
  bool operator()(uint32_t a, uint32_t b) const {
    const float x = keys[a];
    const float y = keys[b];
    const bool x_nan = x != x;
    const bool y_nan = y != y;
    if (x_nan != y_nan) return x_nan;
    if (!x_nan && x != y) return x < y;
    return a < b;
  }
};

}  // namespace

// Marks in `dropped` (one byte per slot) the `count` lowest of slots [begin, end) under `keys`.
void choose_lowest(const float* keys, int32_t begin, int32_t end, int32_t count, uint32_t* order, uint8_t* dropped) {
  const size_t n = static_cast<size_t>(end - begin);
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<uint32_t>(begin) + static_cast<uint32_t>(i);
  // Linear-time selection: after it, the first `count` entries are exactly the lowest ones.
  std::nth_element(order, order + count, order + n, Lower{keys});
  for (int32_t i = 0; i < count; ++i) dropped[order[i]] = 1;
}

namespace {

// Moves the kept tokens of (seq, head) to the front in order; returns the new length.
int32_t compact(const LayerView& view, int32_t seq, int32_t head, int32_t length, const uint8_t* dropped) {
  const size_t base = view.head_base(seq, head);
  const size_t row = view.row_bytes();
  const size_t words = static_cast<size_t>(view.aux_words);
  int32_t w = 0;
  while (w < length && dropped[w] == 0) ++w;
  for (int32_t r = w + 1; r < length; ++r) {
    if (dropped[r] != 0) continue;
    const size_t to = base + static_cast<size_t>(w);
    const size_t from = base + static_cast<size_t>(r);
    std::memcpy(view.keys + to * row, view.keys + from * row, row);
    std::memcpy(view.values + to * row, view.values + from * row, row);
    view.positions[to] = view.positions[from];
    view.scores[to] = view.scores[from];
    std::memcpy(view.aux + to * words, view.aux + from * words, words * sizeof(uint32_t));
    ++w;
  }
  return w;
}

}  // namespace

Status evict(Context& ctx, const LayerView& view, int32_t seq, const int32_t* counts, int32_t sinks, int32_t recent,
             EvictScope scope) {
  if (seq < 0 || seq >= view.max_sequences || sinks < 0 || recent < 0) return Status::Argument;
  if (!lengths_valid(view, seq, 0)) return Status::Argument;
  const size_t heads = static_cast<size_t>(view.kv_heads);
  int32_t* lengths = view.lengths + static_cast<size_t>(seq) * heads;
  bool any = false;
  for (size_t h = 0; h < heads; ++h) {
    const int32_t count = counts[h];
    if (count < 0) return Status::Argument;
    if (count > 0 && count > static_cast<int64_t>(lengths[h]) - recent - sinks) return Status::Budget;
    if (scope == EvictScope::Layer && (lengths[h] != lengths[0] || count != counts[0])) return Status::Argument;
    any = any || count > 0;
  }
  if (!any) return Status::Ok;

  // Scratch: candidate order (u32), per-slot drop flags (bytes), and the layer's mean scores.
  const size_t cap = static_cast<size_t>(view.capacity);
  float* scratch = ctx.workspace(0).floats(2 * cap + cap / 4 + 1);
  if (scratch == nullptr) return Status::NoMemory;
  uint32_t* order = reinterpret_cast<uint32_t*>(scratch);
  float* mean = scratch + cap;
  uint8_t* dropped = reinterpret_cast<uint8_t*>(scratch + 2 * cap);

  if (scope == EvictScope::Layer) {
    // Read once: every head is compacted with this length.
    const int32_t length = kept(view, seq, 0);
    const int32_t count = counts[0];
    if (count > static_cast<int64_t>(length) - recent - sinks) return Status::Budget;
    for (int32_t j = sinks; j < length - recent; ++j) {
      float acc = 0.0f;
      for (size_t h = 0; h < heads; ++h) acc = acc + view.scores[view.head_base(seq, static_cast<int32_t>(h)) + static_cast<size_t>(j)];
      mean[j] = acc / static_cast<float>(heads);
    }
    std::memset(dropped, 0, static_cast<size_t>(length));
    choose_lowest(mean, sinks, length - recent, count, order, dropped);
    for (size_t h = 0; h < heads; ++h) lengths[h] = compact(view, seq, static_cast<int32_t>(h), length, dropped);
    return Status::Ok;
  }
  for (size_t h = 0; h < heads; ++h) {
    const int32_t length = kept(view, seq, static_cast<int32_t>(h));
    const int32_t count = counts[h];
    if (count == 0) continue;
    if (count > static_cast<int64_t>(length) - recent - sinks) return Status::Budget;
    std::memset(dropped, 0, static_cast<size_t>(length));
    choose_lowest(view.scores + view.head_base(seq, static_cast<int32_t>(h)), sinks, length - recent, count, order, dropped);
    lengths[h] = compact(view, seq, static_cast<int32_t>(h), length, dropped);
  }
  return Status::Ok;
}

}  // namespace sh::cpu
