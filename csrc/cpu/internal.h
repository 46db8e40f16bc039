// Declarations shared by the CPU kernel files; not part of the kernel API.
#pragma once

#include <cstddef>
#include <cstdint>

#include "scissorhands/layer_view.h"
#include "scissorhands/tracker.h"

namespace sh::cpu {

// Tiling shared by dense (attention.cc) and packed (packed_attention.cc) attention.
// Queries (rows x group) per pass over the keys in prefill: bounds the score scratch.
constexpr size_t kBlockQueries = 32;
// Floats per tile of keys or values (16 KiB as f32): the rows every query block goes over while they
// are in L1, and the unit the primitives request ahead of time.
constexpr size_t kTileFloats = 4096;
// Bytes of keys and values a call must stream before it is split over two threads; below this, waking
// the helper costs more than it saves.
constexpr size_t kSplitBytes = size_t{1} << 20;

inline size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Row stride (in floats) of the padded f32 rows the attention primitives work on: the head size
// rounded up to whole 8-float vectors, padding zeroed, so inner loops have no tails.
inline size_t padded_dim(int32_t head_dim) { return (static_cast<size_t>(head_dim) + 7) & ~static_cast<size_t>(7); }

// exp(x) rounds to 0 in f32 below this (exp(-104) < 2^-150, half the smallest subnormal). The exp
// primitives are accurate down to it, subnormals included: the trackers see every probability the
// reference does (TOVA keeps p itself as the score, H2O sums it), so a token far below the largest still
// scores above one further below instead of tying with it at 0.
constexpr float kExpFloor = -104.0f;

// The value sums take weights exp(s - max) below this (about e^-63.8) as 0: such a token's share of the
// output is under 2^-92 of the largest one's, far below f32 rounding, and keeping it would feed subnormal
// products into the sums, which x86 cores run through slow microcode assists. Only the outputs ignore
// them; the trackers see them as they are.
constexpr float kWeightFloor = 0x1p-92f;

// Rows of keys or values as the attention primitives read them: `stride` elements of `dtype` apart,
// each with at least padded_dim(head_dim) readable elements.
struct Rows {
  DType dtype;
  const uint8_t* data;
  size_t stride;
};

// The vectorisable inner loops of attention, one table per instruction set.
struct Primitives {
  // Decodes count stored rows of head_dim elements into f32 rows of stride dp, zero-padded (used when
  // head_dim is not a whole number of vectors, so that the other primitives never see a ragged row).
  void (*to_f32)(DType dtype, const uint8_t* src, size_t count, size_t head_dim, size_t dp, float* dst);
  // s[q * s_stride + t] = scale * dot(qs + q * dp, k row t) for q < nq, t < nt; raises max[q] to the
  // largest of them.
  void (*dots)(Rows k, size_t nt, const float* qs, size_t nq, size_t dp, float scale, float* s, size_t s_stride,
               float* max);
  // s[j] = exp(s[j] - max) for j < n (to about an ulp, subnormals included; 0 below kExpFloor); returns
  // their sum.
  float (*exp_sum)(float* s, size_t n, float max);
  // acc[q * dp + c] += sum over t < nt of w * (v row t)[c], for q < nq, c < dp, where the weight w is
  // p[q * p_stride + t], or 0 when that is below kWeightFloor (a NaN stays NaN).
  void (*accumulate)(Rows v, size_t nt, const float* p, size_t p_stride, size_t nq, size_t dp, float* acc);
};

const Primitives& scalar_primitives();
// Only valid where the CPU has AVX2, FMA and F16C.
const Primitives& avx2_primitives();
// Only valid where the CPU (and OS) also has AVX-512F.
const Primitives& avx512_primitives();

// Feeds one observation of one KV head (n slots attended, clock value step) to the tracker. The
// probability of slot j for query g of the group is f32(p[g * stride + j] * weight[g]) (weight null: 1),
// which lets attention hand over unnormalised exponentials and their 1/sum. A Custom tracker gets the
// GQA-combined probabilities in custom_out (n floats) instead; a tracker that does not observe is left
// alone.
void observe_head(const LayerView& view, int32_t seq, int32_t head, const float* p, const float* weight, size_t group,
                  size_t stride, size_t n, uint64_t step, const TrackerSpec& tracker, float* custom_out);

// Initialises the score of a token just stored at slot of (seq, head) (zero, then the tracker's rule);
// key is the stored key decoded to f32.
void init_slot(const LayerView& view, int32_t seq, int32_t head, int32_t slot, int32_t position, const float* key,
               const TrackerSpec& tracker);

// Aux words the tracker needs per token (0 unless Scissorhands).
inline uint32_t tracker_aux_words(const TrackerSpec& tracker) {
  return tracker.kind == TrackerKind::Scissorhands ? (tracker.window + 31) / 32 : 0;
}

// Tokens kept by (seq, head), clamped into [0, the head's capacity] so that a store mutated under our
// feet can never index out of bounds (callers have checked the value already).
inline int32_t kept(const LayerView& view, int32_t seq, int32_t head) {
  const int32_t n = view.lengths[static_cast<size_t>(seq) * static_cast<size_t>(view.kv_heads) + static_cast<size_t>(head)];
  const int32_t cap = view.head_capacity(seq, head);
  return n < 0 ? 0 : n > cap ? cap : n;
}

// Marks in `dropped` (one byte per slot) the `count` lowest of slots [begin, end) under `keys`: NaN first,
// then by value, ties to the lower slot (evict.cc). `order` has room for end - begin slots.
void choose_lowest(const float* keys, int32_t begin, int32_t end, int32_t count, uint32_t* order, uint8_t* dropped);

// True when every head's length is in [0, its capacity] (and at least min_length).
bool lengths_valid(const LayerView& view, int32_t seq, int32_t min_length);

// True when steps[seq] is an integer clock that can advance by `by` and stay exact.
bool step_valid(const LayerView& view, int32_t seq, int32_t by);

}  // namespace sh::cpu
