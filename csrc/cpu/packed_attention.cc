// Decode and prefill attention over a packed store (docs/semantics.md, docs/packing.md), with the tracker
// fed in the same pass. The structure is that of attention.cc: work per KV head, so every code is read
// once for all the queries of its group. With AVX-512 the codes are turned into floats in registers and
// used at once (keys scored 16 tokens at a time against queries scaled by their run's scales, values
// summed with their group's dequantised values looked up by code); otherwise each tile of keys (then of
// values) is dequantised into an f32 tile that stays in L1 and the dense dot-product and accumulation
// primitives run over it. The residual window's rows always go through those primitives. No dequantised
// copy of the cache is ever made: the memory traffic is the codes, scales and zero points.
#include "avx512.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "internal.h"
#include "pack_simd.h"
#include "scissorhands/pack.h"
#include "scissorhands/packed.h"

namespace sh::cpu {
namespace {

struct Plan {
  const PackedView* view;
  const AttentionArgs* args;
  const TrackerSpec* tracker;
  const Primitives* prims;
  size_t group;
  size_t dp;
  size_t tile_tokens;
  // Fused: packed tokens per pass of the key and value kernels, so that their fixed costs per call (value
  // scales and zero points converted to f32, accumulators loaded and stored) are paid once per many tokens;
  // the residual window still goes a tile at a time.
  size_t chunk_tokens;
  size_t block_rows;
  size_t s_stride;
  uint64_t first_step;
  // AVX-512 dequantisation of key rows (head_dim a multiple of 16) and of value rows (groups too).
  bool simd_keys;
  bool simd_values;
  // Both: codes are dequantised in registers inside the dot products and value sums (no f32 tile).
  bool fused;
  // Fused, and the head size a multiple of 16 * 8 / bits channels (16 bytes of codes): keys are scored
  // 16 tokens at once (token lanes), values are unpacked a 16-byte block at a time (split order).
  bool split;
};

struct Scratch {
  float* q;
  float* acc;
  float* max;
  float* inv;
  float* s;
  float* tile;
  // The current key run's per-channel scales and zero points, as f32.
  float* run_scales;
  float* run_zeros;
  // Plan::split: the queries four by four, interleaved 16 channels at a time (channels c .. c + 15 of
  // query 4i + g at 4 * (i * d + c) + 16 * g, c a multiple of 16), the same scaled by the current key run's
  // scales, their dots with its zero points, and the value sums of packed tokens (split order).
  float* q4;
  float* q_run;
  float* q_zero;
  float* acc_split;
  // Plan::split: each query's largest packed score so far per token lane (16 floats a query), folded
  // into max once the keys are done rather than after every 16 tokens.
  float* lane_max;
};

size_t scratch_floats(const Plan& plan) {
  const size_t queries = plan.block_rows * plan.group;
  return queries * (3 * plan.dp + plan.s_stride + 16) + 2 * round_up(queries, 4) * plan.dp + 3 * round_up(queries, 16) +
         plan.tile_tokens * plan.dp + 2 * plan.dp;
}

Scratch carve(const Plan& plan, float* base) {
  const size_t queries = plan.block_rows * plan.group;
  Scratch sc{};
  sc.q = base;
  sc.acc = sc.q + queries * plan.dp;
  sc.max = sc.acc + queries * plan.dp;
  sc.inv = sc.max + round_up(queries, 16);
  sc.s = sc.inv + round_up(queries, 16);
  sc.tile = sc.s + queries * plan.s_stride;
  sc.run_scales = sc.tile + plan.tile_tokens * plan.dp;
  sc.run_zeros = sc.run_scales + plan.dp;
  sc.q4 = sc.run_zeros + plan.dp;
  sc.q_run = sc.q4 + round_up(queries, 4) * plan.dp;
  sc.q_zero = sc.q_run + round_up(queries, 4) * plan.dp;
  sc.acc_split = sc.q_zero + round_up(queries, 16);
  sc.lane_max = sc.acc_split + queries * plan.dp;
  return sc;
}

// Tokens ahead whose codes are requested from memory while a tile is dequantised: the hardware
// prefetcher alone leaves these streams latency-bound on this class of machine, as it does dense rows
// (see simd_avx2.cc).
constexpr size_t kPrefetchTokens = 48;
// Runs ahead whose key scales and zero points are requested while a run is scored: each run's 4 * d bytes
// are read once, at its start, too sparse a stream for the hardware prefetcher to run ahead of, and over a
// cache larger than the last-level cache each of those reads otherwise waits for memory.
constexpr size_t kPrefetchRuns = 4;

// Value groups (tokens x groups per token) whose f32 scales and zero points one pass of the fused value
// kernels holds: Plan::chunk_tokens is this over the groups per token (at least 16: d <= 512, g >= 8).
constexpr size_t kChunkGroups = 1024;

SH_AVX512 inline void prefetch_token(const uint8_t* p, size_t cb) {
  for (size_t b = 0; b < cb; b += 64) _mm_prefetch(reinterpret_cast<const char*>(p + b), _MM_HINT_T0);
}

// Keys of n consecutive tokens of one run (codes token-major, cb bytes apart) into f32 rows dp apart: each
// 16-channel slice of the run's scales and zero points is loaded once for every token of the tile.
template <uint32_t BITS>
SH_AVX512 void key_rows_of(const uint8_t* codes, size_t cb, size_t n, const float* s, const float* z, size_t d, size_t dp,
                           float* dst) {
  for (size_t t = 0; t < n; ++t) prefetch_token(codes + (t + kPrefetchTokens) * cb, cb);
  for (size_t c = 0; c < d; c += 16) {
    const __m512 sv = _mm512_loadu_ps(s + c);
    const __m512 zv = _mm512_loadu_ps(z + c);
    const uint8_t* src = codes + c * BITS / 8;
    float* out = dst + c;
    for (size_t t = 0; t < n; ++t, src += cb, out += dp) _mm512_storeu_ps(out, dequantise16(load_codes16(src, BITS), sv, zv));
  }
}

SH_AVX512 void key_rows_avx512(const uint8_t* codes, size_t cb, size_t n, uint32_t bits, const float* s, const float* z, size_t d,
                               size_t dp, float* dst) {
  switch (bits) {
    case 2: return key_rows_of<2>(codes, cb, n, s, z, d, dp, dst);
    case 4: return key_rows_of<4>(codes, cb, n, s, z, d, dp, dst);
    default: return key_rows_of<8>(codes, cb, n, s, z, d, dp, dst);
  }
}

// The f16 scales and zero points of a run (d channels) as f32.
SH_AVX512 void run_parameters_avx512(const uint16_t* scales, const uint16_t* zeros, size_t d, float* s, float* z) {
  for (size_t c = 0; c < d; c += 16) {
    _mm512_storeu_ps(s + c, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + c))));
    _mm512_storeu_ps(z + c, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(zeros + c))));
  }
}

