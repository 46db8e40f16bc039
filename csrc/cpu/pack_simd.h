// AVX-512 helpers shared by the packer and the packed attention kernel: sixteen codes to and from their
// bytes (docs/packing.md: code i of a run at bits (i mod k) * bits of byte i / k, low bits first), and
// their values. Include only from files compiled for x86-64; every function carries its target attribute.
#pragma once

#include "avx512.h"

#include <cstdint>
#include <cstring>

namespace sh::cpu {

#define SH_PACK_AVX512 __attribute__((target("avx512f,avx2,fma,f16c"), always_inline)) inline

// Sixteen codes (2 * bits bytes from src) as 32-bit integers.
SH_PACK_AVX512 __m512i load_codes16(const uint8_t* src, uint32_t bits) {
  if (bits == 8) return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  if (bits == 4) {
    uint64_t w;
    std::memcpy(&w, src, 8);
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i shifts = _mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512i v = _mm512_permutexvar_epi32(idx, _mm512_set1_epi64(static_cast<long long>(w)));
    return _mm512_and_si512(_mm512_srlv_epi32(v, shifts), _mm512_set1_epi32(0xf));
  }
  uint32_t w;
  std::memcpy(&w, src, 4);
  const __m512i shifts = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  return _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(w)), shifts), _mm512_set1_epi32(3));
}

// Stores sixteen codes (32-bit integers <= 2^bits - 1) as 2 * bits bytes at dst.
SH_PACK_AVX512 void store_codes16(__m512i codes, uint32_t bits, uint8_t* dst) {
  const __m128i b = _mm512_cvtepi32_epi8(codes);
  if (bits == 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), b);
    return;
  }
  if (bits == 4) {
    const __m128i lo = _mm_and_si128(b, _mm_set1_epi16(0x00ff));
    const __m128i hi = _mm_srli_epi16(b, 8);
    const __m128i w = _mm_or_si128(lo, _mm_slli_epi16(hi, 4));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_packus_epi16(w, w));
    return;
  }
  // b0 + 4 b1 per 16-bit pair, then (b0 + 4 b1) + 16 (b2 + 4 b3) per 32-bit word.
  const __m128i pairs = _mm_maddubs_epi16(b, _mm_set1_epi16(0x0401));
  const __m128i quads = _mm_madd_epi16(pairs, _mm_set1_epi32(0x00100001));
  const __m128i words = _mm_packus_epi32(quads, quads);
  const int packed = _mm_cvtsi128_si32(_mm_packus_epi16(words, words));
  std::memcpy(dst, &packed, 4);
}

// z + code * s: the product is exact in f32, so the fused form rounds exactly as the portable one.
SH_PACK_AVX512 __m512 dequantise16(__m512i codes, __m512 s, __m512 z) {
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(codes), s, z);
}

}  // namespace sh::cpu
