// AVX2 + FMA + F16C attention primitives. Every function carries the target attribute instead of the
// file being built with -mavx2, so nothing compiled here (inline helpers from shared headers included)
// can leak AVX2 instructions into code that runs before the CPU check.
#include <immintrin.h>

#include <cstring>

#include "internal.h"

#define SH_AVX2 __attribute__((target("avx2,fma,f16c")))
// The block kernels must be inlined into their loops for their accumulators to stay in registers.
#define SH_INLINE inline __attribute__((always_inline))

namespace sh::cpu {
namespace {

// ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)): the same tree as hsum8, so that a dot product
// rounds the same whichever kernel block computed it (equal keys must tie exactly).
SH_AVX2 SH_INLINE float hsum(__m256 v) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v, v), _mm256_hadd_ps(v, v));
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

// [sum(x[0]), ..., sum(x[7])]: eight horizontal sums in one transpose-and-add tree.
SH_AVX2 SH_INLINE __m256 hsum8(const __m256* x) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(x[0], x[1]), _mm256_hadd_ps(x[2], x[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(x[4], x[5]), _mm256_hadd_ps(x[6], x[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// Lanes [0, n) set, for the ragged end of a row (n in 1..7).
SH_AVX2 SH_INLINE __m256i tail_mask(size_t n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lanes);
}

// exp for x <= 0 (Cephes polynomial, about 1 ulp), down through the subnormals; exactly 0 below
// kExpFloor, keeps NaN.
SH_AVX2 SH_INLINE __m256 exp_nonpositive(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(kExpFloor), _CMP_LT_OQ);
  // Operand order keeps a NaN x (min/max return their second operand on NaN).
  x = _mm256_max_ps(_mm256_set1_ps(kExpFloor), _mm256_min_ps(_mm256_set1_ps(0.0f), x));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  // y * 2^n. Where that is subnormal (n <= -126, y < 2), its bits are the integer y * 2^(n + 149) rounded
  // to nearest even, which a conversion gives without any subnormal arithmetic (slow on x86); at most
  // 2^24 - 1, so a carry into the exponent field still reads as the right normal number.
  // Each product gets the factor 1 in the other kind's lanes (where its power of 2 is garbage that could
  // itself make a subnormal); a NaN lane (n NaN) takes the normal path, which keeps it.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256 tiny = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(-125), ni)),
                                    _mm256_cmp_ps(n, n, _CMP_ORD_Q));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
  const __m256 pow2sub = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127 + 149)), 23));
  const __m256 normal = _mm256_mul_ps(y, _mm256_blendv_ps(pow2n, one, tiny));
  const __m256 sub = _mm256_castsi256_ps(_mm256_cvtps_epi32(_mm256_mul_ps(y, _mm256_blendv_ps(one, pow2sub, tiny))));
  return _mm256_andnot_ps(underflow, _mm256_blendv_ps(normal, sub, tiny));
}

SH_AVX2 void to_f32(DType dtype, const uint8_t* src, size_t count, size_t head_dim, size_t dp, float* dst) {
  const size_t whole = head_dim & ~static_cast<size_t>(7);
  for (size_t r = 0; r < count; ++r) {
    const uint8_t* in = src + r * head_dim * bytes_per_element(dtype);
    float* row = dst + r * dp;
    size_t c = 0;
    switch (dtype) {
      case DType::F32:
        for (; c < whole; c += 8) _mm256_store_ps(row + c, _mm256_loadu_ps(reinterpret_cast<const float*>(in) + c));
        break;
      case DType::F16:
        for (; c < whole; c += 8) {
          _mm256_store_ps(row + c, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * c))));
        }
        break;
      case DType::BF16:
        for (; c < whole; c += 8) {
          const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * c)));
          _mm256_store_ps(row + c, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
        }
        break;
    }
    for (; c < head_dim; ++c) row[c] = load_element(dtype, in, c);
    for (; c < dp; ++c) row[c] = 0.0f;
  }
}

