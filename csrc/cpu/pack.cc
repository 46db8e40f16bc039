// The standalone packer (docs/packing.md): group-wise quantisation of a [rows][cols] matrix, and back.
// A portable version handles every shape; AVX-512 versions handle the usual ones (groups of a multiple of
// 16 along rows, or a multiple of 16 columns for groups down columns) with the same arithmetic, so the
// results are identical bit for bit.
#include "avx512.h"

#include <algorithm>
#include <cstring>

#include "pack_simd.h"
#include "scissorhands/pack.h"

namespace sh::cpu {
namespace {

float element(const void* input, DType dtype, size_t i) {
  if (dtype == DType::F32) return static_cast<const float*>(input)[i];
  const uint16_t bits = static_cast<const uint16_t*>(input)[i];
  return dtype == DType::F16 ? f16_to_f32(bits) : bf16_to_f32(bits);
}

// min/max with +0 for a zero of either sign, so every implementation stores the same bits.
inline float canonical(float x) { return x == 0.0f ? 0.0f : x; }

int64_t first_bad(const void* input, DType dtype, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (!packable(element(input, dtype, i))) return static_cast<int64_t>(i);
  }
  return -1;
}

// Element index of member k of group g.
inline size_t member(const Matrix& m, const PackSpec& spec, size_t g, size_t k) {
  const size_t cols = static_cast<size_t>(m.cols);
  const size_t group = static_cast<size_t>(spec.group_size);
  if (spec.axis == 1) return g * group + k;
  return ((g / cols) * group + k) * cols + g % cols;
}

void pack_portable(const void* input, const Matrix& m, const PackSpec& spec, uint8_t* codes, uint16_t* scales,
                   uint16_t* zeros) {
  const uint32_t qmax = (1u << spec.bits) - 1u;
  const size_t group = static_cast<size_t>(spec.group_size);
  const size_t groups = static_cast<size_t>(m.rows * m.cols) / group;
  for (size_t g = 0; g < groups; ++g) {
    float min = element(input, m.dtype, member(m, spec, g, 0));
    float max = min;
    for (size_t k = 1; k < group; ++k) {
      const float x = element(input, m.dtype, member(m, spec, g, k));
      min = x < min ? x : min;
      max = x > max ? x : max;
    }
    const GroupParams p = group_parameters(canonical(min), canonical(max), qmax);
    scales[g] = p.scale;
    zeros[g] = p.zero;
    const float s = f16_to_f32(p.scale);
    const float z = f16_to_f32(p.zero);
    for (size_t k = 0; k < group; ++k) {
      const size_t i = member(m, spec, g, k);
      write_code(codes, spec.bits, i, quantise_value(element(input, m.dtype, i), s, z, qmax));
    }
  }
}

void store_value(void* out, DType dtype, size_t i, float x) {
  if (dtype == DType::F32) {
    static_cast<float*>(out)[i] = x;
  } else {
    static_cast<uint16_t*>(out)[i] = dtype == DType::F16 ? f32_to_f16(x) : f32_to_bf16(x);
  }
}

void unpack_portable(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros, const Matrix& m,
                     const PackSpec& spec, DType out_dtype, void* out) {
  const size_t group = static_cast<size_t>(spec.group_size);
  const size_t groups = static_cast<size_t>(m.rows * m.cols) / group;
  for (size_t g = 0; g < groups; ++g) {
    const float s = f16_to_f32(scales[g]);
    const float z = f16_to_f32(zeros[g]);
    for (size_t k = 0; k < group; ++k) {
      const size_t i = member(m, spec, g, k);
      store_value(out, out_dtype, i, dequantise_value(read_code(codes, spec.bits, i), s, z));
    }
  }
}

// ---- AVX-512 ------------------------------------------------------------------------------------

SH_AVX512 inline __m512 load16(const void* input, DType dtype, size_t i) {
  if (dtype == DType::F32) return _mm512_loadu_ps(static_cast<const float*>(input) + i);
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(input) + i));
  if (dtype == DType::F16) return _mm512_cvtph_ps(bits);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// Codes of 16 values: clamp(round_half_even((x - z) / s), 0, qmax), 0 where s is 0.
