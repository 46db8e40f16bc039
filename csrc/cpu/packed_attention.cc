// Decode and prefill attention over a packed store (docs/semantics.md, docs/packing.md), with the tracker
// fed in the same pass. The structure is that of attention.cc: work per KV head, so every code is read
// once for all the queries of its group. Each tile of keys (then of values) is dequantised into an f32
// tile that stays in L1 (codes times the run's per-channel scales plus zero points for keys, the token's
// per-group ones for values; the residual window's rows are converted from the element type), and the
// same dot-product and accumulation primitives as dense attention run over it. No dequantised copy of the
// cache is ever made: the memory traffic is the codes, scales and zero points.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cstring>
#include <limits>

#include "internal.h"
#include "pack_simd.h"
#include "scissorhands/pack.h"
#include "scissorhands/packed.h"

#define SH_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

namespace sh::cpu {
namespace {

constexpr size_t kBlockQueries = 32;
constexpr size_t kTileFloats = 4096;
constexpr size_t kSplitBytes = size_t{1} << 20;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct Plan {
  const PackedView* view;
  const AttentionArgs* args;
  const TrackerSpec* tracker;
  const Primitives* prims;
  size_t group;
  size_t dp;
  size_t tile_tokens;
  size_t block_rows;
  size_t s_stride;
  uint64_t first_step;
  // AVX-512 dequantisation of key rows (head_dim a multiple of 16) and of value rows (groups too).
  bool simd_keys;
  bool simd_values;
};

struct Scratch {
  float* q;
  float* acc;
  float* max;
  float* inv;
  float* s;
  float* tile;
  // The current key run's per-channel scales and zero points, as f32.
  float* run_scales;
  float* run_zeros;
};

size_t scratch_floats(const Plan& plan) {
  const size_t queries = plan.block_rows * plan.group;
  return queries * (2 * plan.dp + plan.s_stride) + 2 * round_up(queries, 16) + plan.tile_tokens * plan.dp + 2 * plan.dp;
}

Scratch carve(const Plan& plan, float* base) {
  const size_t queries = plan.block_rows * plan.group;
  Scratch sc{};
  sc.q = base;
  sc.acc = sc.q + queries * plan.dp;
  sc.max = sc.acc + queries * plan.dp;
  sc.inv = sc.max + round_up(queries, 16);
  sc.s = sc.inv + round_up(queries, 16);
  sc.tile = sc.s + queries * plan.s_stride;
  sc.run_scales = sc.tile + plan.tile_tokens * plan.dp;
  sc.run_zeros = sc.run_scales + plan.dp;
  return sc;
}

SH_AVX512 void key_row_avx512(const uint8_t* codes, uint32_t bits, const float* s, const float* z, size_t d, float* dst) {
  for (size_t c = 0; c < d; c += 16) {
    _mm512_storeu_ps(dst + c, dequantise16(load_codes16(codes + c * bits / 8, bits), _mm512_loadu_ps(s + c), _mm512_loadu_ps(z + c)));
  }
}

SH_AVX512 void value_row_avx512(const uint8_t* codes, uint32_t bits, const uint16_t* scales, const uint16_t* zeros, size_t d,
                                size_t g, float* dst) {
  for (size_t c0 = 0, k = 0; c0 < d; c0 += g, ++k) {
    const __m512 s = _mm512_set1_ps(f16_to_f32(scales[k]));
    const __m512 z = _mm512_set1_ps(f16_to_f32(zeros[k]));
    for (size_t c = c0; c < c0 + g; c += 16) {
      _mm512_storeu_ps(dst + c, dequantise16(load_codes16(codes + c * bits / 8, bits), s, z));
    }
  }
}

void key_row_portable(const uint8_t* codes, uint32_t bits, const float* s, const float* z, size_t d, float* dst) {
  for (size_t c = 0; c < d; ++c) dst[c] = dequantise_value(read_code(codes, bits, c), s[c], z[c]);
}

void value_row_portable(const uint8_t* codes, uint32_t bits, const uint16_t* scales, const uint16_t* zeros, size_t d, size_t g,
                        float* dst) {
  for (size_t c = 0; c < d; ++c) {
    dst[c] = dequantise_value(read_code(codes, bits, c), f16_to_f32(scales[c / g]), f16_to_f32(zeros[c / g]));
  }
}

// Where the key pass is in the runs of one head: run `run` covers slots [start, end).
struct RunCursor {
  int32_t run;
  size_t start;
  size_t end;
};

// Rows [t0, t0 + nt) of one head's keys (cursor non-null) or values, as padded f32 rows in sc.tile.
Rows tile_rows(const Plan& plan, const Scratch& sc, int32_t head, size_t t0, size_t nt, RunCursor* cursor) {
  const PackedView& view = *plan.view;
  const LayerView& base = view.base;
  const size_t i = view.index(plan.args->seq, head);
  const size_t d = static_cast<size_t>(base.head_dim);
  const size_t packed = static_cast<size_t>(view.packed[i]);
  const size_t cb = view.code_bytes();
  const size_t pb = view.packed_base(i);
  size_t t = t0;
  const size_t end = t0 + nt;
  for (; t < end && t < packed; ++t) {
    float* dst = sc.tile + (t - t0) * plan.dp;
    if (cursor != nullptr) {
      while (t >= cursor->end) {
        cursor->run += 1;
        cursor->start = cursor->end;
        cursor->end += static_cast<size_t>(view.run_lengths[view.run_base(i) + static_cast<size_t>(cursor->run)]);
        const size_t entry = (view.run_base(i) + static_cast<size_t>(cursor->run)) * d;
        for (size_t c = 0; c < d; ++c) {
          sc.run_scales[c] = f16_to_f32(view.key_scales[entry + c]);
          sc.run_zeros[c] = f16_to_f32(view.key_zeros[entry + c]);
        }
      }
      const uint8_t* codes = view.key_codes + (pb + t) * cb;
      if (plan.simd_keys) {
        key_row_avx512(codes, view.bits, sc.run_scales, sc.run_zeros, d, dst);
      } else {
        key_row_portable(codes, view.bits, sc.run_scales, sc.run_zeros, d, dst);
      }
    } else {
      const uint8_t* codes = view.value_codes + (pb + t) * cb;
      const uint16_t* scales = view.value_scales + (pb + t) * view.value_groups();
      const uint16_t* zeros = view.value_zeros + (pb + t) * view.value_groups();
      if (plan.simd_values) {
        value_row_avx512(codes, view.bits, scales, zeros, d, static_cast<size_t>(view.group_size), dst);
      } else {
        value_row_portable(codes, view.bits, scales, zeros, d, static_cast<size_t>(view.group_size), dst);
      }
    }
    std::fill(dst + d, dst + plan.dp, 0.0f);
  }
  if (t < end) {
    const uint8_t* raw = cursor != nullptr ? view.residual_keys : view.residual_values;
    const uint8_t* src = raw + (view.residual_base(i) + (t - packed)) * base.row_bytes();
    plan.prims->to_f32(base.dtype, src, end - t, d, plan.dp, sc.tile + (t - t0) * plan.dp);
  }
  return Rows{DType::F32, reinterpret_cast<const uint8_t*>(sc.tile), plan.dp};
}

void load_queries(const Plan& plan, int32_t head, int32_t r0, int32_t r1, float* qbuf) {
  const LayerView& view = plan.view->base;
  const AttentionArgs& args = *plan.args;
  const size_t d = static_cast<size_t>(view.head_dim);
  float* dst = qbuf;
  for (int32_t r = r0; r < r1; ++r) {
    for (size_t g = 0; g < plan.group; ++g, dst += plan.dp) {
      const size_t h = static_cast<size_t>(head) * plan.group + g;
      const size_t at = (static_cast<size_t>(r) * static_cast<size_t>(args.query_heads) + h) * d;
      if (args.q.bits16) {
        const uint16_t* src = static_cast<const uint16_t*>(args.q.data) + at;
        for (size_t c = 0; c < d; ++c) dst[c] = view.dtype == DType::F16 ? f16_to_f32(src[c]) : bf16_to_f32(src[c]);
      } else {
        std::memcpy(dst, static_cast<const float*>(args.q.data) + at, d * sizeof(float));
      }
      std::fill(dst + d, dst + plan.dp, 0.0f);
    }
  }
}

void store_outputs(const Plan& plan, int32_t head, int32_t r0, int32_t r1, const float* acc, const float* inv) {
  const LayerView& view = plan.view->base;
  const AttentionArgs& args = *plan.args;
  const size_t d = static_cast<size_t>(view.head_dim);
  const float* src = acc;
  for (int32_t r = r0; r < r1; ++r) {
    for (size_t g = 0; g < plan.group; ++g, src += plan.dp, ++inv) {
      const size_t h = static_cast<size_t>(head) * plan.group + g;
      const size_t at = (static_cast<size_t>(r) * static_cast<size_t>(args.query_heads) + h) * d;
      if (args.out.bits16) {
        uint16_t* dst = static_cast<uint16_t*>(args.out.data) + at;
        for (size_t c = 0; c < d; ++c) {
          dst[c] = view.dtype == DType::F16 ? f32_to_f16(src[c] * *inv) : f32_to_bf16(src[c] * *inv);
        }
      } else {
        float* dst = static_cast<float*>(args.out.data) + at;
        for (size_t c = 0; c < d; ++c) dst[c] = src[c] * *inv;
      }
    }
  }
}

void attend_head(const Plan& plan, const Scratch& sc, int32_t head) {
  const LayerView& view = plan.view->base;
  const AttentionArgs& args = *plan.args;
  const Primitives& prims = *plan.prims;
  const size_t group = plan.group;
  const size_t dp = plan.dp;
  const int64_t first = static_cast<int64_t>(kept(view, args.seq, head)) - args.rows + 1;

  for (int32_t b0 = args.row_begin; b0 < args.row_end; b0 += static_cast<int32_t>(plan.block_rows)) {
    const int32_t b1 = std::min(args.row_end, b0 + static_cast<int32_t>(plan.block_rows));
    const size_t queries = static_cast<size_t>(b1 - b0) * group;
    const size_t n_max = static_cast<size_t>(std::max<int64_t>(0, first + b1 - 1));
    auto attended = [&](size_t query) {
      return static_cast<size_t>(std::max<int64_t>(0, first + b0 + static_cast<int64_t>(query / group)));
    };

    load_queries(plan, head, b0, b1, sc.q);
    std::fill(sc.max, sc.max + queries, -std::numeric_limits<float>::infinity());
    RunCursor cursor{-1, 0, 0};
    for (size_t t0 = 0; t0 < n_max; t0 += plan.tile_tokens) {
      const size_t nt = std::min(plan.tile_tokens, n_max - t0);
      prims.dots(tile_rows(plan, sc, head, t0, nt, &cursor), nt, sc.q, queries, dp, args.scale, sc.s + t0, plan.s_stride, sc.max);
    }
    for (size_t q = 0; q < queries; ++q) {
      float* row = sc.s + q * plan.s_stride;
      const size_t n = attended(q);
      float max = sc.max[q];
      if (n < n_max) {
        max = -std::numeric_limits<float>::infinity();
        for (size_t j = 0; j < n; ++j) max = row[j] > max ? row[j] : max;
      }
      sc.inv[q] = n > 0 ? 1.0f / prims.exp_sum(row, n, max) : 0.0f;
      std::fill(row + n, row + n_max, 0.0f);
    }
    std::fill(sc.acc, sc.acc + queries * dp, 0.0f);
    for (size_t t0 = 0; t0 < n_max; t0 += plan.tile_tokens) {
      const size_t nt = std::min(plan.tile_tokens, n_max - t0);
      prims.accumulate(tile_rows(plan, sc, head, t0, nt, nullptr), nt, sc.s + t0, plan.s_stride, queries, dp, sc.acc);
    }
    store_outputs(plan, head, b0, b1, sc.acc, sc.inv);

    for (int32_t r = b0; r < b1; ++r) {
      const size_t local = static_cast<size_t>(r - b0);
      const size_t n = attended(local * group);
      if (n == 0) continue;
      const size_t row = static_cast<size_t>(r - args.row_begin);
      float* custom = args.probs_out == nullptr
                          ? nullptr
                          : args.probs_out + (row * static_cast<size_t>(view.kv_heads) + static_cast<size_t>(head)) *
                                                 static_cast<size_t>(view.capacity);
      observe_head(view, args.seq, head, sc.s + local * group * plan.s_stride, sc.inv + local * group, group, plan.s_stride,
                   n, plan.first_step + row, *plan.tracker, custom);
    }
  }
}

struct Split {
  const Plan* plan;
  float* scratch[2];
  int32_t middle;
};

void run_part(void* arg, int part) {
  const Split& split = *static_cast<const Split*>(arg);
  const Plan& plan = *split.plan;
  const Scratch sc = carve(plan, split.scratch[part]);
  const int32_t h0 = part == 0 ? 0 : split.middle;
  const int32_t h1 = part == 0 ? split.middle : plan.view->base.kv_heads;
  for (int32_t h = h0; h < h1; ++h) attend_head(plan, sc, h);
}

}  // namespace

Status packed_attend(Context& ctx, const PackedView& pv, const AttentionArgs& args, const TrackerSpec& tracker) {
  const LayerView& view = pv.base;
  if (args.seq < 0 || args.seq >= view.max_sequences) return Status::Argument;
  if (args.query_heads <= 0 || args.query_heads % view.kv_heads != 0) return Status::Argument;
  if (args.rows < 1 || args.row_begin < 0 || args.row_begin >= args.row_end || args.row_end > args.rows) return Status::Argument;
  if ((args.q.bits16 || args.out.bits16) && view.dtype == DType::F32) return Status::DType;
  if (tracker.kind == TrackerKind::Scissorhands &&
      (tracker.window == 0 || tracker_aux_words(tracker) > static_cast<uint32_t>(view.aux_words))) {
    return Status::Argument;
  }
  if (!lengths_valid(view, args.seq, args.rows) || !packed_state_valid(pv, args.seq)) return Status::Argument;
  if (!step_valid(view, args.seq, args.row_end - args.row_begin)) return Status::Argument;
  if (view.head_dim > kMaxHeadDim || view.head_dim % pv.group_size != 0 || pv.group_size % 8 != 0) return Status::Argument;

  Plan plan{};
  plan.view = &pv;
  plan.args = &args;
  plan.tracker = &tracker;
  plan.prims = &ctx.primitives();
  plan.group = static_cast<size_t>(args.query_heads / view.kv_heads);
  plan.dp = padded_dim(view.head_dim);
  plan.tile_tokens = std::max<size_t>(4, kTileFloats / plan.dp);
  plan.block_rows = std::min(std::max<size_t>(1, kBlockQueries / plan.group), static_cast<size_t>(args.row_end - args.row_begin));
  plan.first_step = static_cast<uint64_t>(view.steps[args.seq]);
  const bool simd = std::strcmp(ctx.simd(), "avx512") == 0 && pack_simd_available();
  plan.simd_keys = simd && view.head_dim % 16 == 0;
  plan.simd_values = simd && pv.group_size % 16 == 0;

  size_t longest = 0;
  size_t packed_total = 0;
  size_t residual_total = 0;
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    const size_t n = static_cast<size_t>(kept(view, args.seq, h));
    const size_t packed = static_cast<size_t>(pv.packed[pv.index(args.seq, h)]);
    longest = std::max(longest, n);
    packed_total += packed;
    residual_total += n - packed;
  }
  plan.s_stride = round_up(longest, 16);
  const size_t floats = scratch_floats(plan);

  Split split{&plan, {nullptr, nullptr}, view.kv_heads / 2};
  split.scratch[0] = ctx.workspace(0).floats(floats);
  if (split.scratch[0] == nullptr) return Status::NoMemory;
  const size_t blocks = (static_cast<size_t>(args.row_end - args.row_begin) + plan.block_rows - 1) / plan.block_rows;
  const size_t streamed = (packed_total * 2 * pv.code_bytes() + residual_total * view.row_bytes() * 2) * blocks;
  bool parallel = false;
  if (view.kv_heads >= 2 && streamed >= kSplitBytes) {
    split.scratch[1] = ctx.workspace(1).floats(floats);
    parallel = split.scratch[1] != nullptr && ctx.run_pair(run_part, &split);
  }
  if (!parallel) {
    const Scratch sc = carve(plan, split.scratch[0]);
    for (int32_t h = 0; h < view.kv_heads; ++h) attend_head(plan, sc, h);
  }
  view.steps[args.seq] += static_cast<double>(args.row_end - args.row_begin);
  return Status::Ok;
}

}  // namespace sh::cpu