// Rows this far ahead of the one being processed are requested from memory, a few lines per row
// processed: hardware prefetchers stop at page boundaries, and a burst of requests would stall the core
// on its fill buffers instead of overlapping with the arithmetic.
constexpr size_t kPrefetchRows = 16;

// Rows of weights the value loops take at a time (a tile of the attention kernels is at most 512).
constexpr size_t kStageRows = 512;

SH_AVX2 SH_INLINE void prefetch_span(const uint8_t* p, size_t bytes) {
  for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(reinterpret_cast<const char*>(p + b), _MM_HINT_T0);
}

// Eight elements of a stored row decoded to f32; the dtype is a template argument so that the hot loops
// carry no branch.
template <DType DT>
SH_AVX2 SH_INLINE __m256 load8(const uint8_t* row, size_t c) {
  if constexpr (DT == DType::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + c);
  } else if constexpr (DT == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c)));
  } else {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
}

// TB keys against GB queries: TB * GB accumulators stay in registers, each key vector is loaded (and
// decoded) once for all GB queries.
template <DType DT, int TB, int GB>
SH_AVX2 SH_INLINE void dot_block(const uint8_t* k, size_t row_bytes, const float* qs, size_t dp, float scale, float* s,
                                 size_t s_stride, float* max) {
  // acc[g * TB + t]: with TB * GB == 8 the sums of one query are adjacent lanes after hsum8.
  __m256 acc[TB * GB];
  for (int i = 0; i < TB * GB; ++i) acc[i] = _mm256_setzero_ps();
  for (size_t c = 0; c < dp; c += 8) {
    __m256 qv[GB];
    for (int g = 0; g < GB; ++g) qv[g] = _mm256_load_ps(qs + g * dp + c);
    for (int t = 0; t < TB; ++t) {
      const __m256 kv = load8<DT>(k + t * row_bytes, c);
      for (int g = 0; g < GB; ++g) acc[g * TB + t] = _mm256_fmadd_ps(kv, qv[g], acc[g * TB + t]);
    }
  }
  if constexpr (TB * GB == 8) {
    alignas(32) float sums[8];
    _mm256_store_ps(sums, _mm256_mul_ps(_mm256_set1_ps(scale), hsum8(acc)));
    for (int g = 0; g < GB; ++g) {
      std::memcpy(s + g * s_stride, sums + g * TB, TB * sizeof(float));
      for (int t = 0; t < TB; ++t) max[g] = sums[g * TB + t] > max[g] ? sums[g * TB + t] : max[g];
    }
  } else {
    for (int g = 0; g < GB; ++g) {
      for (int t = 0; t < TB; ++t) {
        const float x = scale * hsum(acc[g * TB + t]);
        s[g * s_stride + t] = x;
        max[g] = x > max[g] ? x : max[g];
      }
    }
  }
}

template <DType DT, int TB, int GB>
SH_AVX2 SH_INLINE void dot_rows(const uint8_t* k, size_t row_bytes, size_t nt, const float* qs, size_t dp, float scale,
                                float* s, size_t s_stride, float* max) {
  size_t t = 0;
  for (; t + TB <= nt; t += TB) {
    prefetch_span(k + (t + kPrefetchRows) * row_bytes, TB * row_bytes);
    dot_block<DT, TB, GB>(k + t * row_bytes, row_bytes, qs, dp, scale, s + t, s_stride, max);
  }
  for (; t < nt; ++t) dot_block<DT, 1, GB>(k + t * row_bytes, row_bytes, qs, dp, scale, s + t, s_stride, max);
}

