// The standalone packer on the device (docs/packing.md). Axis 1 (a group is groupSize consecutive elements
// of a row: values per token): with a power-of-two group of 8 to 256 elements, groupSize / 8 lanes of a
// warp share a group, each loading 8 elements in one or two 16-byte loads, reducing the range by shuffles
// and storing its 8 codes in one store (coalesced across the warp); other groups take one thread each.
// Axis 0 (a group runs down a column: keys per channel): one thread per (group of rows, code byte column).
// Every thread owns the code bytes it writes. Codes come from a reciprocal multiply checked against the
// exact division near ties (quantise_fast_d), so the bits are those of the CPU. Unpacking is one thread
// per element.
#include <algorithm>
#include <type_traits>

#include "packing.cuh"

namespace sh::cuda {
namespace {

constexpr int kPackThreads = 256;

template <typename In>
__device__ __forceinline__ float load_in(const void* data, int64_t i) {
  if constexpr (sizeof(In) == 4) {
    return static_cast<const float*>(data)[i];
  } else {
    return Elem<In>::load(static_cast<const In*>(data) + i);
  }
}

// Axis 1. VEC elements per 16-byte load when the group is 16-byte aligned (group * size % 16 == 0).
template <typename In, int BITS>
__global__ void __launch_bounds__(kPackThreads) pack_rows(const void* input, bool aligned, int64_t groups, int32_t group,
                                                          uint8_t* codes, uint16_t* scales, uint16_t* zeros, int32_t* bad) {
  constexpr uint32_t kQmax = (1u << BITS) - 1u;
  constexpr int VEC = 16 / static_cast<int>(sizeof(In));
  const int64_t gi = blockIdx.x * static_cast<int64_t>(kPackThreads) + threadIdx.x;
  if (gi >= groups) return;
  const int64_t first = gi * group;
  const bool vector = aligned && (group % VEC) == 0;
  const In* in = static_cast<const In*>(input) + first;
  float mn = INFINITY;
  float mx = -INFINITY;
  bool fine = true;
  if (vector) {
    for (int c = 0; c < group; c += VEC) {
      float x[VEC];
      decode16<In>(raw16(in + c), x);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        fine = fine && packable_d(x[e]);
        mn = fminf(mn, x[e]);
        mx = fmaxf(mx, x[e]);
      }
    }
  } else {
    for (int c = 0; c < group; ++c) {
      const float x = load_in<In>(input, first + c);
      fine = fine && packable_d(x);
      mn = fminf(mn, x);
      mx = fmaxf(mx, x);
    }
  }
  if (!fine) {
    if (bad != nullptr) atomicOr(bad, 1);
    return;
  }
  uint16_t sb;
  uint16_t zb;
  group_params_d(mn, mx, kQmax, &sb, &zb);
  scales[gi] = sb;
  zeros[gi] = zb;
  const float s = f16_bits_to_f32(sb);
  const float z = f16_bits_to_f32(zb);
  const float inv = __frcp_rn(s);
  // The group's codes start on a byte (group * BITS % 8 == 0); gather them a 32-bit word at a time.
  uint8_t* out = codes + first * BITS / 8;
  const bool words = (group * BITS) % 32 == 0;
  uint32_t word = 0;
  int filled = 0;
  int at = 0;
  auto put = [&](uint32_t code) {
    word |= code << filled;
    filled += BITS;
    if (filled == 32) {
      if (words) {
        *reinterpret_cast<uint32_t*>(out + at) = word;
      } else {
        for (int b = 0; b < 4; ++b) out[at + b] = static_cast<uint8_t>(word >> (8 * b));
      }
      at += 4;
      word = 0;
      filled = 0;
    }
  };
  if (vector) {
    for (int c = 0; c < group; c += VEC) {
      float x[VEC];
      decode16<In>(raw16(in + c), x);
#pragma unroll
      for (int e = 0; e < VEC; ++e) put(quantise_fast_d(x[e], s, inv, z, kQmax));
    }
  } else {
    for (int c = 0; c < group; ++c) put(quantise_fast_d(load_in<In>(input, first + c), s, inv, z, kQmax));
  }
  for (int b = 0; b * 8 < filled; ++b) out[at + b] = static_cast<uint8_t>(word >> (8 * b));
}

// Axis 1, power-of-two groups of 8 to 256: LANES = group / 8 lanes a group (shuffle width).
template <typename In, int BITS, int LANES>
__global__ void __launch_bounds__(kPackThreads) pack_rows_lanes(const void* input, int64_t lanes, uint8_t* codes, uint16_t* scales,
                                                                uint16_t* zeros, int32_t* bad) {
  constexpr uint32_t kQmax = (1u << BITS) - 1u;
  const int64_t lane = blockIdx.x * static_cast<int64_t>(kPackThreads) + threadIdx.x;
  // Whole groups per block (kPackThreads is a multiple of LANES), so every lane of a group is present.
  const bool live = lane < lanes;
  const In* in = static_cast<const In*>(input) + (live ? lane : 0) * 8;
  float x[8];
  decode16<In>(raw16(in), x);
  if constexpr (sizeof(In) == 4) decode16<In>(raw16(in + 4), x + 4);
  float mn = x[0];
  float mx = x[0];
  bool fine = packable_d(x[0]);
#pragma unroll
  for (int e = 1; e < 8; ++e) {
    fine = fine && packable_d(x[e]);
    mn = fminf(mn, x[e]);
    mx = fmaxf(mx, x[e]);
  }
#pragma unroll
  for (int o = LANES / 2; o > 0; o >>= 1) {
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o, LANES));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o, LANES));
  }
  if (!live) return;
  if (!fine) {
    if (bad != nullptr) atomicOr(bad, 1);
    return;
  }
  uint16_t sb;
  uint16_t zb;
  group_params_d(mn, mx, kQmax, &sb, &zb);
  const int64_t group = lane / LANES;
  if (lane % LANES == 0) {
    scales[group] = sb;
    zeros[group] = zb;
  }
  const float s = f16_bits_to_f32(sb);
  const float z = f16_bits_to_f32(zb);
  const float inv = __frcp_rn(s);
  uint64_t word = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) word |= static_cast<uint64_t>(quantise_fast_d(x[e], s, inv, z, kQmax)) << (e * BITS);
  uint8_t* out = codes + lane * BITS;
  if constexpr (BITS == 2) *reinterpret_cast<uint16_t*>(out) = static_cast<uint16_t>(word);
  if constexpr (BITS == 4) *reinterpret_cast<uint32_t*>(out) = static_cast<uint32_t>(word);
  if constexpr (BITS == 8) *reinterpret_cast<uint2*>(out) = make_uint2(static_cast<uint32_t>(word), static_cast<uint32_t>(word >> 32));
}

