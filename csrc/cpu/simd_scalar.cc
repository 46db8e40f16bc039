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

void dots(const float* k, size_t nt, const float* qs, size_t nq, size_t dp, float scale, float* s, size_t s_stride) {
  for (size_t q = 0; q < nq; ++q) {
    const float* qv = qs + q * dp;
    for (size_t t = 0; t < nt; ++t) {
      const float* kv = k + t * dp;
      float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (size_t c = 0; c < dp; c += 8) {
        for (size_t l = 0; l < 8; ++l) lanes[l] += qv[c + l] * kv[c + l];
      }
      const float sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
      s[q * s_stride + t] = scale * sum;
    }
  }
}

void softmax(float* s, size_t n) {
  float max = s[0];
  for (size_t j = 1; j < n; ++j) max = s[j] > max ? s[j] : max;
  double sum = 0.0;
  for (size_t j = 0; j < n; ++j) {
    s[j] = std::exp(s[j] - max);
    sum += s[j];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (size_t j = 0; j < n; ++j) s[j] *= inv;
}

void accumulate(const float* v, size_t nt, const float* p, size_t dp, float* acc) {
  for (size_t t = 0; t < nt; ++t) {
    const float w = p[t];
    const float* row = v + t * dp;
    for (size_t c = 0; c < dp; ++c) acc[c] += w * row[c];
  }
}

constexpr Primitives kScalar{to_f32, dots, softmax, accumulate};

}  // namespace

const Primitives& scalar_primitives() { return kScalar; }

}  // namespace sh::cpu