template <DType DT>
SH_AVX2 void dots_of(Rows k, size_t nt, const float* qs, size_t nq, size_t dp, float scale, float* s, size_t s_stride,
                     float* max) {
  const size_t rb = k.stride * bytes_per_element(DT);
  size_t q = 0;
  for (; q + 4 <= nq; q += 4) dot_rows<DT, 2, 4>(k.data, rb, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q);
  switch (nq - q) {
    case 3: dot_rows<DT, 2, 3>(k.data, rb, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q); break;
    case 2: dot_rows<DT, 4, 2>(k.data, rb, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q); break;
    case 1: dot_rows<DT, 8, 1>(k.data, rb, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q); break;
    default: break;
  }
}

SH_AVX2 void dots(Rows k, size_t nt, const float* qs, size_t nq, size_t dp, float scale, float* s, size_t s_stride,
                  float* max) {
  switch (k.dtype) {
    case DType::F32: return dots_of<DType::F32>(k, nt, qs, nq, dp, scale, s, s_stride, max);
    case DType::F16: return dots_of<DType::F16>(k, nt, qs, nq, dp, scale, s, s_stride, max);
    case DType::BF16: return dots_of<DType::BF16>(k, nt, qs, nq, dp, scale, s, s_stride, max);
  }
}

// CB vectors of every value row times GB queries' probabilities: the GB * CB accumulators stay in
// registers across all nt rows, so each row's vectors are loaded (and decoded) once for the GB queries.
// Also requests `lines` lines of the next tile per row: passes over a tile touch its rows in several
// sweeps (one per CB vectors), and spreading the next tile's requests over all of them keeps memory
// busy while the later sweeps run from L1.
template <DType DT, int GB, int CB>
SH_AVX2 SH_INLINE void accumulate_block(const uint8_t* v, size_t row_bytes, size_t nt, const float* p, size_t p_stride,
                                        size_t dp, size_t c, const uint8_t* ahead, size_t ahead_bytes, size_t lines,
                                        float* acc) {
  __m256 a[GB][CB];
  for (int g = 0; g < GB; ++g) {
    for (int b = 0; b < CB; ++b) a[g][b] = _mm256_load_ps(acc + g * dp + c + 8 * b);
  }
  for (size_t t = 0; t < nt; ++t) {
    for (size_t l = t * lines * 64; l < (t + 1) * lines * 64 && l < ahead_bytes; l += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + l), _MM_HINT_T0);
    }
    __m256 x[CB];
    for (int b = 0; b < CB; ++b) x[b] = load8<DT>(v + t * row_bytes, c + 8 * b);
    for (int g = 0; g < GB; ++g) {
      const __m256 w = _mm256_broadcast_ss(p + g * p_stride + t);
      for (int b = 0; b < CB; ++b) a[g][b] = _mm256_fmadd_ps(w, x[b], a[g][b]);
    }
  }
  for (int g = 0; g < GB; ++g) {
    for (int b = 0; b < CB; ++b) _mm256_store_ps(acc + g * dp + c + 8 * b, a[g][b]);
  }
}

template <DType DT, int GB>
SH_AVX2 SH_INLINE void accumulate_queries(const uint8_t* v, size_t row_bytes, size_t nt, const float* p, size_t p_stride,
                                       size_t dp, float* acc) {
  // Each sweep over the rows requests its share of the next tile, `lines` lines per row.
  const size_t sweeps = (dp + 15) / 16;
  const size_t lines = (nt * row_bytes / 64 + sweeps * nt - 1) / (sweeps * nt);
  const uint8_t* next = v + nt * row_bytes;
  const size_t next_bytes = nt * row_bytes;
  const size_t share = nt * lines * 64;
  auto left = [&](size_t sweep) { return sweep * share < next_bytes ? next_bytes - sweep * share : 0; };
  size_t c = 0;
  size_t sweep = 0;
  for (; c + 16 <= dp; c += 16, ++sweep) {
    accumulate_block<DT, GB, 2>(v, row_bytes, nt, p, p_stride, dp, c, next + sweep * share, left(sweep), lines, acc);
  }
  if (c < dp) accumulate_block<DT, GB, 1>(v, row_bytes, nt, p, p_stride, dp, c, next + sweep * share, left(sweep), lines, acc);
}