// Axis 0: thread (row group, byte column) quantises the PER = 8 / BITS columns that share its code bytes.
template <typename In, int BITS>
__global__ void __launch_bounds__(kPackThreads) pack_columns(const void* input, int64_t rows, int64_t cols, int32_t group,
                                                             uint8_t* codes, uint16_t* scales, uint16_t* zeros, int32_t* bad) {
  constexpr uint32_t kQmax = (1u << BITS) - 1u;
  constexpr int PER = 8 / BITS;
  const int64_t byte_cols = cols / PER;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(kPackThreads) + threadIdx.x;
  if (idx >= (rows / group) * byte_cols) return;
  const int64_t rg = idx / byte_cols;
  const int64_t bc = idx - rg * byte_cols;
  const int64_t c0 = bc * PER;
  const int64_t r0 = rg * group;
  float s[PER];
  float z[PER];
  float inv[PER];
  bool fine = true;
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    float mn = INFINITY;
    float mx = -INFINITY;
    for (int r = 0; r < group; ++r) {
      const float x = load_in<In>(input, (r0 + r) * cols + c0 + j);
      fine = fine && packable_d(x);
      mn = fminf(mn, x);
      mx = fmaxf(mx, x);
    }
    uint16_t sb;
    uint16_t zb;
    group_params_d(mn, mx, kQmax, &sb, &zb);
    scales[rg * cols + c0 + j] = sb;
    zeros[rg * cols + c0 + j] = zb;
    s[j] = f16_bits_to_f32(sb);
    z[j] = f16_bits_to_f32(zb);
    inv[j] = __frcp_rn(s[j]);
  }
  if (!fine) {
    if (bad != nullptr) atomicOr(bad, 1);
    return;
  }
  for (int r = 0; r < group; ++r) {
    uint32_t byte = 0;
#pragma unroll
    for (int j = 0; j < PER; ++j) byte |= quantise_fast_d(load_in<In>(input, (r0 + r) * cols + c0 + j), s[j], inv[j], z[j], kQmax) << (j * BITS);
    codes[((r0 + r) * cols + c0) / PER] = static_cast<uint8_t>(byte);
  }
}

