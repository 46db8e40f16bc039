// append (docs/semantics.md): store tokens at the end of every KV head, then initialise their tracker
// state.
#include <cstring>

#include "internal.h"
#include "scissorhands/cpu.h"

namespace sh::cpu {
namespace {

// Stores one row of head_dim elements from the caller's array (f32, or bits of the store's dtype).
void store_row(DType dtype, HostSpan src, size_t at, size_t head_dim, uint8_t* dst) {
  if (dtype == DType::F32 || src.bits16) {
    std::memcpy(dst, static_cast<const uint8_t*>(src.data) + at * bytes_per_element(dtype), head_dim * bytes_per_element(dtype));
    return;
  }
  const float* in = static_cast<const float*>(src.data) + at;
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
  for (size_t c = 0; c < head_dim; ++c) out[c] = dtype == DType::F16 ? f32_to_f16(in[c]) : f32_to_bf16(in[c]);
}

}  // namespace

Status append(const LayerView& view, int32_t seq, HostSpan k, HostSpan v, int32_t count, int32_t first_position,
              const TrackerSpec& tracker, float* keys_out) {
  if (seq < 0 || seq >= view.max_sequences || count < 0) return Status::Argument;
  if (static_cast<int64_t>(first_position) + count > INT32_MAX) return Status::Argument;
  if ((k.bits16 || v.bits16) && view.dtype == DType::F32) return Status::DType;
  if (tracker.kind == TrackerKind::Scissorhands &&
      (tracker.window == 0 || tracker_aux_words(tracker) > static_cast<uint32_t>(view.aux_words))) {
    return Status::Argument;
  }
  if (!lengths_valid(view, seq, 0)) return Status::Argument;
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    if (kept(view, seq, h) > view.head_capacity(seq, h) - count) return Status::Budget;
  }

  if (view.head_dim > kMaxHeadDim) return Status::Argument;

  const size_t d = static_cast<size_t>(view.head_dim);
  const size_t heads = static_cast<size_t>(view.kv_heads);
  const size_t row_bytes = view.row_bytes();
  const size_t words = static_cast<size_t>(view.aux_words);
  const bool decode_key = keys_out != nullptr || tracker.kind == TrackerKind::KeyNorm;
  // The key as stored, decoded: what keyNorm and custom onAppend hooks see.
  float key[kMaxHeadDim];
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    // Read once: the bound checked below is the one every write of this head relies on.
    const int32_t length = kept(view, seq, h);
    if (length > view.head_capacity(seq, h) - count) return Status::Budget;
    for (int32_t i = 0; i < count; ++i) {
      const int32_t slot = length + i;
      const int32_t position = first_position + i;
      const size_t token = view.head_base(seq, h) + static_cast<size_t>(slot);
      const size_t at = (static_cast<size_t>(i) * heads + static_cast<size_t>(h)) * d;
      store_row(view.dtype, k, at, d, view.keys + token * row_bytes);
      store_row(view.dtype, v, at, d, view.values + token * row_bytes);
      view.positions[token] = position;
      std::memset(view.aux + token * words, 0, words * sizeof(uint32_t));
      if (decode_key) {
        for (size_t c = 0; c < d; ++c) key[c] = load_element(view.dtype, view.keys + token * row_bytes, c);
        if (keys_out != nullptr) std::memcpy(keys_out + at, key, d * sizeof(float));
      }
      init_slot(view, seq, h, slot, position, key, tracker);
    }
    view.lengths[static_cast<size_t>(seq) * heads + static_cast<size_t>(h)] = length + count;
  }
  return Status::Ok;
}

}  // namespace sh::cpu
