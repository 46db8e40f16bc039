// AVX-512 attention primitives: the AVX2 kernels' structure with 16-float vectors, which halves the
// instructions per element where decode is compute-bound (f16/bf16 storage, large GQA groups). Same
// target-attribute discipline as simd_avx2.cc. Rows are padded to 8 floats, so a row may end with half
// a vector: those 8 lanes are loaded zero-extended.
#include "avx512.h"

#include "internal.h"

// The block kernels must be inlined into their loops for their accumulators to stay in registers.
#define SH_INLINE inline __attribute__((always_inline))

namespace sh::cpu {
namespace {

// Rows this far ahead of the one being dotted are requested from memory (see simd_avx2.cc).
constexpr size_t kPrefetchRows = 16;

// Rows of weights the value loops take at a time (a tile of the attention kernels is at most 512).
constexpr size_t kStageRows = 512;

SH_AVX512 SH_INLINE void prefetch_span(const uint8_t* p, size_t bytes) {
  for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(reinterpret_cast<const char*>(p + b), _MM_HINT_T0);
}

// v[i] + v[i + 8], then the AVX2 kernels' tree over the 8 lanes: every dot product of one call is
// reduced in the same order, whichever block computed it (equal keys must tie exactly).
SH_AVX512 SH_INLINE __m256 fold(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

SH_AVX512 SH_INLINE float hsum(__m512 v) {
  const __m256 f = fold(v);
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(f, f), _mm256_hadd_ps(f, f));
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

// [sum(x[0]), ..., sum(x[7])], in the same tree as hsum.
SH_AVX512 SH_INLINE __m256 hsum8(const __m512* x) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(fold(x[0]), fold(x[1])), _mm256_hadd_ps(fold(x[2]), fold(x[3])));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(fold(x[4]), fold(x[5])), _mm256_hadd_ps(fold(x[6]), fold(x[7])));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// exp for x <= 0 (the AVX2 kernels' polynomial and scaling), down through the subnormals; exactly 0
// below kExpFloor, keeps NaN.
SH_AVX512 SH_INLINE __m512 exp_nonpositive(__m512 x) {
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpFloor), _CMP_LT_OQ);
  x = _mm512_max_ps(_mm512_set1_ps(kExpFloor), _mm512_min_ps(_mm512_set1_ps(0.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), x);
  y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
  // y * 2^n rounded once, to nearest even, subnormal results included: the same bits as the AVX2 path's
  // product and integer conversion (simd_avx2.cc), in one instruction.
  return _mm512_maskz_scalef_ps(static_cast<__mmask16>(~underflow), y, n);
}

// Sixteen elements of a stored row decoded to f32 (HALF: eight, the upper lanes zero).
template <DType DT, bool HALF>
SH_AVX512 SH_INLINE __m512 load16(const uint8_t* row, size_t c) {
  if constexpr (DT == DType::F32) {
    return _mm512_maskz_loadu_ps(HALF ? 0x00ff : 0xffff, reinterpret_cast<const float*>(row) + c);
  } else {
    const __m256i bits = HALF ? _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c)))
                              : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c));
    if constexpr (DT == DType::F16) {
      return _mm512_cvtph_ps(bits);
    } else {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
    }
  }
}

template <DType DT, int TB, int GB, bool HALF>
SH_AVX512 SH_INLINE void dot_step(const uint8_t* k, size_t row_bytes, const float* qs, size_t dp, size_t c, __m512* acc) {
  __m512 qv[GB];
  for (int g = 0; g < GB; ++g) qv[g] = _mm512_maskz_loadu_ps(HALF ? 0x00ff : 0xffff, qs + g * dp + c);
  for (int t = 0; t < TB; ++t) {
    const __m512 kv = load16<DT, HALF>(k + t * row_bytes, c);
    for (int g = 0; g < GB; ++g) acc[g * TB + t] = _mm512_fmadd_ps(kv, qv[g], acc[g * TB + t]);
  }
}