// Values of n consecutive tokens (codes cb bytes apart, `groups` f16 scales and zero points per token,
// consecutive for consecutive tokens): the tile's scales and zero points are converted to f32 at once.
template <uint32_t BITS>
SH_AVX512 void value_rows_of(const uint8_t* codes, size_t cb, const uint16_t* scales, const uint16_t* zeros, size_t groups,
                             size_t n, size_t d, size_t g, size_t dp, float* dst) {
  // n * groups <= (4096 / dp) * (d / g) <= 512: a tile's worth (see Plan::tile_tokens, g >= 8).
  alignas(64) float s[kTileFloats / 8 + 16];
  alignas(64) float z[kTileFloats / 8 + 16];
  const size_t count = n * groups;
  for (size_t b = 0; b < count * 2; b += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(scales + kPrefetchTokens * groups) + b, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(zeros + kPrefetchTokens * groups) + b, _MM_HINT_T0);
  }
  size_t k = 0;
  for (; k + 16 <= count; k += 16) {
    _mm512_store_ps(s + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + k))));
    _mm512_store_ps(z + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(zeros + k))));
  }
  for (; k < count; ++k) {
    s[k] = f16_to_f32(scales[k]);
    z[k] = f16_to_f32(zeros[k]);
  }
  const float* sp = s;
  const float* zp = z;
  for (size_t t = 0; t < n; ++t, codes += cb, dst += dp) {
    prefetch_token(codes + kPrefetchTokens * cb, cb);
    for (size_t c0 = 0; c0 < d; c0 += g, ++sp, ++zp) {
      const __m512 sv = _mm512_set1_ps(*sp);
      const __m512 zv = _mm512_set1_ps(*zp);
      for (size_t c = c0; c < c0 + g; c += 16) _mm512_storeu_ps(dst + c, dequantise16(load_codes16(codes + c * BITS / 8, BITS), sv, zv));
    }
  }
}

SH_AVX512 void value_rows_avx512(const uint8_t* codes, size_t cb, const uint16_t* scales, const uint16_t* zeros, size_t groups,
                                 size_t n, uint32_t bits, size_t d, size_t g, size_t dp, float* dst) {
  switch (bits) {
    case 2: return value_rows_of<2>(codes, cb, scales, zeros, groups, n, d, g, dp, dst);
    case 4: return value_rows_of<4>(codes, cb, scales, zeros, groups, n, d, g, dp, dst);
    default: return value_rows_of<8>(codes, cb, scales, zeros, groups, n, d, g, dp, dst);
  }
}

// ---- Fused AVX-512 kernels (head sizes multiples of 16): codes are dequantised in registers and used at
// once, with no f32 tile in between.

#define SH_INLINE inline __attribute__((always_inline))

// The dense kernels' horizontal sum (simd_avx512.cc): where keys are scored one token at a time (head sizes
// that are not a multiple of 128 / bits), they are reduced in the dense order, so equal keys tie exactly.
SH_AVX512 SH_INLINE float hsum(__m512 v) {
  const __m256 f = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(f, f), _mm256_hadd_ps(f, f));
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

// Scores of TB tokens (codes cb bytes apart) against GB queries (dp floats apart), one run's f32 scales
// and zero points: s[g * s_stride + t] = scale * dot(q_g, z + code_t * s); raises max[g].
template <uint32_t BITS, int TB, int GB>
SH_AVX512 SH_INLINE void key_block(const uint8_t* codes, size_t cb, const float* sc, const float* zc, size_t d, const float* qs,
                                   size_t dp, float scale, float* s, size_t s_stride, float* max) {
  __m512 acc[TB * GB];
  for (int i = 0; i < TB * GB; ++i) acc[i] = _mm512_setzero_ps();
  for (size_t c = 0; c < d; c += 16) {
    const __m512 sv = _mm512_loadu_ps(sc + c);
    const __m512 zv = _mm512_loadu_ps(zc + c);
    __m512 qv[GB];
    for (int g = 0; g < GB; ++g) qv[g] = _mm512_loadu_ps(qs + static_cast<size_t>(g) * dp + c);
    for (int t = 0; t < TB; ++t) {
      const __m512 x = dequantise16(load_codes16(codes + static_cast<size_t>(t) * cb + c * BITS / 8, BITS), sv, zv);
      for (int g = 0; g < GB; ++g) acc[g * TB + t] = _mm512_fmadd_ps(x, qv[g], acc[g * TB + t]);
    }
  }
  for (int g = 0; g < GB; ++g) {
    for (int t = 0; t < TB; ++t) {
      const float v = scale * hsum(acc[g * TB + t]);
      s[static_cast<size_t>(g) * s_stride + static_cast<size_t>(t)] = v;
      max[g] = v > max[g] ? v : max[g];
    }
  }
}

template <uint32_t BITS, int GB>
SH_AVX512 SH_INLINE void key_tokens(const uint8_t* codes, size_t cb, size_t n, const float* sc, const float* zc, size_t d,
                                    const float* qs, size_t dp, float scale, float* s, size_t s_stride, float* max) {
  size_t t = 0;
  for (; t + 4 <= n; t += 4) {
    prefetch_token(codes + (t + kPrefetchTokens) * cb, 4 * cb);
    key_block<BITS, 4, GB>(codes + t * cb, cb, sc, zc, d, qs, dp, scale, s + t, s_stride, max);
  }
  for (; t < n; ++t) key_block<BITS, 1, GB>(codes + t * cb, cb, sc, zc, d, qs, dp, scale, s + t, s_stride, max);
}

template <uint32_t BITS>
SH_AVX512 void key_scores_of(const uint8_t* codes, size_t cb, size_t n, const float* sc, const float* zc, size_t d, const float* qs,
                             size_t nq, size_t dp, float scale, float* s, size_t s_stride, float* max) {
  size_t q = 0;
  for (; q + 4 <= nq; q += 4) key_tokens<BITS, 4>(codes, cb, n, sc, zc, d, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q);
  switch (nq - q) {
    case 3: key_tokens<BITS, 3>(codes, cb, n, sc, zc, d, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q); break;
    case 2: key_tokens<BITS, 2>(codes, cb, n, sc, zc, d, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q); break;
    case 1: key_tokens<BITS, 1>(codes, cb, n, sc, zc, d, qs + q * dp, dp, scale, s + q * s_stride, s_stride, max + q); break;
    default: break;
  }
}

SH_AVX512 void key_scores_avx512(uint32_t bits, const uint8_t* codes, size_t cb, size_t n, const float* sc, const float* zc, size_t d,
                                 const float* qs, size_t nq, size_t dp, float scale, float* s, size_t s_stride, float* max) {
  switch (bits) {
    case 2: return key_scores_of<2>(codes, cb, n, sc, zc, d, qs, nq, dp, scale, s, s_stride, max);
    case 4: return key_scores_of<4>(codes, cb, n, sc, zc, d, qs, nq, dp, scale, s, s_stride, max);
    default: return key_scores_of<8>(codes, cb, n, sc, zc, d, qs, nq, dp, scale, s, s_stride, max);
  }
}

