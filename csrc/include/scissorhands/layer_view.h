// A non-owning view of one layer's storage (LayerStore in src/backend/backend.ts). Element [s][h][t] of
// the per-token arrays is at head_base(s, h) + t: (s * kvHeads + h) * capacity + t for a dense layout,
// bases[s * kvHeads + h] + t when heads own different numbers of slots (per-head budgets); keys and
// values hold headDim elements per token, aux holds auxWords words per token.
#pragma once

#include <cstddef>
#include <cstdint>

#include "scissorhands/dtype.h"

namespace sh {

// Largest head size the kernels accept (MAX_HEAD_DIM in src/core/geometry.ts).
constexpr int32_t kMaxHeadDim = 512;

struct LayerView {
  // Index of the layer the store serves (an input of the random tracker).
  uint32_t layer = 0;
  DType dtype = DType::F32;
  int32_t max_sequences = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  int32_t capacity = 0;
  int32_t aux_words = 0;
  uint8_t* keys = nullptr;
  uint8_t* values = nullptr;
  int32_t* positions = nullptr;
  float* scores = nullptr;
  uint32_t* aux = nullptr;
  int32_t* lengths = nullptr;
  double* steps = nullptr;
  // Per-head layout ([seq][kvHead] first slot and slots owned; each capacity at most `capacity`), or
  // null for the dense layout. The napi layer has checked that the heads of a sequence do not overlap
  // and stay inside that sequence's slots.
  const int32_t* bases = nullptr;
  const int32_t* capacities = nullptr;
  // Token slots of one sequence in the per-token arrays (kvHeads * capacity when dense).
  uint64_t sequence_slots = 0;

  // Index of token slot 0 of (seq, head) in the per-token arrays.
  size_t head_base(int32_t seq, int32_t head) const {
    const size_t i = static_cast<size_t>(seq) * static_cast<size_t>(kv_heads) + static_cast<size_t>(head);
    return bases != nullptr ? static_cast<size_t>(bases[i]) : i * static_cast<size_t>(capacity);
  }
  // Token slots (seq, head) owns.
  int32_t head_capacity(int32_t seq, int32_t head) const {
    return capacities != nullptr
               ? capacities[static_cast<size_t>(seq) * static_cast<size_t>(kv_heads) + static_cast<size_t>(head)]
               : capacity;
  }
  size_t row_bytes() const { return static_cast<size_t>(head_dim) * bytes_per_element(dtype); }
};

// A caller's element array: f32 values, or 16-bit bits of the store's dtype.
struct HostSpan {
  void* data = nullptr;
  bool bits16 = false;
};

}  // namespace sh