// TB keys against GB queries, TB * GB accumulators in registers (see simd_avx2.cc).
template <DType DT, int TB, int GB>
SH_AVX512 SH_INLINE void dot_block(const uint8_t* k, size_t row_bytes, const float* qs, size_t dp, float scale, float* s,
                                   size_t s_stride, float* max) {
  __m512 acc[TB * GB];
  for (int i = 0; i < TB * GB; ++i) acc[i] = _mm512_setzero_ps();
  size_t c = 0;
  for (; c + 16 <= dp; c += 16) dot_step<DT, TB, GB, false>(k, row_bytes, qs, dp, c, acc);
  if (c < dp) dot_step<DT, TB, GB, true>(k, row_bytes, qs, dp, c, acc);
  float sums[TB * GB];
  int i = 0;
  for (; i + 8 <= TB * GB; i += 8) _mm256_storeu_ps(sums + i, _mm256_mul_ps(_mm256_set1_ps(scale), hsum8(acc + i)));
  for (; i < TB * GB; ++i) sums[i] = scale * hsum(acc[i]);
  for (int g = 0; g < GB; ++g) {
    for (int t = 0; t < TB; ++t) {
      s[g * s_stride + t] = sums[g * TB + t];
      max[g] = sums[g * TB + t] > max[g] ? sums[g * TB + t] : max[g];
    }
  }
}

template <DType DT, int TB, int GB>
SH_AVX512 SH_INLINE void dot_rows(const uint8_t* k, size_t row_bytes, size_t nt, const float* qs, size_t dp,
                                  float scale, float* s, size_t s_stride, float* max) {
  size_t t = 0;
  for (; t + TB <= nt; t += TB) {
    prefetch_span(k + (t + kPrefetchRows) * row_bytes, TB * row_bytes);
    dot_block<DT, TB, GB>(k + t * row_bytes, row_bytes, qs, dp, scale, s + t, s_stride, max);
  }
  for (; t < nt; ++t) dot_block<DT, 1, GB>(k + t * row_bytes, row_bytes, qs, dp, scale, s + t, s_stride, max);
}

template <DType DT>
SH_AVX512 void dots_of(Rows k, size_t nt, const float* qs, size_t nq, size_t dp, float scale, float* s, size_t s_stride,
                       float* max) {
  const size_t rb = k.stride * bytes_per_element(DT);
  size_t q = 0;
  for (; q + 4 <= nq; q += 4) dot_rows<DT, 4, 4>(k.data, rb, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q);
  switch (nq - q) {
    case 3: dot_rows<DT, 4, 3>(k.data, rb, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q); break;
    case 2: dot_rows<DT, 8, 2>(k.data, rb, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q); break;
    case 1: dot_rows<DT, 8, 1>(k.data, rb, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q); break;
    default: break;
  }
}

SH_AVX512 void dots(Rows k, size_t nt, const float* qs, size_t nq, size_t dp, float scale, float* s, size_t s_stride,
                    float* max) {
  switch (k.dtype) {
    case DType::F32: return dots_of<DType::F32>(k, nt, qs, nq, dp, scale, s, s_stride, max);
    case DType::F16: return dots_of<DType::F16>(k, nt, qs, nq, dp, scale, s, s_stride, max);
    case DType::BF16: return dots_of<DType::BF16>(k, nt, qs, nq, dp, scale, s, s_stride, max);
  }
}

// CB vectors (HALF: one half vector) of every value row times GB queries' weights, accumulators in
// registers across the rows; also requests `lines` lines of the next tile per row (see simd_avx2.cc).
template <DType DT, int GB, int CB, bool HALF>
SH_AVX512 SH_INLINE void accumulate_block(const uint8_t* v, size_t row_bytes, size_t nt, const float* p,
                                          size_t p_stride, size_t dp, size_t c, const uint8_t* ahead,
                                          size_t ahead_bytes, size_t lines, float* acc) {
  constexpr __mmask16 lanes = HALF ? 0x00ff : 0xffff;
  __m512 a[GB][CB];
  for (int g = 0; g < GB; ++g) {
    for (int b = 0; b < CB; ++b) a[g][b] = _mm512_maskz_loadu_ps(lanes, acc + g * dp + c + 16 * b);
  }
  for (size_t t = 0; t < nt; ++t) {
    for (size_t l = t * lines * 64; l < (t + 1) * lines * 64 && l < ahead_bytes; l += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + l), _MM_HINT_T0);
    }
    __m512 x[CB];
    for (int b = 0; b < CB; ++b) x[b] = load16<DT, HALF>(v + t * row_bytes, c + 16 * b);
    for (int g = 0; g < GB; ++g) {
      const __m512 w = _mm512_set1_ps(p[g * p_stride + t]);
      for (int b = 0; b < CB; ++b) a[g][b] = _mm512_fmadd_ps(w, x[b], a[g][b]);
    }
  }
  for (int g = 0; g < GB; ++g) {
    for (int b = 0; b < CB; ++b) _mm512_mask_storeu_ps(acc + g * dp + c + 16 * b, lanes, a[g][b]);
  }
}

