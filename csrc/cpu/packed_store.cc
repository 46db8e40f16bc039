// Packed stores (docs/packing.md): append through the residual window, packing into key runs, merging
// runs, and eviction with compaction. Mirrors src/backend/packed-store.ts bit for bit.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "internal.h"
#include "scissorhands/pack.h"
#include "scissorhands/packed.h"

namespace sh::cpu {
namespace {

bool use_simd(Context& ctx) { return std::strcmp(ctx.simd(), "avx512") == 0 && pack_simd_available(); }

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

// Moves run-table entry `from` to `to`.
void move_run(const PackedView& view, size_t i, int32_t from, int32_t to) {
  const size_t d = static_cast<size_t>(view.base.head_dim);
  const size_t a = (view.run_base(i) + static_cast<size_t>(from)) * d;
  const size_t b = (view.run_base(i) + static_cast<size_t>(to)) * d;
  std::memmove(view.key_scales + b, view.key_scales + a, d * sizeof(uint16_t));
  std::memmove(view.key_zeros + b, view.key_zeros + a, d * sizeof(uint16_t));
  view.run_lengths[view.run_base(i) + static_cast<size_t>(to)] = view.run_lengths[view.run_base(i) + static_cast<size_t>(from)];
  view.run_generations[view.run_base(i) + static_cast<size_t>(to)] = view.run_generations[view.run_base(i) + static_cast<size_t>(from)];
}

// Merges the two neighbouring runs with the fewest tokens together (at most group_size; the lower pair on
// ties): dequantised, then quantised again as one run.
Status merge_runs(Context& ctx, const PackedView& view, size_t i, bool simd) {
  const int32_t runs = view.runs[i];
  const int32_t* lengths = view.run_lengths + view.run_base(i);
  int32_t best = -1;
  for (int32_t a = 0; a + 1 < runs; ++a) {
    const int32_t n = lengths[a] + lengths[a + 1];
    if (n <= view.group_size && (best < 0 || n < lengths[best] + lengths[best + 1])) best = a;
  }
  if (best < 0) return Status::Argument;
  size_t start = 0;
  for (int32_t r = 0; r < best; ++r) start += static_cast<size_t>(lengths[r]);
  const int64_t na = lengths[best];
  const int64_t nb = lengths[best + 1];
  const size_t d = static_cast<size_t>(view.base.head_dim);
  float* x = ctx.workspace(0).floats(static_cast<size_t>(na + nb) * d);
  if (x == nullptr) return Status::NoMemory;
  const size_t cb = view.code_bytes();
  uint8_t* codes = view.key_codes + (view.packed_base(i) + start) * cb;
  const size_t entry_a = (view.run_base(i) + static_cast<size_t>(best)) * d;
  const size_t entry_b = entry_a + d;
  PackSpec spec;
  spec.bits = view.bits;
  spec.axis = 0;
  spec.group_size = na;
  unpack_matrix(codes, view.key_scales + entry_a, view.key_zeros + entry_a, Matrix{DType::F32, na, static_cast<int64_t>(d)},
                spec, DType::F32, x, simd);
  spec.group_size = nb;
  unpack_matrix(codes + static_cast<size_t>(na) * cb, view.key_scales + entry_b, view.key_zeros + entry_b,
                Matrix{DType::F32, nb, static_cast<int64_t>(d)}, spec, DType::F32, x + static_cast<size_t>(na) * d, simd);
  spec.group_size = na + nb;
  int64_t bad = -1;
  const Status status = pack_matrix(x, Matrix{DType::F32, na + nb, static_cast<int64_t>(d)}, spec, codes, view.key_scales + entry_a,
                                    view.key_zeros + entry_a, &bad, simd);
  if (status != Status::Ok) return status;
  uint8_t* generations = view.run_generations + view.run_base(i);
  const uint8_t generation = static_cast<uint8_t>(std::min(255, std::max(generations[best], generations[best + 1]) + 1));
  for (int32_t r = best + 2; r < runs; ++r) move_run(view, i, r, r - 1);
  view.run_lengths[view.run_base(i) + static_cast<size_t>(best)] = static_cast<int32_t>(na + nb);
  generations[best] = generation;
  view.runs[i] = runs - 1;
  return Status::Ok;
}

// Packs the oldest group_size residual tokens of (seq, head) into a new key run and their values per
// token, then shifts the residual window.
Status pack_oldest(Context& ctx, const PackedView& view, int32_t seq, int32_t head, bool simd) {
  const size_t i = view.index(seq, head);
  if (view.runs[i] == view.max_runs) {
    const Status status = merge_runs(ctx, view, i, simd);
    if (status != Status::Ok) return status;
  }
  const size_t d = static_cast<size_t>(view.base.head_dim);
  const int64_t g = view.group_size;
  const size_t cb = view.code_bytes();
  const size_t row = view.base.row_bytes();
  const int32_t packed = view.packed[i];
  const int32_t run = view.runs[i];
  uint8_t* keys = view.residual_keys + view.residual_base(i) * row;
  uint8_t* values = view.residual_values + view.residual_base(i) * row;
  const size_t first = view.packed_base(i) + static_cast<size_t>(packed);
  const size_t entry = (view.run_base(i) + static_cast<size_t>(run)) * d;
  const Matrix m{view.base.dtype, g, static_cast<int64_t>(d)};
  PackSpec spec;
  spec.bits = view.bits;
  spec.group_size = g;
  spec.axis = 0;
  int64_t bad = -1;
  Status status = pack_matrix(keys, m, spec, view.key_codes + first * cb, view.key_scales + entry, view.key_zeros + entry, &bad, simd);
  if (status != Status::Ok) return status;
  spec.axis = 1;
  status = pack_matrix(values, m, spec, view.value_codes + first * cb, view.value_scales + first * view.value_groups(),
                       view.value_zeros + first * view.value_groups(), &bad, simd);
  if (status != Status::Ok) return status;
  view.run_lengths[view.run_base(i) + static_cast<size_t>(run)] = static_cast<int32_t>(g);
  view.run_generations[view.run_base(i) + static_cast<size_t>(run)] = 0;
  view.runs[i] = run + 1;
  view.packed[i] = packed + static_cast<int32_t>(g);
  const size_t residual = static_cast<size_t>(view.base.lengths[i] - packed);
  std::memmove(keys, keys + static_cast<size_t>(g) * row, (residual - static_cast<size_t>(g)) * row);
  std::memmove(values, values + static_cast<size_t>(g) * row, (residual - static_cast<size_t>(g)) * row);
  return Status::Ok;
}

// Drops the flagged logical slots of (seq, head) and moves the kept ones to the front in order.
void compact_packed(const PackedView& view, int32_t seq, int32_t head, int32_t length, const uint8_t* dropped) {
  const LayerView& base = view.base;
  const size_t i = view.index(seq, head);
  const size_t cb = view.code_bytes();
  const size_t groups = view.value_groups();
  const size_t row = base.row_bytes();
  const int32_t packed = view.packed[i];
  const size_t pb = view.packed_base(i);
  int32_t kept_packed = 0;
  int32_t slot = 0;
  int32_t runs_kept = 0;
  const int32_t runs = view.runs[i];
  for (int32_t r = 0; r < runs; ++r) {
    const int32_t n = view.run_lengths[view.run_base(i) + static_cast<size_t>(r)];
    int32_t survivors = 0;
    for (int32_t t = slot; t < slot + n; ++t) {
      if (dropped[t] != 0) continue;
      if (kept_packed != t) {
        const size_t from = pb + static_cast<size_t>(t);
        const size_t to = pb + static_cast<size_t>(kept_packed);
        std::memmove(view.key_codes + to * cb, view.key_codes + from * cb, cb);
        std::memmove(view.value_codes + to * cb, view.value_codes + from * cb, cb);
        std::memmove(view.value_scales + to * groups, view.value_scales + from * groups, groups * sizeof(uint16_t));
        std::memmove(view.value_zeros + to * groups, view.value_zeros + from * groups, groups * sizeof(uint16_t));
      }
      ++kept_packed;
      ++survivors;
    }
    slot += n;
    if (survivors == 0) continue;
    if (runs_kept != r) move_run(view, i, r, runs_kept);
    view.run_lengths[view.run_base(i) + static_cast<size_t>(runs_kept)] = survivors;
    ++runs_kept;
  }
  const size_t rb = view.residual_base(i);
  int32_t kept_residual = 0;
  for (int32_t t = packed; t < length; ++t) {
    if (dropped[t] != 0) continue;
    const int32_t from = t - packed;
    if (kept_residual != from) {
      std::memmove(view.residual_keys + (rb + static_cast<size_t>(kept_residual)) * row,
                   view.residual_keys + (rb + static_cast<size_t>(from)) * row, row);
      std::memmove(view.residual_values + (rb + static_cast<size_t>(kept_residual)) * row,
                   view.residual_values + (rb + static_cast<size_t>(from)) * row, row);
    }
    ++kept_residual;
  }
  const size_t hb = base.head_base(seq, head);
  const size_t words = static_cast<size_t>(base.aux_words);
  int32_t kept = 0;
  for (int32_t t = 0; t < length; ++t) {
    if (dropped[t] != 0) continue;
    if (kept != t) {
      base.positions[hb + static_cast<size_t>(kept)] = base.positions[hb + static_cast<size_t>(t)];
      base.scores[hb + static_cast<size_t>(kept)] = base.scores[hb + static_cast<size_t>(t)];
      std::memmove(base.aux + (hb + static_cast<size_t>(kept)) * words, base.aux + (hb + static_cast<size_t>(t)) * words,
                   words * sizeof(uint32_t));
    }
    ++kept;
  }
  base.lengths[i] = kept;
  view.packed[i] = kept_packed;
  view.runs[i] = runs_kept;
}

}  // namespace

void packed_sizes(int32_t capacity, int32_t group_size, int32_t residual, int32_t* packed_slots, int32_t* residual_slots,
                  int32_t* max_runs) {
  const int64_t c = capacity;
  *packed_slots = c >= static_cast<int64_t>(residual) + group_size ? static_cast<int32_t>(c - residual) : 0;
  *residual_slots = static_cast<int32_t>(std::min<int64_t>(c, static_cast<int64_t>(residual) + group_size));
  *max_runs = 2 * ((*packed_slots + group_size - 1) / group_size);
}

bool packed_state_valid(const PackedView& view, int32_t seq) {
  if (!lengths_valid(view.base, seq, 0)) return false;
  for (int32_t h = 0; h < view.base.kv_heads; ++h) {
    const size_t i = view.index(seq, h);
    const int32_t length = view.base.lengths[i];
    const int32_t packed = view.packed[i];
    const int32_t runs = view.runs[i];
    if (packed < 0 || packed > length || packed > view.packed_slots) return false;
    if (length - packed > view.residual_slots) return false;
    if (runs < 0 || runs > view.max_runs) return false;
    int64_t sum = 0;
    for (int32_t r = 0; r < runs; ++r) {
      const int32_t n = view.run_lengths[view.run_base(i) + static_cast<size_t>(r)];
      if (n < 1 || n > view.group_size) return false;
      sum += n;
    }
    if (sum != packed) return false;
  }
  return true;
}

int64_t first_unpackable(const PackedView& view, HostSpan span, size_t elements) {
  const DType dtype = view.base.dtype;
  // Closed forms of "finite and within [-65504, 65504] once rounded to the store's dtype" (nearest, ties
  // to even): f32 keeps x; f16 rounds |x| < 65520 to at most 65504; bf16 rounds |x| < 65408 to at most
  // 65280 (65408 ties up to 65536). A first pass that vectorises, then the index of the first failure.
  bool ok = true;
  if (span.bits16) {
    const uint16_t* bits = static_cast<const uint16_t*>(span.data);
    const uint16_t limit = dtype == DType::F16 ? 0x7bff : 0x477f;
    for (size_t e = 0; e < elements; ++e) ok &= (bits[e] & 0x7fffu) <= limit;
    if (ok) return -1;
    for (size_t e = 0; e < elements; ++e) {
      if ((bits[e] & 0x7fffu) > limit) return static_cast<int64_t>(e);
    }
    return -1;
  }
  const float* x = static_cast<const float*>(span.data);
  const float limit = dtype == DType::F32 ? 65504.0f : dtype == DType::F16 ? 65520.0f : 65408.0f;
  const bool inclusive = dtype == DType::F32;
  for (size_t e = 0; e < elements; ++e) {
    const float a = std::fabs(x[e]);
    ok &= inclusive ? a <= limit : a < limit;
  }
  if (ok) return -1;
  for (size_t e = 0; e < elements; ++e) {
    const float a = std::fabs(x[e]);
    if (!(inclusive ? a <= limit : a < limit)) return static_cast<int64_t>(e);
  }
  return -1;
}

Status packed_append(Context& ctx, const PackedView& view, int32_t seq, HostSpan k, HostSpan v, int32_t count,
                     int32_t first_position, const TrackerSpec& tracker, float* keys_out) {
  const LayerView& base = view.base;
  if (seq < 0 || seq >= base.max_sequences || count < 0) return Status::Argument;
  if (static_cast<int64_t>(first_position) + count > INT32_MAX) return Status::Argument;
  if ((k.bits16 || v.bits16) && base.dtype == DType::F32) return Status::DType;
  if (tracker.kind == TrackerKind::Scissorhands &&
      (tracker.window == 0 || tracker_aux_words(tracker) > static_cast<uint32_t>(base.aux_words))) {
    return Status::Argument;
  }
  if (base.head_dim > kMaxHeadDim || !packed_state_valid(view, seq)) return Status::Argument;
  for (int32_t h = 0; h < base.kv_heads; ++h) {
    if (kept(base, seq, h) > base.capacity - count) return Status::Budget;
  }
  const bool simd = use_simd(ctx);
  const size_t d = static_cast<size_t>(base.head_dim);
  const size_t heads = static_cast<size_t>(base.kv_heads);
  const size_t row = base.row_bytes();
  const size_t words = static_cast<size_t>(base.aux_words);
  float key[kMaxHeadDim];
  for (int32_t h = 0; h < base.kv_heads; ++h) {
    const size_t i = view.index(seq, h);
    const int32_t length = base.lengths[i];
    for (int32_t n = 0; n < count; ++n) {
      const int32_t slot = length + n;
      const int32_t position = first_position + n;
      const size_t token = base.head_base(seq, h) + static_cast<size_t>(slot);
      const size_t at = (static_cast<size_t>(n) * heads + static_cast<size_t>(h)) * d;
      const size_t residual = static_cast<size_t>(slot - view.packed[i]);
      uint8_t* key_row = view.residual_keys + (view.residual_base(i) + residual) * row;
      store_row(base.dtype, k, at, d, key_row);
      store_row(base.dtype, v, at, d, view.residual_values + (view.residual_base(i) + residual) * row);
      base.positions[token] = position;
      std::memset(base.aux + token * words, 0, words * sizeof(uint32_t));
      for (size_t c = 0; c < d; ++c) key[c] = load_element(base.dtype, key_row, c);
      if (keys_out != nullptr) std::memcpy(keys_out + at, key, d * sizeof(float));
      init_slot(base, seq, h, slot, position, key, tracker);
      base.lengths[i] = slot + 1;
      if (static_cast<int64_t>(residual) + 1 >= static_cast<int64_t>(view.residual) + view.group_size) {
        const Status status = pack_oldest(ctx, view, seq, h, simd);
        if (status != Status::Ok) return status;
      }
    }
  }
  return Status::Ok;
}

Status packed_evict(Context& ctx, const PackedView& view, int32_t seq, int32_t count, int32_t sinks, int32_t recent,
                    EvictScope scope) {
  const LayerView& base = view.base;
  if (seq < 0 || seq >= base.max_sequences || count < 0 || sinks < 0 || recent < 0) return Status::Argument;
  if (!packed_state_valid(view, seq)) return Status::Argument;
  const size_t heads = static_cast<size_t>(base.kv_heads);
  const int32_t* lengths = base.lengths + static_cast<size_t>(seq) * heads;
  for (size_t h = 0; h < heads; ++h) {
    if (count > 0 && count > static_cast<int64_t>(lengths[h]) - recent - sinks) return Status::Budget;
    if (scope == EvictScope::Layer && lengths[h] != lengths[0]) return Status::Argument;
  }
  if (count == 0) return Status::Ok;
  const size_t cap = static_cast<size_t>(base.capacity);
  float* scratch = ctx.workspace(0).floats(2 * cap + cap / 4 + 1);
  if (scratch == nullptr) return Status::NoMemory;
  uint32_t* order = reinterpret_cast<uint32_t*>(scratch);
  float* mean = scratch + cap;
  uint8_t* dropped = reinterpret_cast<uint8_t*>(scratch + 2 * cap);
  if (scope == EvictScope::Layer) {
    const int32_t length = lengths[0];
    for (int32_t j = sinks; j < length - recent; ++j) {
      float acc = 0.0f;
      for (size_t h = 0; h < heads; ++h) acc = acc + base.scores[base.head_base(seq, static_cast<int32_t>(h)) + static_cast<size_t>(j)];
      mean[j] = acc / static_cast<float>(heads);
    }
    std::memset(dropped, 0, static_cast<size_t>(length));
    choose_lowest(mean, sinks, length - recent, count, order, dropped);
    for (size_t h = 0; h < heads; ++h) compact_packed(view, seq, static_cast<int32_t>(h), length, dropped);
    return Status::Ok;
  }
  for (size_t h = 0; h < heads; ++h) {
    const int32_t length = lengths[h];
    std::memset(dropped, 0, static_cast<size_t>(length));
    choose_lowest(base.scores + base.head_base(seq, static_cast<int32_t>(h)), sinks, length - recent, count, order, dropped);
    compact_packed(view, seq, static_cast<int32_t>(h), length, dropped);
  }
  return Status::Ok;
}

}  // namespace sh::cpu
