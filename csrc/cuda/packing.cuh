// Device twins of the group quantisation of csrc/include/scissorhands/pack.h (docs/packing.md), bit for
// bit: every f32 step is an explicitly rounded intrinsic so nvcc cannot contract or reorder it, and the
// covering check runs in f64 as on the CPU. Also the device view of a packed store.
#pragma once

#include "common.cuh"

namespace sh::cuda {

// The next f16 up (the scale's covering step).
__device__ __forceinline__ uint16_t f16_up_d(uint16_t bits) {
  if (bits == 0x8000u) return 0x0001u;
  return (bits & 0x8000u) != 0 ? static_cast<uint16_t>(bits - 1) : static_cast<uint16_t>(bits + 1);
}

// Largest f16 <= x and smallest f16 >= x (x finite, |x| <= 65504): the conversion's directed roundings
// (cvt.rm / cvt.rp), which are these by definition, as the CPU's AVX-512 packer uses.
__device__ __forceinline__ uint16_t f16_floor_d(float x) { return __half_as_ushort(__float2half_rd(x)); }

__device__ __forceinline__ uint16_t f16_ceil_d(float x) { return __half_as_ushort(__float2half_ru(x)); }

// Scale and zero point of a group spanning [mn, mx] (pack.h group_parameters).
__device__ __forceinline__ void group_params_d(float mn, float mx, uint32_t qmax, uint16_t* scale_out, uint16_t* zero_out) {
  if (mn == 0.0f) mn = 0.0f;
  if (mx == 0.0f) mx = 0.0f;
  const uint16_t zero = f16_floor_d(mn);
  const float z = f16_bits_to_f32(zero);
  uint16_t scale = f16_ceil_d(__fdiv_rn(__fsub_rn(mx, z), static_cast<float>(qmax)));
  // Cover [z, mx]: raise the scale while z + qmax * scale < mx, compared exactly. The product is exact in f32
  // and rounding is monotone, so one fused multiply-add decides a strict result; f64 (an f16 plus a product of
  // at most 19 significant bits, exact) decides equality, and the non-finite ranges that callers refuse later,
  // which then end the loop as on the CPU.
  for (;;) {
    const float sf = f16_bits_to_f32(scale);
    const float top = __fmaf_rn(static_cast<float>(qmax), sf, z);
    if (top > mx) break;
    if (!(top < mx) &&
        !(__dadd_rn(static_cast<double>(z), __dmul_rn(static_cast<double>(qmax), static_cast<double>(sf))) < static_cast<double>(mx))) {
      break;
    }
    scale = f16_up_d(scale);
  }
  *scale_out = scale;
  *zero_out = zero;
}

// code = clamp(round_half_even((x - z) / s), 0, qmax); 0 for a zero scale. rintf rounds half to even.
__device__ __forceinline__ uint32_t quantise_d(float x, float s, float z, uint32_t qmax) {
  if (s == 0.0f) return 0;
  const float code = rintf(__fdiv_rn(__fsub_rn(x, z), s));
  if (!(code > 0.0f)) return 0;
  return code > static_cast<float>(qmax) ? qmax : static_cast<uint32_t>(code);
}

// 1 / s for quantise_fast_d: the hardware reciprocal (within an ulp, which the tie margin below absorbs), and 0
// for a zero scale so that every code of a constant group comes out 0.
__device__ __forceinline__ float inverse_d(float s) {
  float inv;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(inv) : "f"(s));
  return s == 0.0f ? 0.0f : inv;
}

// The code of quantise_d from a multiply by inv = inverse_d(s): t = (x - z) * inv is within 2^-13 of the rounded
// quotient (t <= qmax <= 255), so both round to the same integer unless t lies within 2^-10 of a half; then
// `near` is set and the caller must take quantise_d. Adding 1.5 * 2^23 rounds t (0 <= t < 2^22) half to even
// into the low mantissa bits, which avoids the slower rint and float-to-integer conversions. No clamp is
// needed: x - z <= qmax * s exactly, so t rounds to at most qmax.
__device__ __forceinline__ uint32_t quantise_fast_d(float x, float inv, float z, uint32_t qmax, bool& near) {
  constexpr float kRound = 12582912.0f;
  const float d = __fsub_rn(x, z);
  const float y = __fmaf_rn(d, inv, kRound);
  near = near || fabsf(__fmaf_rn(d, inv, -__fsub_rn(y, kRound))) > 0.4990234375f;
  return __float_as_uint(y) & qmax;
}