template <DType DT, int GB>
SH_AVX512 SH_INLINE void accumulate_queries(const uint8_t* v, size_t row_bytes, size_t nt, const float* p,
                                            size_t p_stride, size_t dp, float* acc) {
  // Each sweep over the rows requests its share of the next tile, `lines` lines per row.
  const size_t sweeps = dp / 64 + (dp % 64) / 16 + (dp % 16 != 0 ? 1 : 0);
  const size_t lines = (nt * row_bytes / 64 + sweeps * nt - 1) / (sweeps * nt);
  const uint8_t* next = v + nt * row_bytes;
  const size_t next_bytes = nt * row_bytes;
  const size_t share = nt * lines * 64;
  auto left = [&](size_t sweep) { return sweep * share < next_bytes ? next_bytes - sweep * share : 0; };
  size_t c = 0;
  size_t sweep = 0;
  for (; c + 64 <= dp; c += 64, ++sweep) {
    accumulate_block<DT, GB, 4, false>(v, row_bytes, nt, p, p_stride, dp, c, next + sweep * share, left(sweep), lines, acc);
  }
  for (; c + 16 <= dp; c += 16, ++sweep) {
    accumulate_block<DT, GB, 1, false>(v, row_bytes, nt, p, p_stride, dp, c, next + sweep * share, left(sweep), lines, acc);
  }
  if (c < dp) {
    accumulate_block<DT, GB, 1, true>(v, row_bytes, nt, p, p_stride, dp, c, next + sweep * share, left(sweep), lines, acc);
  }
}

// Copies the weights of up to 4 queries for m rows (p[g * p_stride + t]) to w[g * kStageRows + t], those
// below kWeightFloor as 0 (a NaN stays): the value loops then read them as they are.
SH_AVX512 SH_INLINE void stage_weights(const float* p, size_t p_stride, size_t queries, size_t m, float* w) {
  const __m512 floor = _mm512_set1_ps(kWeightFloor);
  for (size_t g = 0; g < queries; ++g) {
    for (size_t t = 0; t < m; t += 16) {
      const __mmask16 lanes = m - t >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (m - t)) - 1);
      const __m512 x = _mm512_maskz_loadu_ps(lanes, p + g * p_stride + t);
      _mm512_mask_storeu_ps(w + g * kStageRows + t, lanes, _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, floor, _CMP_NLT_UQ), x));
    }
  }
}

template <DType DT>
SH_AVX512 void accumulate_of(Rows v, size_t nt, const float* p, size_t p_stride, size_t nq, size_t dp, float* acc) {
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

SH_AVX512 void accumulate(Rows v, size_t nt, const float* p, size_t p_stride, size_t nq, size_t dp, float* acc) {
  switch (v.dtype) {
    case DType::F32: return accumulate_of<DType::F32>(v, nt, p, p_stride, nq, dp, acc);
    case DType::F16: return accumulate_of<DType::F16>(v, nt, p, p_stride, nq, dp, acc);
    case DType::BF16: return accumulate_of<DType::BF16>(v, nt, p, p_stride, nq, dp, acc);
  }
}

SH_AVX512 float exp_sum(float* s, size_t n, float max) {
  const __m512 m = _mm512_set1_ps(max);
  __m512 sum = _mm512_setzero_ps();
  size_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + j), m));
    _mm512_storeu_ps(s + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (j < n) {
    const __mmask16 lanes = static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m512 e = _mm512_maskz_mov_ps(lanes, exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, s + j), m)));
    _mm512_mask_storeu_ps(s + j, lanes, e);
    sum = _mm512_add_ps(sum, e);
  }
  return hsum(sum);
}

}  // namespace

const Primitives& avx512_primitives() {
  // Rows of an odd head size are rare enough to share the AVX2 decoder.
  static const Primitives table{avx2_primitives().to_f32, dots, exp_sum, accumulate};
  return table;
}

}  // namespace sh::cpu