__global__ void unpack_kernel(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros, int64_t rows, int64_t cols,
                              int32_t bits, int32_t axis, int64_t group, DType out_dtype, void* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * cols) return;
  const int per = 8 / bits;
  const uint32_t code = (codes[i / per] >> ((i % per) * bits)) & ((1u << bits) - 1u);
  const int64_t r = i / cols;
  const int64_t c = i - r * cols;
  const int64_t g = axis == 1 ? i / group : (r / group) * cols + c;
  store_output(out, out_dtype, i, dequantise_d(code, f16_bits_to_f32(scales[g]), f16_bits_to_f32(zeros[g])));
}

}  // namespace

bool pack_shape_supported(const PackShape& s) {
  if (s.bits != 2 && s.bits != 4 && s.bits != 8) return false;
  if (s.rows < 1 || s.cols < 1 || s.group_size < 1 || s.group_size > (int64_t{1} << 30)) return false;
  if (s.axis == 1) return s.cols % s.group_size == 0 && (s.group_size * s.bits) % 8 == 0;
  return s.axis == 0 && s.rows % s.group_size == 0 && (s.cols * s.bits) % 8 == 0;
}

Result pack(const void* input, DType dtype, const PackShape& shape, uint8_t* codes, uint16_t* scales, uint16_t* zeros,
            int32_t* bad, void* stream) {
  if (!pack_shape_supported(shape)) return Result{Status::Argument, 0, "groupSize"};
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int32_t g = static_cast<int32_t>(shape.group_size);
  return SH_DISPATCH_DTYPE(dtype, In, [&]() -> Result {
    auto run = [&](auto bits_tag) -> Result {
      constexpr int BITS = decltype(bits_tag)::value;
      const bool aligned = reinterpret_cast<uintptr_t>(input) % 16 == 0 && reinterpret_cast<uintptr_t>(codes) % 8 == 0;
      if (shape.axis == 1 && aligned && g >= 8 && g <= 256 && (g & (g - 1)) == 0) {
        const int64_t lanes = shape.rows * shape.cols / 8;
        const unsigned blocks = static_cast<unsigned>((lanes + kPackThreads - 1) / kPackThreads);
        switch (g) {
          case 8:
            pack_rows_lanes<In, BITS, 1><<<blocks, kPackThreads, 0, st>>>(input, lanes, codes, scales, zeros, bad);
            break;
          case 16:
            pack_rows_lanes<In, BITS, 2><<<blocks, kPackThreads, 0, st>>>(input, lanes, codes, scales, zeros, bad);
            break;
          case 32:
            pack_rows_lanes<In, BITS, 4><<<blocks, kPackThreads, 0, st>>>(input, lanes, codes, scales, zeros, bad);
            break;
          case 64:
            pack_rows_lanes<In, BITS, 8><<<blocks, kPackThreads, 0, st>>>(input, lanes, codes, scales, zeros, bad);
            break;
          case 128:
            pack_rows_lanes<In, BITS, 16><<<blocks, kPackThreads, 0, st>>>(input, lanes, codes, scales, zeros, bad);
            break;
          default:
            pack_rows_lanes<In, BITS, 32><<<blocks, kPackThreads, 0, st>>>(input, lanes, codes, scales, zeros, bad);
        }
      } else if (shape.axis == 1) {
        const int64_t groups = shape.rows * shape.cols / g;
        pack_rows<In, BITS><<<static_cast<unsigned>((groups + kPackThreads - 1) / kPackThreads), kPackThreads, 0, st>>>(
            input, reinterpret_cast<uintptr_t>(input) % 16 == 0, groups, g, codes, scales, zeros, bad);
      } else {
        const int64_t threads = (shape.rows / g) * (shape.cols * BITS / 8);
        pack_columns<In, BITS><<<static_cast<unsigned>((threads + kPackThreads - 1) / kPackThreads), kPackThreads, 0, st>>>(
            input, shape.rows, shape.cols, g, codes, scales, zeros, bad);
      }
      return launched("pack");
    };
    switch (shape.bits) {
      case 2:
        return run(std::integral_constant<int, 2>{});
      case 4:
        return run(std::integral_constant<int, 4>{});
      default:
        return run(std::integral_constant<int, 8>{});
    }
  });
}

Result unpack(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros, const PackShape& shape, DType out_dtype,
              void* out, void* stream) {
  if (shape.bits != 2 && shape.bits != 4 && shape.bits != 8) return Result{Status::Argument, 0, "bits"};
  const int64_t n = shape.rows * shape.cols;
  if (n == 0) return Result{};
  unpack_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      codes, scales, zeros, shape.rows, shape.cols, shape.bits, shape.axis, shape.group_size, out_dtype, out);
  return launched("unpack");
}

}  // namespace sh::cuda