SH_AVX512 inline __m512i quantise16(__m512 x, __m512 s, __m512 z, __m512 qmax) {
  const __m512 t = _mm512_div_ps(_mm512_sub_ps(x, z), s);
  __m512 c = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  c = _mm512_min_ps(_mm512_max_ps(c, _mm512_setzero_ps()), qmax);
  const __mmask16 zero_scale = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_EQ_OQ);
  return _mm512_maskz_cvtps_epi32(static_cast<__mmask16>(~zero_scale), c);
}

// group_parameters for 16 groups at once, with the same bits: the directed roundings are the hardware's
// (f16 conversion toward -inf for the zero point, toward +inf for the scale), the covering check is
// exact in f64. Writes the f16 bits and returns the f32 scales and zero points.
SH_AVX512 void parameters16(__m512 vmin, __m512 vmax, uint32_t qmax, uint16_t* scales, uint16_t* zeros, __m512* s, __m512* z) {
  const __m512 zero = _mm512_setzero_ps();
  vmin = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(vmin, zero, _CMP_EQ_OQ), vmin, zero);
  vmax = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(vmax, zero, _CMP_EQ_OQ), vmax, zero);
  const __m256i zbits = _mm512_cvtps_ph(vmin, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 zv = _mm512_cvtph_ps(zbits);
  const __m512 q = _mm512_div_ps(_mm512_sub_ps(vmax, zv), _mm512_set1_ps(static_cast<float>(qmax)));
  // Scale bits as 32-bit lanes, so that one step up is an AVX-512F masked add.
  __m512i sbits = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(q, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC));
  const __m512d dq = _mm512_set1_pd(static_cast<double>(qmax));
  const __m512d zlo = _mm512_cvtps_pd(_mm512_castps512_ps256(zv));
  const __m512d zhi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(zv), 1)));
  const __m512d mlo = _mm512_cvtps_pd(_mm512_castps512_ps256(vmax));
  const __m512d mhi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(vmax), 1)));
  for (;;) {
    const __m512 sv = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(sbits));
    const __m512d slo = _mm512_cvtps_pd(_mm512_castps512_ps256(sv));
    const __m512d shi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sv), 1)));
    // z + qmax * s < max, exactly: the product is exact in f64 and so is the sum.
    const __mmask8 low = _mm512_cmp_pd_mask(_mm512_add_pd(zlo, _mm512_mul_pd(dq, slo)), mlo, _CMP_LT_OQ);
    const __mmask8 high = _mm512_cmp_pd_mask(_mm512_add_pd(zhi, _mm512_mul_pd(dq, shi)), mhi, _CMP_LT_OQ);
    const __mmask16 bump = static_cast<__mmask16>(low | (static_cast<unsigned>(high) << 8));
    if (bump == 0) {
      *s = sv;
      break;
    }
    // Scales are non-negative: the next f16 up is the next bit pattern.
    sbits = _mm512_mask_add_epi32(sbits, bump, sbits, _mm512_set1_epi32(1));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(scales), _mm512_cvtepi32_epi16(sbits));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(zeros), zbits);
  *z = zv;
}

SH_AVX512 bool all_packable(const void* input, DType dtype, size_t n) {
  const __m512 limit = _mm512_set1_ps(kPackLimit);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 a = _mm512_abs_ps(load16(input, dtype, i));
    if (_mm512_cmp_ps_mask(a, limit, _CMP_LE_OQ) != 0xffff) return false;
  }
  for (; i < n; ++i) {
    if (!packable(element(input, dtype, i))) return false;
  }
  return true;
}

