// Packed layer stores (PackedStore in src/backend/backend.ts, docs/packing.md) and the kernels over them.
// Per (seq, head) i = seq * kv_heads + head: slots [0, packed[i]) hold codes, in runs[i] key runs of
// run_lengths[i * max_runs + r] tokens (a run shares one f16 scale and zero point per channel); slots
// [packed[i], length) are the residual window, rows of the store's element type. The per-slot arrays of
// `base` (positions, scores, aux) index logical slots; its keys and values are unused (null).
#pragma once

#include <cstddef>
#include <cstdint>

#include "scissorhands/cpu.h"
#include "scissorhands/layer_view.h"
#include "scissorhands/status.h"
#include "scissorhands/tracker.h"

namespace sh {

struct PackedView {
  LayerView base;
  uint32_t bits = 4;
  int32_t group_size = 32;
  int32_t residual = 32;
  int32_t packed_slots = 0;
  int32_t residual_slots = 0;
  int32_t max_runs = 0;
  uint8_t* key_codes = nullptr;
  uint8_t* value_codes = nullptr;
  uint16_t* value_scales = nullptr;
  uint16_t* value_zeros = nullptr;
  uint16_t* key_scales = nullptr;
  uint16_t* key_zeros = nullptr;
  int32_t* run_lengths = nullptr;
  uint8_t* run_generations = nullptr;
  int32_t* runs = nullptr;
  int32_t* packed = nullptr;
  uint8_t* residual_keys = nullptr;
  uint8_t* residual_values = nullptr;

  size_t index(int32_t seq, int32_t head) const {
    return static_cast<size_t>(seq) * static_cast<size_t>(base.kv_heads) + static_cast<size_t>(head);
  }
  // Code bytes per token (keys or values).
  size_t code_bytes() const { return static_cast<size_t>(base.head_dim) * bits / 8; }
  // Value groups per token.
  size_t value_groups() const { return static_cast<size_t>(base.head_dim / group_size); }
  // First packed slot of (seq, head) in the per-packed-slot arrays.
  size_t packed_base(size_t i) const { return i * static_cast<size_t>(packed_slots); }
  size_t residual_base(size_t i) const { return i * static_cast<size_t>(residual_slots); }
  size_t run_base(size_t i) const { return i * static_cast<size_t>(max_runs); }
};

namespace cpu {

// The sizes of docs/packing.md at a capacity: packed_slots = capacity - residual when capacity >=
// residual + group_size (else 0), residual_slots = min(capacity, residual + group_size), max_runs =
// 2 * ceil(packed_slots / group_size).
void packed_sizes(int32_t capacity, int32_t group_size, int32_t residual, int32_t* packed_slots, int32_t* residual_slots,
                  int32_t* max_runs);

// True when the packed state of seq is consistent (so kernels stay in bounds): per head, lengths in
// [0, capacity], packed in [0, min(length, packed_slots)], length - packed <= residual_slots, runs in
// [0, max_runs], every run of 1 to group_size tokens, and the runs adding up to packed.
bool packed_state_valid(const PackedView& view, int32_t seq);

// Index of the first element of a caller's array (count * kv_heads * head_dim elements: f32, or bits of
// the store's dtype) that is not packable as stored (NaN, infinite, outside [-65504, 65504] after
// rounding to the store's dtype), or -1.
int64_t first_unpackable(const PackedView& view, HostSpan span, size_t elements);

// append (docs/semantics.md) on a packed store: token by token into the residual window, which packs its
// oldest group_size tokens into a new key run (merging the two smallest neighbouring runs first when the
// run table is full) once it holds residual + group_size. Callers have checked the values
// (first_unpackable); the kernel checks room and state.
Status packed_append(Context& ctx, const PackedView& view, int32_t seq, HostSpan k, HostSpan v, int32_t count,
                     int32_t first_position, const TrackerSpec& tracker, float* keys_out);

// Decode and prefill attention over a packed store: codes are dequantised tile by tile inside the kernel.
Status packed_attend(Context& ctx, const PackedView& view, const AttentionArgs& args, const TrackerSpec& tracker);

// evict (docs/semantics.md) on a packed store: the same choice as evict, then compaction that keeps every
// kept code as it is (a run keeps its scales and zero points; an emptied run leaves the table).
Status packed_evict(Context& ctx, const PackedView& view, int32_t seq, int32_t count, int32_t sinks, int32_t recent,
                    EvictScope scope);

}  // namespace cpu
}  // namespace sh
