// Causal prefill attention (docs/semantics.md): `rows` query rows whose tokens are the last `rows` kept
// tokens; row r sees slots [0, length - rows + r]. Two tiled kernels:
//
//  1. prefill_attend: block (32 rows, query head) streams key/value tiles through shared memory with an
//     online softmax (4 threads per row), writes the outputs and each row's max score and 1/sum to scratch.
//  2. prefill_track (only for trackers that observe): block (tile of slots, KV head) recomputes the scores
//     of its slots for tiles of query rows exactly as the first kernel did, turns them into probabilities
//     exp(s - max) * (1/sum) as the CPU does, combines the group, and applies the tracker rule row by row
//     in order (one observation per row).
//
// Rows go in blocks of capacity / 2 (the scratch of a query head holds two floats per row of a block),
// each block both kernels, so every slot still sees its observations in row order. The clock: block
// (0, 0) of the first kernel advances steps[seq] by the block's rows; the second reads the block's first
// step as steps[seq] - rows of the block.
//
// Both kernels read keys and values through a Rows type: a dense store's rows (DenseRows), or a packed
// store's codes dequantised element by element as the CPU does, then its residual window (PackedRows).
#include <algorithm>

#include "common.cuh"
#include "internal.cuh"
#include "packing.cuh"

namespace sh::cuda {
namespace {

struct PrefillParams {
  const uint8_t* keys;
  const uint8_t* values;
  const int32_t* lengths;
  double* steps;
  float* scratch;
  float* scores;
  uint32_t* aux;
  Tensor q;
  Tensor out;
  int32_t seq;
  // All rows of the call, and the block of them [row0, row0 + nrows) these launches compute.
  int32_t rows;
  int32_t row0;
  int32_t nrows;
  HeadMap heads;
  int32_t kv_heads;
  // Scratch floats per query head (the store's capacity).
  int32_t capacity;
  int32_t group;
  int32_t scratch_heads;
  float scale;
  TrackerArgs tracker;
  // Packed stores: the packed arrays (PackedRows); unused for dense stores.
  PackedArgs pk;
};

constexpr int kRows = 32;

// Names a Rows type for the host's dispatch below.
template <typename R>
struct RowsTag {
  using type = R;
};

// Slot j's key and value elements of one (sequence, KV head) of a dense store.
template <typename T, int D>
struct DenseRows {
  const T* keys;
  const T* values;
  __device__ static DenseRows at(const PrefillParams& p, const HeadAt& h, size_t, int) {
    return DenseRows{reinterpret_cast<const T*>(p.keys) + h.base * D, reinterpret_cast<const T*>(p.values) + h.base * D};
  }
  __device__ float key(int j, int c) const { return Elem<T>::load(keys + static_cast<size_t>(j) * D + c); }
  __device__ float value(int j, int c) const { return Elem<T>::load(values + static_cast<size_t>(j) * D + c); }
};

// The same of a packed store (docs/semantics.md): slots below `packed` are f32(zero + code * scale), keys
// with their run's per-channel scale, values with their own per-group one; the residual window follows.
template <typename T, int D, int BITS>
struct PackedRows {
  static constexpr int CB = D * BITS / 8;
  const uint8_t* key_codes;
  const uint8_t* value_codes;
  const uint16_t* key_scales;
  const uint16_t* key_zeros;
  const uint16_t* value_scales;
  const uint16_t* value_zeros;
  const int32_t* slot_run;
  const T* residual_keys;
  const T* residual_values;
  int packed;
  int group;
  __device__ static PackedRows at(const PrefillParams& p, const HeadAt&, size_t i, int n) {
    const PackedArgs& pk = p.pk;
    const int groups = D / pk.group;
    return PackedRows{pk.key_codes + i * pk.packed_slots * CB,
                      pk.value_codes + i * pk.packed_slots * CB,
                      pk.key_scales + i * pk.max_runs * D,
                      pk.key_zeros + i * pk.max_runs * D,
                      pk.value_scales + i * pk.packed_slots * groups,
                      pk.value_zeros + i * pk.packed_slots * groups,
                      pk.slot_run + i * pk.packed_slots,
                      reinterpret_cast<const T*>(pk.residual_keys) + i * pk.residual_slots * D,
                      reinterpret_cast<const T*>(pk.residual_values) + i * pk.residual_slots * D,
                      min(max(pk.packed[i], 0), min(n, pk.packed_slots)),
                      pk.group};
  }
  // Channel c's code of slot j (codes low bits first; BITS divides 8, so a code never straddles bytes).
  __device__ static uint32_t code(const uint8_t* codes, int j, int c) {
    const int bit = c * BITS;
    return (static_cast<uint32_t>(codes[static_cast<size_t>(j) * CB + (bit >> 3)]) >> (bit & 7)) & ((1u << BITS) - 1u);
  }
  __device__ float key(int j, int c) const {
    if (j >= packed) return Elem<T>::load(residual_keys + static_cast<size_t>(j - packed) * D + c);
    const size_t at = static_cast<size_t>(slot_run[j]) * D + c;
    return dequantise_d(code(key_codes, j, c), f16_bits_to_f32(key_scales[at]), f16_bits_to_f32(key_zeros[at]));
  }
  __device__ float value(int j, int c) const {
    if (j >= packed) return Elem<T>::load(residual_values + static_cast<size_t>(j - packed) * D + c);
    const size_t at = static_cast<size_t>(j) * (D / group) + c / group;
    return dequantise_d(code(value_codes, j, c), f16_bits_to_f32(value_scales[at]), f16_bits_to_f32(value_zeros[at]));
  }
};

template <int D, typename Rows>
__global__ void __launch_bounds__(128) prefill_attend(const PrefillParams p) {
  constexpr int BK = 4096 / D;
  constexpr int PER = D / 4;
  __shared__ float ks[BK][D];
  __shared__ float vs[BK][D];
  const int hq = blockIdx.y;
  const int hk = hq / p.group;
  const int tid = threadIdx.x;
  const int part = tid & 3;
  const int rr = p.row0 + static_cast<int>(blockIdx.x) * kRows + tid / 4;
  const bool active = rr < p.row0 + p.nrows;
  if (blockIdx.x == 0 && blockIdx.y == 0 && tid == 0) p.steps[p.seq] += static_cast<double>(p.nrows);

  const size_t i = static_cast<size_t>(p.seq) * p.kv_heads + hk;
  const HeadAt at = head_at(p.heads, i);
  int n = p.lengths[i];
  n = n < p.rows ? p.rows : (n > at.cap ? at.cap : n);
  const int first = n - p.rows;
  const Rows kv = Rows::at(p, at, i, n);

  float q[PER];
  float acc[PER];
#pragma unroll
  for (int e = 0; e < PER; ++e) {
    q[e] = active ? load_input(p.q.data, p.q.dtype, rr * p.q.row_stride + static_cast<int64_t>(hq) * D + e * 4 + part) : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY;
  float l = 0.0f;
  const int last_row = min(p.row0 + p.nrows - 1, p.row0 + static_cast<int>(blockIdx.x) * kRows + kRows - 1);
  const int kend = first + last_row + 1;
  const int visible = active ? first + rr + 1 : 0;
  for (int kb = 0; kb < kend; kb += BK) {
    const int nk = min(BK, kend - kb);
    __syncthreads();
    for (int idx = tid; idx < nk * D; idx += 128) {
      const int k = idx / D;
      const int c = idx - k * D;
      ks[k][c] = kv.key(kb + k, c);
      vs[k][c] = kv.value(kb + k, c);
    }
    __syncthreads();
    for (int k = 0; k < nk; ++k) {
      float s = 0.0f;
#pragma unroll
      for (int e = 0; e < PER; ++e) s = fmaf(q[e], ks[k][e * 4 + part], s);
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      // Rounded here (__fmul_rn is never fused into a multiply-add): contracted into the exponent's
      // s - max, the product's rounding error (up to 1.5e-5 at logits in the hundreds) would give the
      // row's largest score a probability below 1, and prefill_track could not reproduce it.
      s = __fmul_rn(s, p.scale);
      if (kb + k < visible) {
        const float w = online_softmax<PER>(s, m, l, acc);
#pragma unroll
        for (int e = 0; e < PER; ++e) acc[e] = fmaf(w, vs[k][e * 4 + part], acc[e]);
      }
    }
  }
  if (!active) return;
  const float inv = 1.0f / l;
#pragma unroll
  for (int e = 0; e < PER; ++e) {
    store_output(p.out.data == nullptr ? nullptr : const_cast<void*>(p.out.data), p.out.dtype,
                 rr * p.out.row_stride + static_cast<int64_t>(hq) * D + e * 4 + part, acc[e] * inv);
  }
  if (part == 0) {
    float* stats = p.scratch + (static_cast<size_t>(p.seq) * p.scratch_heads + hq) * p.capacity + 2 * (rr - p.row0);
    stats[0] = m;
    // With capacity 1 there is one row over one key: its sum is exactly 1, and there is room for the max only.
    if (p.capacity > 1) stats[1] = inv;
  }
}

// Query rows per tile: 16 queries (rows x group) at a time.
constexpr int kQueries = 16;

template <int D, typename Rows>
__global__ void __launch_bounds__(256) prefill_track(const PrefillParams p) {
  constexpr int BJ = 4096 / D;
  __shared__ float ks[BJ][D + 1];
  __shared__ float qs[kQueries][D];
  __shared__ float ps[kQueries][BJ];
  const int hk = blockIdx.y;
  const int tid = threadIdx.x;
  const int j0 = blockIdx.x * BJ;
  const size_t i = static_cast<size_t>(p.seq) * p.kv_heads + hk;
  const HeadAt at = head_at(p.heads, i);
  int n = p.lengths[i];
  n = n < p.rows ? p.rows : (n > at.cap ? at.cap : n);
  if (j0 >= n) return;
  const int first = n - p.rows;
  const uint64_t step0 = static_cast<uint64_t>(p.steps[p.seq]) - static_cast<uint64_t>(p.nrows);
  const size_t head = at.base;
  const Rows kv = Rows::at(p, at, i, n);
  const int nj = min(BJ, n - j0);
  for (int idx = tid; idx < nj * D; idx += 256) {
    const int j = idx / D;
    const int c = idx - j * D;
    ks[j][c] = kv.key(j0 + j, c);
  }
  const int G = p.group;
  const int rows_per_tile = max(1, kQueries / G);
  const int r_start = max(p.row0, j0 - first);
  const int r_end = p.row0 + p.nrows;
  for (int r0 = r_start; r0 < r_end; r0 += rows_per_tile) {
    const int nr = min(rows_per_tile, r_end - r0);
    __syncthreads();
    for (int idx = tid; idx < nr * G * D; idx += 256) {
      const int qi = idx / D;
      const int c = idx - qi * D;
      const int r = r0 + qi / G;
      const int g = qi - (qi / G) * G;
      qs[qi][c] = load_input(p.q.data, p.q.dtype, r * p.q.row_stride + static_cast<int64_t>(hk * G + g) * D + c);
    }
    __syncthreads();
    for (int idx = tid; idx < nr * G * BJ; idx += 256) {
      const int qi = idx / BJ;
      const int j = idx - qi * BJ;
      float prob = 0.0f;
      if (j < nj) {
        // The score exactly as prefill_attend computed it (four interleaved partial sums, then a pairwise
        // sum), so the largest probability of a row is exactly what its log-sum-exp says.
        float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
        for (int e = 0; e < D / 4; ++e) {
#pragma unroll
          for (int t = 0; t < 4; ++t) part[t] = fmaf(qs[qi][e * 4 + t], ks[j][e * 4 + t], part[t]);
        }
        const float s = __fmul_rn((part[0] + part[1]) + (part[2] + part[3]), p.scale);
        const int r = r0 + qi / G;
        const int g = qi - (qi / G) * G;
        const float* stats = p.scratch + (static_cast<size_t>(p.seq) * p.scratch_heads + hk * G + g) * p.capacity + 2 * (r - p.row0);
        prob = __fmul_rn(expf(s - stats[0]), p.capacity > 1 ? stats[1] : 1.0f);
      }
      ps[qi][j] = prob;
    }
    __syncthreads();
    if (tid < nj) {
      const int j = j0 + tid;
      for (int lr = 0; lr < nr; ++lr) {
        const int r = r0 + lr;
        if (j > first + r) continue;
        float c = 0.0f;
        for (int g = 0; g < G; ++g) c = gqa_fold(c, ps[lr * G + g][tid], g, p.tracker.gqa_max);
        c = gqa_finish(c, G, p.tracker.gqa_max);
        observe_token(p.scores + head + j, p.aux + at.aux + j, at.aux_stride, p.tracker, c, first + r + 1,
                      step0 + (r - p.row0));
      }
    }
  }
}

}  // namespace

Result prefill(const Store& store, int32_t seq, int32_t length, Tensor q, int32_t rows, Tensor out, int32_t query_heads,
               float scale, const TrackerSpec& tracker, void* stream) {
  const StoreSpec& s = store.spec;
  if (seq < 0 || seq >= s.max_sequences || rows < 1 || rows > s.capacity || query_heads < 1 ||
      query_heads % s.kv_heads != 0 || query_heads > s.query_heads) {
    return Result{Status::Argument, 0, "prefill"};
  }
  PrefillParams p{};
  p.keys = store.keys;
  p.values = store.values;
  p.lengths = store.lengths;
  p.steps = store.steps;
  p.scratch = store.scratch;
  p.scores = store.scores;
  p.aux = store.aux;
  p.q = q;
  p.out = out;
  p.seq = seq;
  p.rows = rows;
  p.heads = head_map(store);
  p.kv_heads = s.kv_heads;
  p.capacity = s.capacity;
  p.group = query_heads / s.kv_heads;
  p.scratch_heads = s.query_heads;
  p.scale = scale;
  p.tracker = tracker_args(tracker);
  if (s.bits != 0) p.pk = packed_args(store);
  const bool track = tracker_observes(p.tracker);
  if (track && p.group > kMaxPrefillTrackGroup) return Result{Status::Argument, 0, "queryHeads"};
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int32_t longest = std::max(rows, std::min(length, s.capacity));
  const int32_t block = std::max(1, s.capacity / 2);
  return SH_DISPATCH_DTYPE(s.dtype, T, [&] {
    return SH_DISPATCH_HEAD_DIM(s.head_dim, D, [&] {
      auto launch = [&](auto rows_tag) -> Result {
        using Rows = typename decltype(rows_tag)::type;
        Result r;
        for (int32_t row0 = 0; row0 < rows && ok(r); row0 += block) {
          p.row0 = row0;
          p.nrows = std::min(block, rows - row0);
          prefill_attend<D, Rows><<<dim3((p.nrows + kRows - 1) / kRows, query_heads), 128, 0, st>>>(p);
          r = launched("prefill_attend");
          if (!ok(r) || !track) continue;
          constexpr int BJ = 4096 / D;
          prefill_track<D, Rows><<<dim3((longest + BJ - 1) / BJ, s.kv_heads), 256, 0, st>>>(p);
          r = launched("prefill_track");
        }
        return r;
      };
      switch (s.bits) {
        case 0:
          return launch(RowsTag<DenseRows<T, D>>{});
        case 2:
          return launch(RowsTag<PackedRows<T, D, 2>>{});
        case 4:
          return launch(RowsTag<PackedRows<T, D, 4>>{});
        default:
          return launch(RowsTag<PackedRows<T, D, 8>>{});
      }
    });
  });
}

}  // namespace sh::cuda