SH_AVX512 void pack_rows_avx512(const void* input, const Matrix& m, const PackSpec& spec, uint8_t* codes, uint16_t* scales,
                                uint16_t* zeros) {
  const uint32_t qmax = (1u << spec.bits) - 1u;
  const __m512 vqmax = _mm512_set1_ps(static_cast<float>(qmax));
  const size_t group = static_cast<size_t>(spec.group_size);
  const size_t groups = static_cast<size_t>(m.rows * m.cols) / group;
  const size_t bytes16 = 2 * spec.bits;
  alignas(64) float mins[16];
  alignas(64) float maxs[16];
  alignas(64) float ss[16];
  alignas(64) float zs[16];
  for (size_t g0 = 0; g0 < groups; g0 += 16) {
    const size_t batch = groups - g0 < 16 ? groups - g0 : 16;
    for (size_t b = 0; b < batch; ++b) {
      const size_t first = (g0 + b) * group;
      __m512 vmin = load16(input, m.dtype, first);
      __m512 vmax = vmin;
      for (size_t k = 16; k < group; k += 16) {
        const __m512 x = load16(input, m.dtype, first + k);
        vmin = _mm512_min_ps(vmin, x);
        vmax = _mm512_max_ps(vmax, x);
      }
      mins[b] = _mm512_reduce_min_ps(vmin);
      maxs[b] = _mm512_reduce_max_ps(vmax);
    }
    if (batch == 16) {
      __m512 s;
      __m512 z;
      parameters16(_mm512_load_ps(mins), _mm512_load_ps(maxs), qmax, scales + g0, zeros + g0, &s, &z);
      _mm512_store_ps(ss, s);
      _mm512_store_ps(zs, z);
    } else {
      for (size_t b = 0; b < batch; ++b) {
        const GroupParams p = group_parameters(canonical(mins[b]), canonical(maxs[b]), qmax);
        scales[g0 + b] = p.scale;
        zeros[g0 + b] = p.zero;
        ss[b] = f16_to_f32(p.scale);
        zs[b] = f16_to_f32(p.zero);
      }
    }
    for (size_t b = 0; b < batch; ++b) {
      const size_t first = (g0 + b) * group;
      const __m512 s = _mm512_set1_ps(ss[b]);
      const __m512 z = _mm512_set1_ps(zs[b]);
      uint8_t* dst = codes + first * spec.bits / 8;
      for (size_t k = 0; k < group; k += 16, dst += bytes16) {
        store_codes16(quantise16(load16(input, m.dtype, first + k), s, z, vqmax), spec.bits, dst);
      }
    }
  }
}

SH_AVX512 void pack_columns_avx512(const void* input, const Matrix& m, const PackSpec& spec, uint8_t* codes,
                                   uint16_t* scales, uint16_t* zeros) {
  const uint32_t qmax = (1u << spec.bits) - 1u;
  const __m512 vqmax = _mm512_set1_ps(static_cast<float>(qmax));
  const size_t cols = static_cast<size_t>(m.cols);
  const size_t group = static_cast<size_t>(spec.group_size);
  const size_t blocks = static_cast<size_t>(m.rows) / group;
  for (size_t b = 0; b < blocks; ++b) {
    for (size_t c = 0; c < cols; c += 16) {
      const size_t top = b * group * cols + c;
      __m512 vmin = load16(input, m.dtype, top);
      __m512 vmax = vmin;
      for (size_t r = 1; r < group; ++r) {
        const __m512 x = load16(input, m.dtype, top + r * cols);
        vmin = _mm512_min_ps(vmin, x);
        vmax = _mm512_max_ps(vmax, x);
      }
      __m512 s;
      __m512 z;
      parameters16(vmin, vmax, qmax, scales + b * cols + c, zeros + b * cols + c, &s, &z);
      for (size_t r = 0; r < group; ++r) {
        const size_t at = top + r * cols;
        store_codes16(quantise16(load16(input, m.dtype, at), s, z, vqmax), spec.bits, codes + at * spec.bits / 8);
      }
    }
  }
}

