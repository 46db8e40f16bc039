// Portable attention primitives for CPUs without AVX2/FMA/F16C. Plain loops written so that the
// compiler can vectorise them with the baseline instruction set (eight independent partial sums).
#include <cmath>

#include "internal.h"

namespace sh::cpu {
namespace {

void to_f32(DType dtype, const uint8_t* src, size_t count, size_t head_dim, size_t dp, float* dst) {
  for (size_t r = 0; r < count; ++r) {
    float* row = dst + r * dp;
    for (size_t c = 0; c < head_dim; ++c) row[c] = load_element(dtype, src, r * head_dim + c);
    for (size_t c = head_dim; c < dp; ++c) row[c] = 0.0f;
  }
}

// Row t of `rows` decoded into dp floats.
void decode_row(Rows rows, size_t t, size_t dp, float* out) {
  if (rows.dtype == DType::F32) {
    const float* row = reinterpret_cast<const float*>(rows.data) + t * rows.stride;
    for (size_t c = 0; c < dp; ++c) out[c] = row[c];
    return;
  }
  for (size_t c = 0; c < dp; ++c) out[c] = load_element(rows.dtype, rows.data, t * rows.stride + c);
}

void dots(Rows k, size_t nt, const float* qs, size_t nq, size_t dp, float scale, float* s, size_t s_stride,
          float* max) {
  float key[kMaxHeadDim];
  for (size_t t = 0; t < nt; ++t) {
    decode_row(k, t, dp, key);
    for (size_t q = 0; q < nq; ++q) {
      const float* qv = qs + q * dp;
      float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (size_t c = 0; c < dp; c += 8) {
        for (size_t l = 0; l < 8; ++l) lanes[l] += qv[c + l] * key[c + l];
      }
      const float sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
      s[q * s_stride + t] = scale * sum;
      if (scale * sum > max[q]) max[q] = scale * sum;
    }
  }
}

float exp_sum(float* s, size_t n, float max) {
  float sum = 0.0f;
  for (size_t j = 0; j < n; ++j) {
    // Underflows through the subnormals to 0, as exp does.
    s[j] = std::exp(s[j] - max);
    sum += s[j];
  }
  return sum;
}

void accumulate(Rows v, size_t nt, const float* p, size_t p_stride, size_t nq, size_t dp, float* acc) {
  float value[kMaxHeadDim];
  for (size_t t = 0; t < nt; ++t) {
    decode_row(v, t, dp, value);
    for (size_t q = 0; q < nq; ++q) {
      const float w = p[q * p_stride + t] < kWeightFloor ? 0.0f : p[q * p_stride + t];
      float* a = acc + q * dp;
      for (size_t c = 0; c < dp; ++c) a[c] += w * value[c];
    }
  }
}

constexpr Primitives kScalar{to_f32, dots, exp_sum, accumulate};

}  // namespace

const Primitives& scalar_primitives() { return kScalar; }

}  // namespace sh::cpu