// ---- Split order (values): a 16-byte block of codes (16 * 8 / bits channels of one token) is widened to 16
// lanes of bytes at once; sub-vector j (shifted right by j * bits, masked) holds channels l * (8 / bits) + j.
// The value sums are kept in that order and put back in channel order at the end, so that no code is moved
// between lanes.

void add_from_split(const float* src, size_t d, size_t r, float* dst) {
  const size_t k = 16 * r;
  for (size_t b = 0; b < d; b += k) {
    for (size_t j = 0; j < r; ++j) {
      for (size_t l = 0; l < 16; ++l) dst[b + l * r + j] += src[b + j * 16 + l];
    }
  }
}

// Sub-vector j of a widened block as lanes of byte values (the low bits hold the code).
template <uint32_t BITS>
SH_AVX512 SH_INLINE __m512i split_lanes(__m512i bytes, int j) {
  return j == 0 ? bytes : _mm512_srli_epi32(bytes, static_cast<unsigned>(j) * BITS);
}

// Code values 0 .. 15 as floats, indexed by the low 4 bits of a lane: for 2-bit codes the bits above the
// code are those of the next one, so entry v holds v & 3.
template <uint32_t BITS>
SH_AVX512 SH_INLINE __m512 code_table() {
  if constexpr (BITS == 2) return _mm512_set_ps(3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0);
  return _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
}

// The codes of sub-vector j as floats: a 16-entry table lookup for 2- and 4-bit codes (the lookup reads the
// low 4 bits of each lane, so no mask), a conversion for 8-bit ones.
template <uint32_t BITS>
SH_AVX512 SH_INLINE __m512 split_codes(__m512i bytes, int j) {
  if constexpr (BITS == 8) {
    return _mm512_cvtepi32_ps(bytes);
  } else {
    return _mm512_permutexvar_ps(split_lanes<BITS>(bytes, j), code_table<BITS>());
  }
}

// ---- Token-lane keys (Plan::split): the scores of 16 tokens at once, lane l holding token l, so that no
// dot product needs a horizontal sum. A packed key's score is scale * sum_c q_c (z_c + s_c code_c) =
// scale * (sum_c (q_c s_c) code_c + sum_c q_c z_c): per run, the queries are multiplied by the run's scales
// and dotted with its zero points once (run_queries), and each code then costs its conversion and one
// fused multiply-add per query.

// The sums of the lanes of four vectors, at once.
SH_AVX512 SH_INLINE void hsum4(const __m512* v, float* out) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(v[0], v[1]), _mm512_unpackhi_ps(v[0], v[1]));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(v[2], v[3]), _mm512_unpackhi_ps(v[2], v[3]));
  // 128-bit lane j: partial sums of v[0], v[1], v[2], v[3] in that order.
  const __m512 abcd = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
                                    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
  const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1)));
}

// The queries of `groups` groups of four (Scratch::q4) scaled by a run's key scales (qr, in the same
// layout) and dotted with its zero points (qz[4 * i + g]); scales and zero points as stored (f16).
SH_AVX512 void run_queries(const float* q4, size_t groups, size_t d, const uint16_t* scales, const uint16_t* zeros, float* qr, float* qz) {
  for (size_t i = 0; i < groups; ++i, q4 += 4 * d, qr += 4 * d) {
    __m512 dz[4];
    for (int g = 0; g < 4; ++g) dz[g] = _mm512_setzero_ps();
    for (size_t c = 0; c < d; c += 16) {
      const __m512 sv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + c)));
      const __m512 zv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(zeros + c)));
      for (int g = 0; g < 4; ++g) {
        const size_t at = 4 * c + 16 * static_cast<size_t>(g);
        const __m512 qv = _mm512_loadu_ps(q4 + at);
        _mm512_storeu_ps(qr + at, _mm512_mul_ps(qv, sv));
        dz[g] = _mm512_fmadd_ps(qv, zv, dz[g]);
      }
    }
    hsum4(dz, qz + 4 * i);
  }
}

// The codes of m <= 16 tokens (rows cb bytes apart, cb a multiple of 16) transposed: words[w] lane l holds
// bytes 4w .. 4w + 3 of token l (zero for l >= m). Each 16-byte block of 16 tokens is four registers of
// four tokens (128-bit lane i of register k: token 4i + k), then a 4 x 4 transpose of 32-bit words inside
// every 128-bit lane.
SH_AVX512 void transpose_codes(const uint8_t* codes, size_t cb, size_t m, __m512i* words) {
  for (size_t b = 0; b < cb; b += 16, words += 4) {
    __m512i r[4];
    for (size_t k = 0; k < 4; ++k) {
      r[k] = _mm512_setzero_si512();
      for (size_t i = 0; i < 4 && 4 * i + k < m; ++i) {
        const __m128i row = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + (4 * i + k) * cb + b));
        r[k] = _mm512_mask_broadcast_i32x4(r[k], static_cast<__mmask16>(0xf << (4 * i)), row);
      }
    }
    const __m512i lo01 = _mm512_unpacklo_epi32(r[0], r[1]);
    const __m512i hi01 = _mm512_unpackhi_epi32(r[0], r[1]);
    const __m512i lo23 = _mm512_unpacklo_epi32(r[2], r[3]);
    const __m512i hi23 = _mm512_unpackhi_epi32(r[2], r[3]);
    words[0] = _mm512_unpacklo_epi64(lo01, lo23);
    words[1] = _mm512_unpackhi_epi64(lo01, lo23);
    words[2] = _mm512_unpacklo_epi64(hi01, hi23);
    words[3] = _mm512_unpackhi_epi64(hi01, hi23);
  }
}

// Code j of every lane's word (bits j * bits up: channel w * 32 / bits + j of word w) as floats.
template <uint32_t BITS>
SH_AVX512 SH_INLINE __m512 word_codes(__m512i words, int j) {
  if constexpr (BITS == 8) {
    const __m512i c = j == 0 ? words : _mm512_srli_epi32(words, static_cast<unsigned>(j) * 8);
    return _mm512_cvtepi32_ps(j == 3 ? c : _mm512_and_si512(c, _mm512_set1_epi32(0xff)));
  } else {
    return split_codes<BITS>(words, j);
  }
}