SH_AVX512 inline void store16(void* out, DType dtype, size_t i, __m512 x) {
  if (dtype == DType::F32) {
    _mm512_storeu_ps(static_cast<float*>(out) + i, x);
  } else if (dtype == DType::F16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + i),
                        _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    alignas(64) float tmp[16];
    _mm512_store_ps(tmp, x);
    uint16_t* dst = static_cast<uint16_t*>(out) + i;
    for (int l = 0; l < 16; ++l) dst[l] = f32_to_bf16(tmp[l]);
  }
}

SH_AVX512 void unpack_rows_avx512(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros, const Matrix& m,
                                  const PackSpec& spec, DType out_dtype, void* out) {
  const size_t group = static_cast<size_t>(spec.group_size);
  const size_t groups = static_cast<size_t>(m.rows * m.cols) / group;
  const size_t bytes16 = 2 * spec.bits;
  for (size_t g = 0; g < groups; ++g) {
    const __m512 s = _mm512_set1_ps(f16_to_f32(scales[g]));
    const __m512 z = _mm512_set1_ps(f16_to_f32(zeros[g]));
    const uint8_t* src = codes + g * group * spec.bits / 8;
    for (size_t k = 0; k < group; k += 16, src += bytes16) {
      store16(out, out_dtype, g * group + k, dequantise16(load_codes16(src, spec.bits), s, z));
    }
  }
}

SH_AVX512 void unpack_columns_avx512(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros, const Matrix& m,
                                     const PackSpec& spec, DType out_dtype, void* out) {
  const size_t cols = static_cast<size_t>(m.cols);
  const size_t group = static_cast<size_t>(spec.group_size);
  const size_t rows = static_cast<size_t>(m.rows);
  for (size_t r = 0; r < rows; ++r) {
    const size_t b = r / group;
    for (size_t c = 0; c < cols; c += 16) {
      const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + b * cols + c)));
      const __m512 z = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(zeros + b * cols + c)));
      const size_t at = r * cols + c;
      store16(out, out_dtype, at, dequantise16(load_codes16(codes + at * spec.bits / 8, spec.bits), s, z));
    }
  }
}

bool rows_simd(const Matrix& m, const PackSpec& spec) {
  (void)m;
  return spec.axis == 1 && spec.group_size % 16 == 0;
}

bool columns_simd(const Matrix& m, const PackSpec& spec) { return spec.axis == 0 && m.cols % 16 == 0; }

}  // namespace

bool pack_simd_available() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

Status pack_matrix(const void* input, const Matrix& m, const PackSpec& spec, uint8_t* codes, uint16_t* scales,
                   uint16_t* zeros, int64_t* bad, bool simd) {
  if (spec.bits != 2 && spec.bits != 4 && spec.bits != 8) return Status::Argument;
  if (m.rows < 1 || m.cols < 1 || spec.group_size < 1) return Status::Argument;
  if ((spec.axis == 1 ? m.cols : m.rows) % spec.group_size != 0) return Status::Argument;
  const size_t n = static_cast<size_t>(m.rows * m.cols);
  const bool fast = simd && (rows_simd(m, spec) || columns_simd(m, spec));
  if (!(fast ? all_packable(input, m.dtype, n) : first_bad(input, m.dtype, n) < 0)) {
    *bad = first_bad(input, m.dtype, n);
    return Status::Argument;
  }
  *bad = -1;
  if (fast && rows_simd(m, spec)) {
    pack_rows_avx512(input, m, spec, codes, scales, zeros);
  } else if (fast) {
    pack_columns_avx512(input, m, spec, codes, scales, zeros);
  } else {
    pack_portable(input, m, spec, codes, scales, zeros);
  }
  return Status::Ok;
}

void unpack_matrix(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros, const Matrix& m, const PackSpec& spec,
                   DType out_dtype, void* out, bool simd) {
  if (simd && rows_simd(m, spec)) {
    unpack_rows_avx512(codes, scales, zeros, m, spec, out_dtype, out);
  } else if (simd && columns_simd(m, spec)) {
    unpack_columns_avx512(codes, scales, zeros, m, spec, out_dtype, out);
  } else {
    unpack_portable(codes, scales, zeros, m, spec, out_dtype, out);
  }
}

}  // namespace sh::cpu