// quantise_fast_d with its fallback, element by element (for the kernels off the hot path).
__device__ __forceinline__ uint32_t quantise_checked_d(float x, float s, float inv, float z, uint32_t qmax) {
  bool near = false;
  const uint32_t code = quantise_fast_d(x, inv, z, qmax, near);
  return near ? quantise_d(x, s, z, qmax) : code;
}

// A small unsigned integer as a float without the slow integer conversion: 2^23 + code, minus 2^23 (exact).
__device__ __forceinline__ float code_float(uint32_t code) { return __fsub_rn(__uint_as_float(0x4B000000u | code), 8388608.0f); }

// f32(z + code * s): the product is exact in f32, so the fused multiply-add rounds as the CPU's mul+add.
__device__ __forceinline__ float dequantise_d(uint32_t code, float s, float z) { return __fmaf_rn(code_float(code), s, z); }

__device__ __forceinline__ bool packable_d(float x) { return x >= -65504.0f && x <= 65504.0f; }

// The device arrays of a packed store (Store::packed), for kernels; per (sequence, KV head) i.
struct PackedArgs {
  uint8_t* key_codes;     // [i][packed_slots][code_bytes]
  uint8_t* value_codes;   // [i][packed_slots][code_bytes]
  uint16_t* value_scales; // [i][packed_slots][head_dim / group]
  uint16_t* value_zeros;
  uint16_t* key_scales;   // [i][max_runs][head_dim]
  uint16_t* key_zeros;
  int32_t* run_lengths;   // [i][max_runs]
  uint8_t* run_generations;
  int32_t* runs;          // [i]
  int32_t* packed;        // [i]
  uint8_t* residual_keys; // [i][residual_slots][head_dim] elements
  uint8_t* residual_values;
  int32_t* slot_run;      // [i][packed_slots] the run of each packed slot (derived: rebuilt with the run table)
  uint8_t* dropped;       // [i][capacity] eviction flags (scratch)
  int32_t* run_scratch;   // [i][max_runs] (scratch)
  int32_t bits;
  int32_t group;
  int32_t residual;
  int32_t packed_slots;
  int32_t residual_slots;
  int32_t max_runs;
  int32_t code_bytes;
};

inline PackedArgs packed_args(const Store& s) {
  const PackedStoreArrays& a = s.packed;
  return PackedArgs{a.key_codes, a.value_codes, a.value_scales, a.value_zeros, a.key_scales, a.key_zeros, a.run_lengths,
                    a.run_generations, a.runs, a.packed, a.residual_keys, a.residual_values, a.slot_run, a.dropped,
                    a.run_scratch, s.spec.bits, s.spec.group_size, s.spec.residual, a.packed_slots, a.residual_slots,
                    a.max_runs, s.spec.head_dim * s.spec.bits / 8};
}

// Rewrites slot_run of head i from its run table (block-wide; call with every thread, ends with a barrier).
// Each thread sums the lengths before its runs: runs are few (2 * packed / group), so this costs little.
__device__ inline void rebuild_slot_runs(const PackedArgs& p, size_t i) {
  const int runs = p.runs[i];
  const int32_t* lengths = p.run_lengths + i * p.max_runs;
  int32_t* slot_run = p.slot_run + i * p.packed_slots;
  for (int r = threadIdx.x; r < runs; r += blockDim.x) {
    int start = 0;
    for (int q = 0; q < r; ++q) start += lengths[q];
    for (int t = 0; t < lengths[r]; ++t) slot_run[start + t] = r;
  }
  __syncthreads();
}

}  // namespace sh::cuda