// Scores of m <= 16 tokens (transposed codes, nw words) against GB <= 4 run-scaled queries (one group of
// four, Scratch::q4): s[g * s_stride + l] = scale * (dot(qr_g, codes of token l) + qz[g]) for l < m; raises
// lane l of lane_max[g * 16 ..] to it. Each query sums into CH accumulators (code j of a word into
// j mod CH), enough independent chains to keep both FMA ports busy.
template <uint32_t BITS, int GB>
SH_AVX512 SH_INLINE void lane_scores(const __m512i* words, size_t nw, const float* qr, const float* qz, float scale, size_t m, float* s,
                                     size_t s_stride, float* lane_max) {
  constexpr int P = 32 / BITS;
  constexpr int CH = std::min(P, GB == 1 ? 16 : GB == 2 ? 8 : 4);
  __m512 acc[GB][CH];
  for (int g = 0; g < GB; ++g) {
    for (int i = 0; i < CH; ++i) acc[g][i] = _mm512_setzero_ps();
  }
  // The words of one block of 16 channels (its queries 64 floats from qr) at a time.
  constexpr int WB = 16 / P;
  for (size_t w = 0; w < nw; w += WB, qr += 64) {
    for (int u = 0; u < WB; ++u) {
      const __m512i v = _mm512_load_si512(words + w + static_cast<size_t>(u));
      // Unrolled whatever P is, so that the accumulators stay in registers.
#pragma GCC unroll 16
      for (int j = 0; j < P; ++j) {
        const __m512 x = word_codes<BITS>(v, j);
        for (int g = 0; g < GB; ++g) acc[g][j % CH] = _mm512_fmadd_ps(x, _mm512_set1_ps(qr[16 * g + u * P + j]), acc[g][j % CH]);
      }
    }
  }
  const __mmask16 valid = static_cast<__mmask16>((1u << m) - 1);
  for (int g = 0; g < GB; ++g) {
    for (int width = CH / 2; width > 0; width /= 2) {
      for (int i = 0; i < width; ++i) acc[g][i] = _mm512_add_ps(acc[g][i], acc[g][i + width]);
    }
    const __m512 v = _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_add_ps(acc[g][0], _mm512_set1_ps(qz[g])));
    _mm512_mask_storeu_ps(s + static_cast<size_t>(g) * s_stride, valid, v);
    // max_ps returns its second operand when the first is NaN: NaN scores leave the maximum alone.
    float* top = lane_max + 16 * static_cast<size_t>(g);
    _mm512_storeu_ps(top, _mm512_mask_max_ps(_mm512_loadu_ps(top), valid, v, _mm512_loadu_ps(top)));
  }
}

template <uint32_t BITS>
SH_AVX512 void key_scores_lanes_of(const uint8_t* codes, size_t cb, size_t n, const float* qr, const float* qz, size_t nq, size_t d,
                                   float scale, float* s, size_t s_stride, float* lane_max) {
  alignas(64) __m512i words[kMaxHeadDim * BITS / 32];
  const size_t nw = cb / 4;
  for (size_t t = 0; t < n; t += 16, codes += 16 * cb, s += 16) {
    prefetch_token(codes + kPrefetchTokens * cb, 16 * cb);
    const size_t m = std::min<size_t>(16, n - t);
    transpose_codes(codes, cb, m, words);
    size_t q = 0;
    for (; q + 4 <= nq; q += 4) lane_scores<BITS, 4>(words, nw, qr + q * d, qz + q, scale, m, s + q * s_stride, s_stride, lane_max + 16 * q);
    switch (nq - q) {
      case 3: lane_scores<BITS, 3>(words, nw, qr + q * d, qz + q, scale, m, s + q * s_stride, s_stride, lane_max + 16 * q); break;
      case 2: lane_scores<BITS, 2>(words, nw, qr + q * d, qz + q, scale, m, s + q * s_stride, s_stride, lane_max + 16 * q); break;
      case 1: lane_scores<BITS, 1>(words, nw, qr + q * d, qz + q, scale, m, s + q * s_stride, s_stride, lane_max + 16 * q); break;
      default: break;
    }
  }
}

SH_AVX512 void key_scores_lanes(uint32_t bits, const uint8_t* codes, size_t cb, size_t n, const float* qr, const float* qz, size_t nq,
                                size_t d, float scale, float* s, size_t s_stride, float* lane_max) {
  switch (bits) {
    case 2: return key_scores_lanes_of<2>(codes, cb, n, qr, qz, nq, d, scale, s, s_stride, lane_max);
    case 4: return key_scores_lanes_of<4>(codes, cb, n, qr, qz, nq, d, scale, s, s_stride, lane_max);
    default: return key_scores_lanes_of<8>(codes, cb, n, qr, qz, nq, d, scale, s, s_stride, lane_max);
  }
}

// Raises max[q] to the largest of query q's lane maxima (16 floats a query), for q < nq.
SH_AVX512 void fold_lane_max(const float* lane_max, size_t nq, float* max) {
  for (size_t q = 0; q < nq; ++q) max[q] = std::max(max[q], _mm512_reduce_max_ps(_mm512_loadu_ps(lane_max + 16 * q)));
}

// Value sums of n tokens into acc (split order), NB 16-byte blocks of channels at a time (from channel b0)
// with their GB x NB x (8 / bits) accumulators in registers. The scales and zero points of a token's block
// (ss, zs: `groups` per token): one value when a group covers the block (UNIFORM), else lane l takes group
// floor(l * (8 / bits) / g) of the block's (gidx).
template <uint32_t BITS, int GB, int NB, bool UNIFORM>
SH_AVX512 SH_INLINE void value_blocks_split(const uint8_t* codes, size_t cb, const float* ss, const float* zs, size_t groups,
                                            size_t g_size, __m512i gidx, size_t n, const float* p, size_t p_stride, size_t dp,
                                            size_t b0, float* acc) {
  constexpr int R = 8 / BITS;
  constexpr size_t K = 16 * R;
  __m512 a[GB][NB * R];
  for (int g = 0; g < GB; ++g) {
    for (int i = 0; i < NB * R; ++i) a[g][i] = _mm512_loadu_ps(acc + static_cast<size_t>(g) * dp + b0 + 16 * static_cast<size_t>(i));
  }
  // The first group of each block, found once rather than per token.
  size_t first[NB];
  for (int nb = 0; nb < NB; ++nb) first[nb] = (b0 + static_cast<size_t>(nb) * K) / g_size;
  codes += b0 * BITS / 8;
  for (size_t t = 0; t < n; ++t, codes += cb, ss += groups, zs += groups) {
    // The line this pass reads, kPrefetchTokens tokens ahead.
    _mm_prefetch(reinterpret_cast<const char*>(codes + kPrefetchTokens * cb), _MM_HINT_T0);
    __m512 x[NB * R];
    for (int nb = 0; nb < NB; ++nb) {
      const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + static_cast<size_t>(nb) * 16)));
      if constexpr (BITS < 8 && UNIFORM) {
        // One group covers the block: the 16 values a code can stand for, looked up by code.
        const __m512 table = _mm512_fmadd_ps(code_table<BITS>(), _mm512_set1_ps(ss[first[nb]]), _mm512_set1_ps(zs[first[nb]]));
        for (int j = 0; j < R; ++j) x[nb * R + j] = _mm512_permutexvar_ps(split_lanes<BITS>(bytes, j), table);
      } else {
        const __m512 sv = UNIFORM ? _mm512_set1_ps(ss[first[nb]]) : _mm512_permutexvar_ps(gidx, _mm512_loadu_ps(ss + first[nb]));
        const __m512 zv = UNIFORM ? _mm512_set1_ps(zs[first[nb]]) : _mm512_permutexvar_ps(gidx, _mm512_loadu_ps(zs + first[nb]));
        for (int j = 0; j < R; ++j) x[nb * R + j] = _mm512_fmadd_ps(split_codes<BITS>(bytes, j), sv, zv);
      }
    }
    for (int g = 0; g < GB; ++g) {
      const __m512 w = _mm512_set1_ps(p[static_cast<size_t>(g) * p_stride + t]);
      for (int i = 0; i < NB * R; ++i) a[g][i] = _mm512_fmadd_ps(w, x[i], a[g][i]);
    }
  }
  for (int g = 0; g < GB; ++g) {
    for (int i = 0; i < NB * R; ++i) _mm512_storeu_ps(acc + static_cast<size_t>(g) * dp + b0 + 16 * static_cast<size_t>(i), a[g][i]);
  }
}

