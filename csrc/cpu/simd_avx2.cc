// AVX2 + FMA + F16C attention primitives. Every function carries the target attribute instead of the
// file being built with -mavx2, so nothing compiled here (inline helpers from shared headers included)
// can leak AVX2 instructions into code that runs before the CPU check.
#include <immintrin.h>

#include "internal.h"

#define SH_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace sh::cpu {
namespace {

SH_AVX2 inline float hsum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// Lanes [0, n) set, for the ragged end of a row (n in 1..7).
SH_AVX2 inline __m256i tail_mask(size_t n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lanes);
}

// exp for x <= 0 (Cephes polynomial, about 1 ulp); underflows to exactly 0 below -87, keeps NaN.
SH_AVX2 inline __m256 exp_nonpositive(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
  // Operand order keeps a NaN x (min/max return their second operand on NaN).
  x = _mm256_max_ps(_mm256_set1_ps(-87.0f), _mm256_min_ps(_mm256_set1_ps(0.0f), x));
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
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
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

// TB keys against GB queries: TB * GB accumulators stay in registers, each key vector loaded once.
template <int TB, int GB>
SH_AVX2 inline void dot_block(const float* k, const float* qs, size_t dp, float scale, float* s, size_t s_stride) {
  __m256 acc[TB][GB];
  for (int t = 0; t < TB; ++t) {
    for (int g = 0; g < GB; ++g) acc[t][g] = _mm256_setzero_ps();
  }
  for (size_t c = 0; c < dp; c += 8) {
    __m256 qv[GB];
    for (int g = 0; g < GB; ++g) qv[g] = _mm256_load_ps(qs + g * dp + c);
    for (int t = 0; t < TB; ++t) {
      const __m256 kv = _mm256_loadu_ps(k + t * dp + c);
      for (int g = 0; g < GB; ++g) acc[t][g] = _mm256_fmadd_ps(kv, qv[g], acc[t][g]);
    }
  }
  for (int t = 0; t < TB; ++t) {
    for (int g = 0; g < GB; ++g) s[g * s_stride + t] = scale * hsum(acc[t][g]);
  }
}

template <int TB, int GB>
SH_AVX2 inline void dot_rows(const float* k, size_t nt, const float* qs, size_t dp, float scale, float* s,
                             size_t s_stride) {
  size_t t = 0;
  for (; t + TB <= nt; t += TB) dot_block<TB, GB>(k + t * dp, qs, dp, scale, s + t, s_stride);
  for (; t < nt; ++t) dot_block<1, GB>(k + t * dp, qs, dp, scale, s + t, s_stride);
}

SH_AVX2 void dots(const float* k, size_t nt, const float* qs, size_t nq, size_t dp, float scale, float* s,
                  size_t s_stride) {
  size_t q = 0;
  for (; q + 4 <= nq; q += 4) dot_rows<2, 4>(k, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride);
  switch (nq - q) {
    case 3: dot_rows<2, 3>(k, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride); break;
    case 2: dot_rows<4, 2>(k, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride); break;
    case 1: dot_rows<8, 1>(k, nt, qs + q * dp, dp, scale, s + q * s_stride, s_stride); break;
    default: break;
  }
}

SH_AVX2 void softmax(float* s, size_t n) {
  const size_t whole = n & ~static_cast<size_t>(7);
  const __m256i mask = tail_mask(n - whole);
  __m256 vmax = _mm256_set1_ps(s[0]);
  size_t j = 0;
  for (; j < whole; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + j));
  if (j < n) vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(vmax, _mm256_maskload_ps(s + j, mask), _mm256_castsi256_ps(mask)));
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  const __m256 max = _mm256_set1_ps(_mm_cvtss_f32(m));

  __m256 sum = _mm256_setzero_ps();
  for (j = 0; j < whole; j += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + j), max));
    _mm256_storeu_ps(s + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (j < n) {
    // Masked-off lanes load 0 and would give exp(-max); the mask drops them from the sum.
    const __m256 e = _mm256_and_ps(exp_nonpositive(_mm256_sub_ps(_mm256_maskload_ps(s + j, mask), max)),
                                   _mm256_castsi256_ps(mask));
    _mm256_maskstore_ps(s + j, mask, e);
    sum = _mm256_add_ps(sum, e);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / hsum(sum));
  for (j = 0; j < whole; j += 8) _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), inv));
  if (j < n) _mm256_maskstore_ps(s + j, mask, _mm256_mul_ps(_mm256_maskload_ps(s + j, mask), inv));
}

SH_AVX2 void accumulate(const float* v, size_t nt, const float* p, size_t dp, float* acc) {
  size_t t = 0;
  // Four tokens per pass over the accumulator: one load and one store of acc per four FMAs.
  for (; t + 4 <= nt; t += 4) {
    const __m256 p0 = _mm256_set1_ps(p[t]), p1 = _mm256_set1_ps(p[t + 1]);
    const __m256 p2 = _mm256_set1_ps(p[t + 2]), p3 = _mm256_set1_ps(p[t + 3]);
    const float* r = v + t * dp;
    for (size_t c = 0; c < dp; c += 8) {
      __m256 a = _mm256_load_ps(acc + c);
      a = _mm256_fmadd_ps(p0, _mm256_loadu_ps(r + c), a);
      a = _mm256_fmadd_ps(p1, _mm256_loadu_ps(r + dp + c), a);
      a = _mm256_fmadd_ps(p2, _mm256_loadu_ps(r + 2 * dp + c), a);
      a = _mm256_fmadd_ps(p3, _mm256_loadu_ps(r + 3 * dp + c), a);
      _mm256_store_ps(acc + c, a);
    }
  }
  for (; t < nt; ++t) {
    const __m256 w = _mm256_set1_ps(p[t]);
    const float* r = v + t * dp;
    for (size_t c = 0; c < dp; c += 8) _mm256_store_ps(acc + c, _mm256_fmadd_ps(w, _mm256_loadu_ps(r + c), _mm256_load_ps(acc + c)));
  }
}

constexpr Primitives kAvx2{to_f32, dots, softmax, accumulate};

}  // namespace

const Primitives& avx2_primitives() { return kAvx2; }

}  // namespace sh::cpu
