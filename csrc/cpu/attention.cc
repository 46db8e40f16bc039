// Decode and prefill attention (docs/semantics.md), with the tracker fed in the same pass.
//
// Work is done per KV head, so each key and value is read from memory once for all G query heads of its
// group: the primitives decode f16/bf16 in registers as they dot every key with all the queries of the
// block (the scores of the whole row land in scratch, their maximum is tracked on the way), one pass
// turns scores into exponentials and their sum, then every value row is loaded once and accumulated into
// all the queries' outputs. Normalising by 1/sum is left to the outputs and to the tracker rule, which
// sees f32(e * (1/sum)) as the probability.
// Prefill runs the same code on blocks of rows (each row with its causal length). The probabilities are
// then combined over the group and handed to the tracker rule, one observation per row, in row order.
#include <algorithm>
#include <cstring>
#include <limits>

#include "internal.h"
#include "scissorhands/cpu.h"

namespace sh::cpu {
namespace {

// Everything derived once per call, shared by both threads.
struct Plan {
  const LayerView* view;
  const AttentionArgs* args;
  const TrackerSpec* tracker;
  const Primitives* prims;
  size_t group;
  size_t dp;
  size_t tile_tokens;
  size_t block_rows;
  size_t s_stride;
  uint64_t first_step;
  // Rows are whole vectors: the primitives read keys and values in place (else tiles are first
  // decoded into padded f32 rows).
  bool in_place;
};

struct Scratch {
  float* q;
  float* acc;
  float* max;
  float* inv;
  float* s;
  float* tile;
};

// Floats of scratch a thread needs: queries, accumulators, per-query max and 1/sum, scores, one tile.
size_t scratch_floats(const Plan& plan) {
  const size_t queries = plan.block_rows * plan.group;
  return queries * (2 * plan.dp + plan.s_stride) + 2 * round_up(queries, 16) +
         (plan.in_place ? 0 : plan.tile_tokens * plan.dp);
}

// Segments stay 64-byte aligned: dp and s_stride are multiples of 8 and 16 floats.
Scratch carve(const Plan& plan, float* base) {
  const size_t queries = plan.block_rows * plan.group;
  Scratch sc{};
  sc.q = base;
  sc.acc = sc.q + queries * plan.dp;
  sc.max = sc.acc + queries * plan.dp;
  sc.inv = sc.max + round_up(queries, 16);
  sc.s = sc.inv + round_up(queries, 16);
  sc.tile = sc.s + queries * plan.s_stride;
  return sc;
}

void load_queries(const Plan& plan, int32_t head, int32_t r0, int32_t r1, float* qbuf) {
  const LayerView& view = *plan.view;
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

// out = acc * (1 / sum) for the rows [r0, r1) of one head's group.
void store_outputs(const Plan& plan, int32_t head, int32_t r0, int32_t r1, const float* acc, const float* inv) {
  const LayerView& view = *plan.view;
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

// Rows [t0, t0 + nt) of `data` (the keys or values of one head).
Rows tile_rows(const Plan& plan, const uint8_t* data, size_t t0, size_t nt, float* tile) {
  const LayerView& view = *plan.view;
  const uint8_t* src = data + t0 * view.row_bytes();
  if (plan.in_place) return Rows{view.dtype, src, static_cast<size_t>(view.head_dim)};
  plan.prims->to_f32(view.dtype, src, nt, static_cast<size_t>(view.head_dim), plan.dp, tile);
  return Rows{DType::F32, reinterpret_cast<const uint8_t*>(tile), plan.dp};
}

void attend_head(const Plan& plan, const Scratch& sc, int32_t head) {
  const LayerView& view = *plan.view;
  const AttentionArgs& args = *plan.args;
  const Primitives& prims = *plan.prims;
  const size_t group = plan.group;
  const size_t dp = plan.dp;
  const size_t base = view.head_base(args.seq, head);
  const uint8_t* keys = view.keys + base * view.row_bytes();
  const uint8_t* values = view.values + base * view.row_bytes();
  // Row r attends to the first `first + r` slots.
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
    for (size_t t0 = 0; t0 < n_max; t0 += plan.tile_tokens) {
      const size_t nt = std::min(plan.tile_tokens, n_max - t0);
      prims.dots(tile_rows(plan, keys, t0, nt, sc.tile), nt, sc.q, queries, dp, args.scale, sc.s + t0, plan.s_stride,
                 sc.max);
    }
    for (size_t q = 0; q < queries; ++q) {
      float* row = sc.s + q * plan.s_stride;
      const size_t n = attended(q);
      float max = sc.max[q];
      if (n < n_max) {
        // An earlier causal row: its maximum is over its own slots only.
        max = -std::numeric_limits<float>::infinity();
        for (size_t j = 0; j < n; ++j) max = row[j] > max ? row[j] : max;
      }
      sc.inv[q] = n > 0 ? 1.0f / prims.exp_sum(row, n, max) : 0.0f;
      // Slots a causal row does not see weigh 0, so all rows of the block share one pass over the values.
      std::fill(row + n, row + n_max, 0.0f);
    }
    std::fill(sc.acc, sc.acc + queries * dp, 0.0f);
    for (size_t t0 = 0; t0 < n_max; t0 += plan.tile_tokens) {
      const size_t nt = std::min(plan.tile_tokens, n_max - t0);
      prims.accumulate(tile_rows(plan, values, t0, nt, sc.tile), nt, sc.s + t0, plan.s_stride, queries, dp, sc.acc);
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
      observe_head(view, args.seq, head, sc.s + local * group * plan.s_stride, sc.inv + local * group, group,
                   plan.s_stride, n, plan.first_step + row, *plan.tracker, custom);
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
  const int32_t h1 = part == 0 ? split.middle : plan.view->kv_heads;
  for (int32_t h = h0; h < h1; ++h) attend_head(plan, sc, h);
}

}  // namespace

Status attend(Context& ctx, const LayerView& view, const AttentionArgs& args, const TrackerSpec& tracker) {
  if (args.seq < 0 || args.seq >= view.max_sequences) return Status::Argument;
  if (args.query_heads <= 0 || args.query_heads % view.kv_heads != 0) return Status::Argument;
  if (args.rows < 1 || args.row_begin < 0 || args.row_begin >= args.row_end || args.row_end > args.rows) {
    return Status::Argument;
  }
  if ((args.q.bits16 || args.out.bits16) && view.dtype == DType::F32) return Status::DType;
  if (tracker.kind == TrackerKind::Scissorhands &&
      (tracker.window == 0 || tracker_aux_words(tracker) > static_cast<uint32_t>(view.aux_words))) {
    return Status::Argument;
  }
  // Query rows are tokens already kept (a decode's query token was appended first).
  if (!lengths_valid(view, args.seq, args.rows)) return Status::Argument;
  if (!step_valid(view, args.seq, args.row_end - args.row_begin)) return Status::Argument;

  Plan plan{};
  plan.view = &view;
  plan.args = &args;
  plan.tracker = &tracker;
  plan.prims = &ctx.primitives();
  plan.group = static_cast<size_t>(args.query_heads / view.kv_heads);
  plan.dp = padded_dim(view.head_dim);
  plan.in_place = plan.dp == static_cast<size_t>(view.head_dim);
  plan.tile_tokens = std::max<size_t>(4, kTileFloats / plan.dp);
  plan.block_rows = std::min(std::max<size_t>(1, kBlockQueries / plan.group), static_cast<size_t>(args.row_end - args.row_begin));
  plan.first_step = static_cast<uint64_t>(view.steps[args.seq]);

  size_t longest = 0;
  size_t kept_total = 0;
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    const size_t n = static_cast<size_t>(kept(view, args.seq, h));
    longest = std::max(longest, n);
    kept_total += n;
  }
  plan.s_stride = round_up(longest, 16);
  const size_t floats = scratch_floats(plan);

  Split split{&plan, {nullptr, nullptr}, view.kv_heads / 2};
  split.scratch[0] = ctx.workspace(0).floats(floats);
  if (split.scratch[0] == nullptr) return Status::NoMemory;
  const size_t blocks = (static_cast<size_t>(args.row_end - args.row_begin) + plan.block_rows - 1) / plan.block_rows;
  const size_t streamed = kept_total * view.row_bytes() * 2 * blocks;
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