template <uint32_t BITS, int GB, bool UNIFORM>
SH_AVX512 SH_INLINE void value_blocks_of(const uint8_t* codes, size_t cb, const float* ss, const float* zs, size_t groups, size_t g_size,
                                         __m512i gidx, size_t n, const float* p, size_t p_stride, size_t d, size_t dp, float* acc) {
  constexpr size_t K = 16 * 8 / BITS;
  // Blocks per pass: as many as keep GB * NB * R accumulators within 16 registers (each token's weights
  // are broadcast once per pass).
  constexpr int NB = GB * (8 / BITS) * 2 <= 16 ? 2 : 1;
  size_t b = 0;
  for (; b + NB * K <= d; b += NB * K) {
    value_blocks_split<BITS, GB, NB, UNIFORM>(codes, cb, ss, zs, groups, g_size, gidx, n, p, p_stride, dp, b, acc);
  }
  for (; b < d; b += K) value_blocks_split<BITS, GB, 1, UNIFORM>(codes, cb, ss, zs, groups, g_size, gidx, n, p, p_stride, dp, b, acc);
}

template <uint32_t BITS, int GB>
SH_AVX512 SH_INLINE void value_queries_split(const uint8_t* codes, size_t cb, const float* ss, const float* zs, size_t groups,
                                             size_t g_size, size_t n, const float* p, size_t p_stride, size_t d, size_t dp, float* acc) {
  constexpr int R = 8 / BITS;
  if (g_size % (16 * R) == 0) {
    value_blocks_of<BITS, GB, true>(codes, cb, ss, zs, groups, g_size, _mm512_setzero_si512(), n, p, p_stride, d, dp, acc);
    return;
  }
  // Lane l's group in its block, floor(l * R / g_size), by a float division: exact for these small
  // integers (a quotient that is not whole is at least 1 / g_size away from one).
  const __m512 first = _mm512_mul_ps(_mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_ps(R));
  const __m512i gidx = _mm512_cvttps_epi32(_mm512_div_ps(first, _mm512_set1_ps(static_cast<float>(g_size))));
  value_blocks_of<BITS, GB, false>(codes, cb, ss, zs, groups, g_size, gidx, n, p, p_stride, d, dp, acc);
}

template <uint32_t BITS>
SH_AVX512 void value_accumulate_split_of(const uint8_t* codes, size_t cb, const uint16_t* scales, const uint16_t* zeros, size_t groups,
                                         size_t g_size, size_t n, const float* p, size_t p_stride, size_t nq, size_t d, size_t dp,
                                         float* acc) {
  // n * groups <= kChunkGroups (Plan::chunk_tokens), plus 16 floats a block's lanes may read past the end.
  alignas(64) float ss[kChunkGroups + 16];
  alignas(64) float zs[kChunkGroups + 16];
  const size_t count = n * groups;
  size_t k = 0;
  for (; k + 16 <= count; k += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(scales + k + kChunkGroups), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(zeros + k + kChunkGroups), _MM_HINT_T0);
    _mm512_store_ps(ss + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + k))));
    _mm512_store_ps(zs + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(zeros + k))));
  }
  for (; k < count; ++k) {
    ss[k] = f16_to_f32(scales[k]);
    zs[k] = f16_to_f32(zeros[k]);
  }
  for (size_t e = count; e < count + 16; ++e) ss[e] = zs[e] = 0.0f;
  size_t q = 0;
  for (; q + 4 <= nq; q += 4) value_queries_split<BITS, 4>(codes, cb, ss, zs, groups, g_size, n, p + q * p_stride, p_stride, d, dp, acc + q * dp);
  switch (nq - q) {
    case 3: value_queries_split<BITS, 3>(codes, cb, ss, zs, groups, g_size, n, p + q * p_stride, p_stride, d, dp, acc + q * dp); break;
    case 2: value_queries_split<BITS, 2>(codes, cb, ss, zs, groups, g_size, n, p + q * p_stride, p_stride, d, dp, acc + q * dp); break;
    case 1: value_queries_split<BITS, 1>(codes, cb, ss, zs, groups, g_size, n, p + q * p_stride, p_stride, d, dp, acc + q * dp); break;
    default: break;
  }
}

SH_AVX512 void value_accumulate_split(uint32_t bits, const uint8_t* codes, size_t cb, const uint16_t* scales, const uint16_t* zeros,
                                      size_t groups, size_t g_size, size_t n, const float* p, size_t p_stride, size_t nq, size_t d,
                                      size_t dp, float* acc) {
  switch (bits) {
    case 2: return value_accumulate_split_of<2>(codes, cb, scales, zeros, groups, g_size, n, p, p_stride, nq, d, dp, acc);
    case 4: return value_accumulate_split_of<4>(codes, cb, scales, zeros, groups, g_size, n, p, p_stride, nq, d, dp, acc);
    default: return value_accumulate_split_of<8>(codes, cb, scales, zeros, groups, g_size, n, p, p_stride, nq, d, dp, acc);
  }
}

// acc[g * dp + c ..] += sum over the n tokens of p[g * p_stride + t] * value_t[c ..], CB 16-channel slices
// from channel c, GB queries; value_t dequantised in registers with its group's scale and zero point
// (sz: the tile's f32 scales then zero points, `groups` per token).
template <uint32_t BITS, int GB, int CB>
SH_AVX512 SH_INLINE void value_block(const uint8_t* codes, size_t cb, const float* ss, const float* zs, size_t groups, size_t g_size,
                                     size_t n, const float* p, size_t p_stride, size_t dp, size_t c, float* acc) {
  __m512 a[GB][CB];
  for (int g = 0; g < GB; ++g) {
    for (int b = 0; b < CB; ++b) a[g][b] = _mm512_loadu_ps(acc + static_cast<size_t>(g) * dp + c + 16 * static_cast<size_t>(b));
  }
  for (size_t t = 0; t < n; ++t) {
    const uint8_t* row = codes + t * cb;
    // The line this block reads, kPrefetchTokens tokens ahead.
    _mm_prefetch(reinterpret_cast<const char*>(row + kPrefetchTokens * cb + c * BITS / 8), _MM_HINT_T0);
    __m512 x[CB];
    for (int b = 0; b < CB; ++b) {
      const size_t ch = c + 16 * static_cast<size_t>(b);
      const size_t k = t * groups + ch / g_size;
      x[b] = dequantise16(load_codes16(row + ch * BITS / 8, BITS), _mm512_set1_ps(ss[k]), _mm512_set1_ps(zs[k]));
    }
    for (int g = 0; g < GB; ++g) {
      const __m512 w = _mm512_set1_ps(p[static_cast<size_t>(g) * p_stride + t]);
      for (int b = 0; b < CB; ++b) a[g][b] = _mm512_fmadd_ps(w, x[b], a[g][b]);
    }
  }
  for (int g = 0; g < GB; ++g) {
    for (int b = 0; b < CB; ++b) _mm512_storeu_ps(acc + static_cast<size_t>(g) * dp + c + 16 * static_cast<size_t>(b), a[g][b]);
  }
}