// Copies the weights of up to 4 queries for m rows (p[g * p_stride + t]) to w[g * kStageRows + t], those
// below kWeightFloor as 0 (a NaN stays): the value loops then read them as they are.
SH_AVX2 SH_INLINE void stage_weights(const float* p, size_t p_stride, size_t queries, size_t m, float* w) {
  const __m256 floor = _mm256_set1_ps(kWeightFloor);
  for (size_t g = 0; g < queries; ++g) {
    size_t t = 0;
    for (; t + 8 <= m; t += 8) {
      const __m256 x = _mm256_loadu_ps(p + g * p_stride + t);
      _mm256_storeu_ps(w + g * kStageRows + t, _mm256_and_ps(x, _mm256_cmp_ps(x, floor, _CMP_NLT_UQ)));
    }
    for (; t < m; ++t) {
      const float x = p[g * p_stride + t];
      w[g * kStageRows + t] = x < kWeightFloor ? 0.0f : x;
    }
  }
}

template <DType DT>
SH_AVX2 void accumulate_of(Rows v, size_t nt, const float* p, size_t p_stride, size_t nq, size_t dp, float* acc) {
  const size_t rb = v.stride * bytes_per_element(DT);
  alignas(64) float w[4 * kStageRows];
  // One stage for a whole tile of the attention kernels (nt <= 512); longer calls go in stages.
  for (size_t t0 = 0; t0 < nt; t0 += kStageRows) {
    const size_t m = nt - t0 < kStageRows ? nt - t0 : kStageRows;
    const uint8_t* rows = v.data + t0 * rb;
    for (size_t q = 0; q < nq; q += 4) {
      const size_t queries = nq - q < 4 ? nq - q : 4;
      stage_weights(p + q * p_stride + t0, p_stride, queries, m, w);
      switch (queries) {
        case 4: accumulate_queries<DT, 4>(rows, rb, m, w, kStageRows, dp, acc + q * dp); break;
        case 3: accumulate_queries<DT, 3>(rows, rb, m, w, kStageRows, dp, acc + q * dp); break;
        case 2: accumulate_queries<DT, 2>(rows, rb, m, w, kStageRows, dp, acc + q * dp); break;
        default: accumulate_queries<DT, 1>(rows, rb, m, w, kStageRows, dp, acc + q * dp); break;
      }
    }
  }
}

SH_AVX2 void accumulate(Rows v, size_t nt, const float* p, size_t p_stride, size_t nq, size_t dp, float* acc) {
  switch (v.dtype) {
    case DType::F32: return accumulate_of<DType::F32>(v, nt, p, p_stride, nq, dp, acc);
    case DType::F16: return accumulate_of<DType::F16>(v, nt, p, p_stride, nq, dp, acc);
    case DType::BF16: return accumulate_of<DType::BF16>(v, nt, p, p_stride, nq, dp, acc);
  }
}

SH_AVX2 float exp_sum(float* s, size_t n, float max) {
  const size_t whole = n & ~static_cast<size_t>(7);
  const __m256 m = _mm256_set1_ps(max);
  __m256 sum = _mm256_setzero_ps();
  size_t j = 0;
  for (; j < whole; j += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + j), m));
    _mm256_storeu_ps(s + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (j < n) {
    // Masked-off lanes load 0 and would give exp(-max); the mask drops them from the sum.
    const __m256i mask = tail_mask(n - whole);
    const __m256 e = _mm256_and_ps(exp_nonpositive(_mm256_sub_ps(_mm256_maskload_ps(s + j, mask), m)),
                                   _mm256_castsi256_ps(mask));
    _mm256_maskstore_ps(s + j, mask, e);
    sum = _mm256_add_ps(sum, e);
  }
  return hsum(sum);
}

constexpr Primitives kAvx2{to_f32, dots, exp_sum, accumulate};

}  // namespace

const Primitives& avx2_primitives() { return kAvx2; }

}  // namespace sh::cpu
