// Group-wise quantisation (docs/packing.md): the arithmetic of one group, mirrored bit for bit by
// src/quant/format.ts, and the standalone packer over a [rows][cols] matrix.
//
// A group of values x in [min, max] is stored as an f16 zero point z (min rounded down to f16) and an f16
// scale s (f32(f32(max - z) / qmax) rounded up to f16, then raised until z + qmax * s >= max exactly);
// code = clamp(round_half_even(f32(f32(x - z) / s)), 0, qmax); value = f32(z + code * s) (the product is
// exact in f32, so a fused multiply-add gives the same bits).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "scissorhands/dtype.h"
#include "scissorhands/status.h"

namespace sh {

// Largest magnitude a packed group holds (finite f16 range).
constexpr float kPackLimit = 65504.0f;

inline uint16_t f16_up(uint16_t bits) {
  if (bits == 0x8000u) return 0x0001u;
  return (bits & 0x8000u) != 0 ? static_cast<uint16_t>(bits - 1) : static_cast<uint16_t>(bits + 1);
}

inline uint16_t f16_down(uint16_t bits) {
  if (bits == 0x0000u) return 0x8001u;
  return (bits & 0x8000u) != 0 ? static_cast<uint16_t>(bits + 1) : static_cast<uint16_t>(bits - 1);
}

// Largest f16 <= x (x finite, |x| <= 65504).
inline uint16_t f16_floor(float x) {
  const uint16_t bits = f32_to_f16(x);
  return f16_to_f32(bits) > x ? f16_down(bits) : bits;
}

// Smallest f16 >= x (x finite, |x| <= 65504).
inline uint16_t f16_ceil(float x) {
  const uint16_t bits = f32_to_f16(x);
  return f16_to_f32(bits) < x ? f16_up(bits) : bits;
}

struct GroupParams {
  uint16_t scale;
  uint16_t zero;
};

inline GroupParams group_parameters(float min, float max, uint32_t qmax) {
  // A zero of either sign counts as +0, so every implementation stores the same bits.
  if (min == 0.0f) min = 0.0f;
  if (max == 0.0f) max = 0.0f;
  const uint16_t zero = f16_floor(min);
  const float z = f16_to_f32(zero);
  const float diff = max - z;
  uint16_t scale = f16_ceil(diff / static_cast<float>(qmax));
  // Exact in double: an f16 plus a product of at most 19 significant bits.
  while (static_cast<double>(z) + static_cast<double>(qmax) * static_cast<double>(f16_to_f32(scale)) < static_cast<double>(max)) {
    scale = f16_up(scale);
  }
  return GroupParams{scale, zero};
}

// Non-negative t to the nearest integer, ties to even (independent of the FPU rounding mode).
inline float round_half_even(float t) {
  const float f = std::floor(t);
  const float r = t - f;
  if (r > 0.5f) return f + 1.0f;
  if (r < 0.5f) return f;
  return std::fmod(f, 2.0f) == 0.0f ? f : f + 1.0f;
}

inline uint32_t quantise_value(float x, float s, float z, uint32_t qmax) {
  if (s == 0.0f) return 0;
  const float t = (x - z) / s;
  const float code = round_half_even(t);
  if (!(code > 0.0f)) return 0;
  return code > static_cast<float>(qmax) ? qmax : static_cast<uint32_t>(code);
}

inline float dequantise_value(uint32_t code, float s, float z) { return z + static_cast<float>(code) * s; }

// True when x can be packed (finite, within the f16 range).
inline bool packable(float x) { return x >= -kPackLimit && x <= kPackLimit; }

inline uint32_t read_code(const uint8_t* codes, uint32_t bits, size_t i) {
  const size_t per_byte = 8 / bits;
  return (codes[i / per_byte] >> ((i % per_byte) * bits)) & ((1u << bits) - 1u);
}

inline void write_code(uint8_t* codes, uint32_t bits, size_t i, uint32_t code) {
  const size_t per_byte = 8 / bits;
  const uint32_t shift = static_cast<uint32_t>(i % per_byte) * bits;
  const uint32_t mask = ((1u << bits) - 1u) << shift;
  uint8_t& byte = codes[i / per_byte];
  byte = static_cast<uint8_t>((byte & ~mask) | ((code << shift) & mask));
}

namespace cpu {

// A matrix for the standalone packer: f32 values, or f16/bf16 bits.
struct Matrix {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
};

struct PackSpec {
  uint32_t bits = 4;
  // 1: a group is group_size consecutive elements of a row; 0: group_size consecutive rows of a column.
  int32_t axis = 1;
  int64_t group_size = 32;
};

// Quantises input ([rows][cols] of m.dtype) into codes (ceil(rows*cols*bits/8) bytes, zeroed by the
// caller), scales and zeros (rows*cols/group_size f16 each). Fails with Status::Argument (writing nothing
// the caller may rely on) and the index of the first element that is NaN, infinite or out of the f16
// range in *bad. `simd` selects the vector code where the shapes allow it (results are identical).
Status pack_matrix(const void* input, const Matrix& m, const PackSpec& spec, uint8_t* codes, uint16_t* scales,
                   uint16_t* zeros, int64_t* bad, bool simd);

// Dequantises into out ([rows][cols] of out_dtype: f32, or f16/bf16 bits rounded to nearest even).
void unpack_matrix(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros, const Matrix& m, const PackSpec& spec,
                   DType out_dtype, void* out, bool simd);

// Whether the AVX-512 packing code may run on this CPU.
bool pack_simd_available();

}  // namespace cpu
}  // namespace sh