template <uint32_t BITS, int GB>
SH_AVX512 SH_INLINE void value_queries(const uint8_t* codes, size_t cb, const float* ss, const float* zs, size_t groups, size_t g_size,
                                       size_t n, const float* p, size_t p_stride, size_t d, size_t dp, float* acc) {
  size_t c = 0;
  for (; c + 64 <= d; c += 64) value_block<BITS, GB, 4>(codes, cb, ss, zs, groups, g_size, n, p, p_stride, dp, c, acc);
  for (; c < d; c += 16) value_block<BITS, GB, 1>(codes, cb, ss, zs, groups, g_size, n, p, p_stride, dp, c, acc);
}

template <uint32_t BITS>
SH_AVX512 void value_accumulate_of(const uint8_t* codes, size_t cb, const uint16_t* scales, const uint16_t* zeros, size_t groups,
                                   size_t g_size, size_t n, const float* p, size_t p_stride, size_t nq, size_t d, size_t dp, float* acc) {
  // n * groups <= kChunkGroups (Plan::chunk_tokens).
  alignas(64) float ss[kChunkGroups];
  alignas(64) float zs[kChunkGroups];
  const size_t count = n * groups;
  size_t k = 0;
  for (; k + 16 <= count; k += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(scales + k + kChunkGroups), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(zeros + k + kChunkGroups), _MM_HINT_T0);
    _mm512_store_ps(ss + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + k))));
    _mm512_store_ps(zs + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(zeros + k))));
  }
  for (; k < count; ++k) {
    ss[k] = f16_to_f32(scales[k]);
    zs[k] = f16_to_f32(zeros[k]);
  }
  size_t q = 0;
  for (; q + 4 <= nq; q += 4) value_queries<BITS, 4>(codes, cb, ss, zs, groups, g_size, n, p + q * p_stride, p_stride, d, dp, acc + q * dp);
  switch (nq - q) {
    case 3: value_queries<BITS, 3>(codes, cb, ss, zs, groups, g_size, n, p + q * p_stride, p_stride, d, dp, acc + q * dp); break;
    case 2: value_queries<BITS, 2>(codes, cb, ss, zs, groups, g_size, n, p + q * p_stride, p_stride, d, dp, acc + q * dp); break;
    case 1: value_queries<BITS, 1>(codes, cb, ss, zs, groups, g_size, n, p + q * p_stride, p_stride, d, dp, acc + q * dp); break;
    default: break;
  }
}

SH_AVX512 void value_accumulate_avx512(uint32_t bits, const uint8_t* codes, size_t cb, const uint16_t* scales, const uint16_t* zeros,
                                       size_t groups, size_t g_size, size_t n, const float* p, size_t p_stride, size_t nq, size_t d,
                                       size_t dp, float* acc) {
  switch (bits) {
    case 2: return value_accumulate_of<2>(codes, cb, scales, zeros, groups, g_size, n, p, p_stride, nq, d, dp, acc);
    case 4: return value_accumulate_of<4>(codes, cb, scales, zeros, groups, g_size, n, p, p_stride, nq, d, dp, acc);
    default: return value_accumulate_of<8>(codes, cb, scales, zeros, groups, g_size, n, p, p_stride, nq, d, dp, acc);
  }
}

void key_row_portable(const uint8_t* codes, uint32_t bits, const float* s, const float* z, size_t d, float* dst) {
  for (size_t c = 0; c < d; ++c) dst[c] = dequantise_value(read_code(codes, bits, c), s[c], z[c]);
}

void value_row_portable(const uint8_t* codes, uint32_t bits, const uint16_t* scales, const uint16_t* zeros, size_t d, size_t g,
                        float* dst) {
  for (size_t c = 0; c < d; ++c) {
    dst[c] = dequantise_value(read_code(codes, bits, c), f16_to_f32(scales[c / g]), f16_to_f32(zeros[c / g]));
  }
}

// Where the key pass is in the runs of one head: run `run` covers slots [start, end).
struct RunCursor {
  int32_t run;
  size_t start;
  size_t end;
};

// Rows [t0, t0 + nt) of one head's keys (cursor non-null) or values, as padded f32 rows in sc.tile.
Rows tile_rows(const Plan& plan, const Scratch& sc, int32_t head, size_t t0, size_t nt, RunCursor* cursor) {
  const PackedView& view = *plan.view;
  const LayerView& base = view.base;
  const size_t i = view.index(plan.args->seq, head);
  const size_t d = static_cast<size_t>(base.head_dim);
  const size_t packed = static_cast<size_t>(view.packed[i]);
  const size_t cb = view.code_bytes();
  const size_t pb = view.packed_base(i);
  size_t t = t0;
  const size_t end = t0 + nt;
  const size_t stop = std::min(end, packed);
  if (cursor != nullptr) {
    // Keys, run by run.
    while (t < stop) {
      while (t >= cursor->end) {
        cursor->run += 1;
        cursor->start = cursor->end;
        cursor->end += static_cast<size_t>(view.run_lengths[view.run_base(i) + static_cast<size_t>(cursor->run)]);
        const size_t entry = (view.run_base(i) + static_cast<size_t>(cursor->run)) * d;
        if (plan.simd_keys) {
          run_parameters_avx512(view.key_scales + entry, view.key_zeros + entry, d, sc.run_scales, sc.run_zeros);
        } else {
          for (size_t c = 0; c < d; ++c) {
            sc.run_scales[c] = f16_to_f32(view.key_scales[entry + c]);
            sc.run_zeros[c] = f16_to_f32(view.key_zeros[entry + c]);
          }
        }
      }
      const size_t n = std::min(stop, cursor->end) - t;
      float* dst = sc.tile + (t - t0) * plan.dp;
      const uint8_t* codes = view.key_codes + (pb + t) * cb;
      if (plan.simd_keys) {
        key_rows_avx512(codes, cb, n, view.bits, sc.run_scales, sc.run_zeros, d, plan.dp, dst);
      } else {
        for (size_t r = 0; r < n; ++r) key_row_portable(codes + r * cb, view.bits, sc.run_scales, sc.run_zeros, d, dst + r * plan.dp);
      }
      t += n;
    }
  } else if (t < stop) {
    const size_t n = stop - t;
    const size_t groups = view.value_groups();
    const uint8_t* codes = view.value_codes + (pb + t) * cb;
    const uint16_t* scales = view.value_scales + (pb + t) * groups;
    const uint16_t* zeros = view.value_zeros + (pb + t) * groups;
    float* dst = sc.tile + (t - t0) * plan.dp;
    if (plan.simd_values) {
      value_rows_avx512(codes, cb, scales, zeros, groups, n, view.bits, d, static_cast<size_t>(view.group_size), plan.dp, dst);
    } else {
      for (size_t r = 0; r < n; ++r) {
        value_row_portable(codes + r * cb, view.bits, scales + r * groups, zeros + r * groups, d, static_cast<size_t>(view.group_size),
                           dst + r * plan.dp);
      }
    }
    t = stop;
  }
  // Head sizes are multiples of 8 (the group size divides them), so packed rows need no padding.
  if (t < end) {
    const uint8_t* raw = cursor != nullptr ? view.residual_keys : view.residual_values;
    const uint8_t* src = raw + (view.residual_base(i) + (t - packed)) * base.row_bytes();
    plan.prims->to_f32(base.dtype, src, end - t, d, plan.dp, sc.tile + (t - t0) * plan.dp);
  }
  return Rows{DType::F32, reinterpret_cast<const uint8_t*>(sc.tile), plan.dp};
}

// Scores of tokens [t0, t0 + nt) of one head for the block's queries: packed keys fused, run by run; the
// residual window through an f32 tile and the dense primitive.
void tile_scores(const Plan& plan, const Scratch& sc, int32_t head, size_t t0, size_t nt, RunCursor* cursor, size_t queries) {
  const PackedView& view = *plan.view;
  const size_t i = view.index(plan.args->seq, head);
  const size_t d = static_cast<size_t>(view.base.head_dim);
  const size_t packed = static_cast<size_t>(view.packed[i]);
  const size_t cb = view.code_bytes();
  const size_t pb = view.packed_base(i);
  const size_t end = t0 + nt;
  const size_t stop = std::min(end, packed);
  size_t t = t0;
  while (t < stop) {
    while (t >= cursor->end) {
      cursor->run += 1;
      cursor->start = cursor->end;
      cursor->end += static_cast<size_t>(view.run_lengths[view.run_base(i) + static_cast<size_t>(cursor->run)]);
      const size_t entry = (view.run_base(i) + static_cast<size_t>(cursor->run)) * d;
      prefetch_token(reinterpret_cast<const uint8_t*>(view.key_scales + entry + kPrefetchRuns * d), d * sizeof(uint16_t));
      prefetch_token(reinterpret_cast<const uint8_t*>(view.key_zeros + entry + kPrefetchRuns * d), d * sizeof(uint16_t));
      if (plan.split) {
        run_queries(sc.q4, (queries + 3) / 4, d, view.key_scales + entry, view.key_zeros + entry, sc.q_run, sc.q_zero);
      } else {
        run_parameters_avx512(view.key_scales + entry, view.key_zeros + entry, d, sc.run_scales, sc.run_zeros);
      }
    }
    const size_t n = std::min(stop, cursor->end) - t;
    if (plan.split) {
      key_scores_lanes(view.bits, view.key_codes + (pb + t) * cb, cb, n, sc.q_run, sc.q_zero, queries, d, plan.args->scale,
                       sc.s + t, plan.s_stride, sc.lane_max);
    } else {
      key_scores_avx512(view.bits, view.key_codes + (pb + t) * cb, cb, n, sc.run_scales, sc.run_zeros, d, sc.q, queries, plan.dp,
                        plan.args->scale, sc.s + t, plan.s_stride, sc.max);
    }
    t += n;
  }
  if (t < end) {
    plan.prims->dots(tile_rows(plan, sc, head, t, end - t, cursor), end - t, sc.q, queries, plan.dp, plan.args->scale, sc.s + t,
                     plan.s_stride, sc.max);
  }
}

// Accumulates tokens [t0, t0 + nt) of one head's values with the block's weights.
void tile_values(const Plan& plan, const Scratch& sc, int32_t head, size_t t0, size_t nt, size_t queries) {
  const PackedView& view = *plan.view;
  const size_t i = view.index(plan.args->seq, head);
  const size_t d = static_cast<size_t>(view.base.head_dim);
  const size_t packed = static_cast<size_t>(view.packed[i]);
  const size_t end = t0 + nt;
  const size_t stop = std::min(end, packed);
  if (t0 < stop) {
    const size_t groups = view.value_groups();
    const size_t at = view.packed_base(i) + t0;
    if (plan.split) {
      value_accumulate_split(view.bits, view.value_codes + at * view.code_bytes(), view.code_bytes(), view.value_scales + at * groups,
                             view.value_zeros + at * groups, groups, static_cast<size_t>(view.group_size), stop - t0, sc.s + t0,
                             plan.s_stride, queries, d, plan.dp, sc.acc_split);
    } else {
      value_accumulate_avx512(view.bits, view.value_codes + at * view.code_bytes(), view.code_bytes(), view.value_scales + at * groups,
                              view.value_zeros + at * groups, groups, static_cast<size_t>(view.group_size), stop - t0, sc.s + t0,
                              plan.s_stride, queries, d, plan.dp, sc.acc);
    }
  }
  const size_t t = std::max(t0, stop);
  if (t < end) {
    plan.prims->accumulate(tile_rows(plan, sc, head, t, end - t, nullptr), end - t, sc.s + t, plan.s_stride, queries, plan.dp, sc.acc);
  }
}

void load_queries(const Plan& plan, int32_t head, int32_t r0, int32_t r1, float* qbuf) {
  const LayerView& view = plan.view->base;
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

// The queries (dp floats apart) four by four, interleaved 16 channels at a time (Scratch::q4); a last group
// of fewer than four is padded with zeros.
void interleave_queries(const float* q, size_t nq, size_t d, size_t dp, float* q4) {
  std::fill(q4, q4 + round_up(nq, 4) * d, 0.0f);
  for (size_t g = 0; g < nq; ++g) {
    for (size_t c = 0; c < d; c += 16) std::memcpy(q4 + (g / 4) * 4 * d + 4 * c + 16 * (g % 4), q + g * dp + c, 16 * sizeof(float));
  }
}

void store_outputs(const Plan& plan, int32_t head, int32_t r0, int32_t r1, const float* acc, const float* inv) {
  const LayerView& view = plan.view->base;
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

void attend_head(const Plan& plan, const Scratch& sc, int32_t head) {
  const LayerView& view = plan.view->base;
  const AttentionArgs& args = *plan.args;
  const Primitives& prims = *plan.prims;
  const size_t group = plan.group;
  const size_t dp = plan.dp;
  const int64_t first = static_cast<int64_t>(kept(view, args.seq, head)) - args.rows + 1;
  const size_t packed = plan.fused ? static_cast<size_t>(plan.view->packed[plan.view->index(args.seq, head)]) : 0;

  for (int32_t b0 = args.row_begin; b0 < args.row_end; b0 += static_cast<int32_t>(plan.block_rows)) {
    const int32_t b1 = std::min(args.row_end, b0 + static_cast<int32_t>(plan.block_rows));
    const size_t queries = static_cast<size_t>(b1 - b0) * group;
    const size_t n_max = static_cast<size_t>(std::max<int64_t>(0, first + b1 - 1));
    auto attended = [&](size_t query) {
      return static_cast<size_t>(std::max<int64_t>(0, first + b0 + static_cast<int64_t>(query / group)));
    };
    // Fused: the packed tokens in chunks, then the residual window in tiles (so a tile never mixes them).
    auto tile_length = [&](size_t t0) {
      return std::min(n_max - t0, t0 < packed ? std::min(plan.chunk_tokens, packed - t0) : plan.tile_tokens);
    };

    load_queries(plan, head, b0, b1, sc.q);
    if (plan.split) interleave_queries(sc.q, queries, static_cast<size_t>(view.head_dim), dp, sc.q4);
    std::fill(sc.max, sc.max + queries, -std::numeric_limits<float>::infinity());
    if (plan.split) std::fill(sc.lane_max, sc.lane_max + 16 * queries, -std::numeric_limits<float>::infinity());
    RunCursor cursor{-1, 0, 0};
    for (size_t t0 = 0, nt = 0; t0 < n_max; t0 += nt) {
      nt = tile_length(t0);
      if (plan.fused) {
        tile_scores(plan, sc, head, t0, nt, &cursor, queries);
      } else {
        prims.dots(tile_rows(plan, sc, head, t0, nt, &cursor), nt, sc.q, queries, dp, args.scale, sc.s + t0, plan.s_stride, sc.max);
      }
    }
    if (plan.split) fold_lane_max(sc.lane_max, queries, sc.max);
    // A query that sees fewer tokens than the block's longest takes the maximum of its own.
    for (size_t q = 0; q < queries; ++q) {
      const float* row = sc.s + q * plan.s_stride;
      const size_t n = attended(q);
      if (n < n_max) {
        float max = -std::numeric_limits<float>::infinity();
        for (size_t j = 0; j < n; ++j) max = row[j] > max ? row[j] : max;
        sc.max[q] = max;
      }
    }
    std::fill(sc.inv, sc.inv + queries, 0.0f);
    std::fill(sc.acc, sc.acc + queries * dp, 0.0f);
    if (plan.split) std::fill(sc.acc_split, sc.acc_split + queries * dp, 0.0f);
    for (size_t t0 = 0, nt = 0; t0 < n_max; t0 += nt) {
      nt = tile_length(t0);
      // Each tile's scores become weights just before its values are summed, while they are in L1 (a
      // separate pass would stream every score through the outer caches once more); sc.inv sums them.
      for (size_t q = 0; q < queries; ++q) {
        float* row = sc.s + q * plan.s_stride;
        const size_t e = std::min(t0 + nt, std::max(attended(q), t0));
        if (e > t0) sc.inv[q] += prims.exp_sum(row + t0, e - t0, sc.max[q]);
        std::fill(row + e, row + t0 + nt, 0.0f);
      }
      if (plan.fused) {
        tile_values(plan, sc, head, t0, nt, queries);
      } else {
        prims.accumulate(tile_rows(plan, sc, head, t0, nt, nullptr), nt, sc.s + t0, plan.s_stride, queries, dp, sc.acc);
      }
    }
    for (size_t q = 0; q < queries; ++q) sc.inv[q] = attended(q) > 0 ? 1.0f / sc.inv[q] : 0.0f;
    if (plan.split) {
      for (size_t q = 0; q < queries; ++q) add_from_split(sc.acc_split + q * dp, static_cast<size_t>(view.head_dim), 8 / plan.view->bits, sc.acc + q * dp);
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
      observe_head(view, args.seq, head, sc.s + local * group * plan.s_stride, sc.inv + local * group, group, plan.s_stride,
                   n, plan.first_step + row, *plan.tracker, custom);
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
  const int32_t h1 = part == 0 ? split.middle : plan.view->base.kv_heads;
  for (int32_t h = h0; h < h1; ++h) attend_head(plan, sc, h);
}

}  // namespace

Status packed_attend(Context& ctx, const PackedView& pv, const AttentionArgs& args, const TrackerSpec& tracker) {
  const LayerView& view = pv.base;
  if (args.seq < 0 || args.seq >= view.max_sequences) return Status::Argument;
  if (args.query_heads <= 0 || args.query_heads % view.kv_heads != 0) return Status::Argument;
  if (args.rows < 1 || args.row_begin < 0 || args.row_begin >= args.row_end || args.row_end > args.rows) return Status::Argument;
  if ((args.q.bits16 || args.out.bits16) && view.dtype == DType::F32) return Status::DType;
  if (tracker.kind == TrackerKind::Scissorhands &&
      (tracker.window == 0 || tracker_aux_words(tracker) > static_cast<uint32_t>(view.aux_words))) {
    return Status::Argument;
  }
  if (!lengths_valid(view, args.seq, args.rows) || !packed_state_valid(pv, args.seq)) return Status::Argument;
  if (!step_valid(view, args.seq, args.row_end - args.row_begin)) return Status::Argument;
  if (view.head_dim > kMaxHeadDim || view.head_dim % pv.group_size != 0 || pv.group_size % 8 != 0) return Status::Argument;

  Plan plan{};
  plan.view = &pv;
  plan.args = &args;
  plan.tracker = &tracker;
  plan.prims = &ctx.primitives();
  plan.group = static_cast<size_t>(args.query_heads / view.kv_heads);
  plan.dp = padded_dim(view.head_dim);
  plan.tile_tokens = std::max<size_t>(4, kTileFloats / plan.dp);
  plan.chunk_tokens = kChunkGroups / static_cast<size_t>(view.head_dim / pv.group_size);
  plan.block_rows = std::min(std::max<size_t>(1, kBlockQueries / plan.group), static_cast<size_t>(args.row_end - args.row_begin));
  plan.first_step = static_cast<uint64_t>(view.steps[args.seq]);
  const bool simd = std::strcmp(ctx.simd(), "avx512") == 0 && pack_simd_available();
  plan.simd_keys = simd && view.head_dim % 16 == 0;
  plan.simd_values = simd && pv.group_size % 16 == 0;
  plan.fused = plan.simd_keys && plan.simd_values;
  plan.split = plan.fused && view.head_dim % static_cast<int32_t>(16 * 8 / pv.bits) == 0;

  size_t longest = 0;
  size_t packed_total = 0;
  size_t residual_total = 0;
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    const size_t n = static_cast<size_t>(kept(view, args.seq, h));
    const size_t packed = static_cast<size_t>(pv.packed[pv.index(args.seq, h)]);
    longest = std::max(longest, n);
    packed_total += packed;
    residual_total += n - packed;
  }
  plan.s_stride = round_up(longest, 16);
  const size_t floats = scratch_floats(plan);

  Split split{&plan, {nullptr, nullptr}, view.kv_heads / 2};
  split.scratch[0] = ctx.workspace(0).floats(floats);
  if (split.scratch[0] == nullptr) return Status::NoMemory;
  const size_t blocks = (static_cast<size_t>(args.row_end - args.row_begin) + plan.block_rows - 1) / plan.block_rows;
  const size_t streamed = (packed_total * 2 * pv.code_bytes() + residual_total * view.row_bytes() * 2) * blocks;
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
