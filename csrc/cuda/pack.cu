// The standalone packer on the device (docs/packing.md). Axis 1 (a group is groupSize consecutive elements
// of a row: values per token): with a power-of-two group of 8 to 256 elements, groupSize / 8 lanes of a
// warp share a group, each loading 8 elements in one or two 16-byte loads, reducing the range by shuffles
// and storing its 8 codes in one store (coalesced across the warp); a thread is kChunks such lanes, loaded
// before any is used, so that enough bytes are in flight to reach the memory's bandwidth. Other groups take
// one thread each. Axis 0 (a group runs down a column: keys per channel): for 16-bit inputs and groups of 8,
// 16 or 32 rows, a thread owns 4 columns of a row group and keeps its rows in registers; otherwise one
// thread per (group of rows, code byte column). Every thread owns the code bytes it writes. Codes come from
// a reciprocal multiply checked against the exact division near ties (quantise_fast_d), so the bits are
// those of the CPU. Unpacking is one thread per element.
#include <algorithm>
#include <type_traits>

#include "packing.cuh"

namespace sh::cuda {
namespace {

constexpr int kPackThreads = 256;
constexpr int kChunks = 4;  // lanes of 8 elements per thread in pack_rows_lanes: 64 bytes of f16 in flight

template <typename In>
__device__ __forceinline__ float load_in(const void* data, int64_t i) {
  if constexpr (sizeof(In) == 4) {
    return static_cast<const float*>(data)[i];
  } else {
    return Elem<In>::load(static_cast<const In*>(data) + i);
  }
}

// Two 16-bit elements of one 32-bit word, as min and max that propagate NaN (so that a NaN poisons its
// group's range, which then fails the range check), and one of them as f32.
template <typename In>
__device__ __forceinline__ uint32_t min2_nan(uint32_t a, uint32_t b) {
  using Two = std::conditional_t<std::is_same_v<In, __half>, __half2, __nv_bfloat162>;
  const Two m = __hmin2_nan(*reinterpret_cast<const Two*>(&a), *reinterpret_cast<const Two*>(&b));
  return *reinterpret_cast<const uint32_t*>(&m);
}

template <typename In>
__device__ __forceinline__ uint32_t max2_nan(uint32_t a, uint32_t b) {
  using Two = std::conditional_t<std::is_same_v<In, __half>, __half2, __nv_bfloat162>;
  const Two m = __hmax2_nan(*reinterpret_cast<const Two*>(&a), *reinterpret_cast<const Two*>(&b));
  return *reinterpret_cast<const uint32_t*>(&m);
}

template <typename In>
__device__ __forceinline__ float half_f32(uint32_t word, int high) {
  const uint16_t bits = static_cast<uint16_t>(high != 0 ? word >> 16 : word);
  return std::is_same_v<In, __half> ? f16_bits_to_f32(bits) : bf16_bits_to_f32(bits);
}

__device__ __forceinline__ float fmin_nan(float a, float b) {
  float m;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(m) : "f"(a), "f"(b));
  return m;
}

// The range of a lane's 8 elements as a pair (min, -max) that one NaN-propagating min reduces, so that a
// shuffle moves both (for 16-bit inputs, in one register). Min and max of 16-bit values are computed on the
// values themselves: converting first would give the same floats, with more instructions.
template <typename In>
struct Span {
  using Pair = uint32_t;
  __device__ static __forceinline__ Pair of(const uint4* raw) {
    const uint4 w = raw[0];
    const uint32_t lo = min2_nan<In>(min2_nan<In>(w.x, w.y), min2_nan<In>(w.z, w.w));
    const uint32_t hi = max2_nan<In>(max2_nan<In>(w.x, w.y), max2_nan<In>(w.z, w.w)) ^ 0x80008000u;
    return min2_nan<In>(__byte_perm(lo, hi, 0x5410), __byte_perm(lo, hi, 0x7632));
  }
  __device__ static __forceinline__ Pair min(Pair a, Pair b) { return min2_nan<In>(a, b); }
  __device__ static __forceinline__ Pair shfl(Pair p, int o, int width) { return __shfl_xor_sync(0xffffffffu, p, o, width); }
  __device__ static __forceinline__ void range(Pair p, float& mn, float& mx) {
    mn = half_f32<In>(p, 0);
    mx = -half_f32<In>(p, 1);
  }
};

template <>
struct Span<float> {
  using Pair = float2;
  __device__ static __forceinline__ Pair of(const uint4* raw) {
    float x[8];
    decode16<float>(raw[0], x);
    decode16<float>(raw[1], x + 4);
    Pair p = make_float2(x[0], -x[0]);
#pragma unroll
    for (int e = 1; e < 8; ++e) p = min(p, make_float2(x[e], -x[e]));
    return p;
  }
  __device__ static __forceinline__ Pair min(Pair a, Pair b) { return make_float2(fmin_nan(a.x, b.x), fmin_nan(a.y, b.y)); }
  __device__ static __forceinline__ Pair shfl(Pair p, int o, int width) {
    return make_float2(__shfl_xor_sync(0xffffffffu, p.x, o, width), __shfl_xor_sync(0xffffffffu, p.y, o, width));
  }
  __device__ static __forceinline__ void range(Pair p, float& mn, float& mx) {
    mn = p.x;
    mx = -p.y;
  }
};

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
  const float inv = inverse_d(s);
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
      for (int e = 0; e < VEC; ++e) put(quantise_checked_d(x[e], s, inv, z, kQmax));
    }
  } else {
    for (int c = 0; c < group; ++c) put(quantise_checked_d(load_in<In>(input, first + c), s, inv, z, kQmax));
  }
  for (int b = 0; b * 8 < filled; ++b) out[at + b] = static_cast<uint8_t>(word >> (8 * b));
}

// Axis 1, power-of-two groups of 8 to 256: LANES = group / 8 lanes a group (shuffle width). Lane
// b * kPackThreads * kChunks + k * kPackThreads + t is chunk k of thread t of block b, so each of a thread's
// loads is coalesced across the warp; a chunk of a block holds whole groups (kPackThreads is a multiple of
// LANES), so every lane of a group is present.
template <typename In, int BITS, int LANES>
__global__ void __launch_bounds__(kPackThreads) pack_rows_lanes(const void* input, int64_t lanes, uint8_t* codes, uint16_t* scales,
                                                                uint16_t* zeros, int32_t* bad) {
  constexpr uint32_t kQmax = (1u << BITS) - 1u;
  constexpr int kLoads = sizeof(In) / 2;  // 16-byte loads per lane
  const int64_t first = blockIdx.x * static_cast<int64_t>(kPackThreads * kChunks) + threadIdx.x;
  uint4 raw[kChunks][kLoads];
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int64_t lane = first + k * kPackThreads;
    const In* in = static_cast<const In*>(input) + (lane < lanes ? lane : 0) * 8;
#pragma unroll
    for (int l = 0; l < kLoads; ++l) raw[k][l] = raw16(in + l * 4);
  }
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int64_t lane = first + k * kPackThreads;
    typename Span<In>::Pair p = Span<In>::of(raw[k]);
#pragma unroll
    for (int o = LANES / 2; o > 0; o >>= 1) p = Span<In>::min(p, Span<In>::shfl(p, o, LANES));
    if (lane >= lanes) continue;
    float mn;
    float mx;
    Span<In>::range(p, mn, mx);
    if (!(mn >= -65504.0f && mx <= 65504.0f)) {
      if (bad != nullptr) atomicOr(bad, 1);
      continue;
    }
    uint16_t sb;
    uint16_t zb;
    group_params_d(mn, mx, kQmax, &sb, &zb);
    if (lane % LANES == 0) {
      scales[lane / LANES] = sb;
      zeros[lane / LANES] = zb;
    }
    const float s = f16_bits_to_f32(sb);
    const float z = f16_bits_to_f32(zb);
    const float inv = inverse_d(s);
    float x[8];
    decode16<In>(raw[k][0], x);
    if constexpr (kLoads == 2) decode16<In>(raw[k][1], x + 4);
    bool near = false;
    uint64_t word = 0;
#pragma unroll
    for (int e = 0; e < 8; ++e) word |= static_cast<uint64_t>(quantise_fast_d(x[e], inv, z, kQmax, near)) << (e * BITS);
    if (near) {
      word = 0;
#pragma unroll
      for (int e = 0; e < 8; ++e) word |= static_cast<uint64_t>(quantise_d(x[e], s, z, kQmax)) << (e * BITS);
    }
    uint8_t* out = codes + lane * BITS;
    if constexpr (BITS == 2) *reinterpret_cast<uint16_t*>(out) = static_cast<uint16_t>(word);
    if constexpr (BITS == 4) *reinterpret_cast<uint32_t*>(out) = static_cast<uint32_t>(word);
    if constexpr (BITS == 8) *reinterpret_cast<uint2*>(out) = make_uint2(static_cast<uint32_t>(word), static_cast<uint32_t>(word >> 32));
  }
}

// Axis 0, 16-bit inputs, groups of G = 8, 16 or 32 rows: thread (row group, quad) owns 4 columns. It loads
// its 8 bytes of each of the G rows before using any (a warp reads 32 quads, 256 contiguous bytes of a row),
// keeps them in registers for both passes, and stores each row's 4 codes, and the 4 scales and zero points,
// in one store each. Needs cols % 4 == 0 and input, codes, scales and zeros aligned to 8, 4, 8 and 8 bytes.
template <typename In, int BITS, int G>
__global__ void __launch_bounds__(kPackThreads) pack_columns_quads(const void* input, int64_t rows, int64_t cols, uint8_t* codes,
                                                                   uint16_t* scales, uint16_t* zeros, int32_t* bad) {
  constexpr uint32_t kQmax = (1u << BITS) - 1u;
  const int64_t quads = cols / 4;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(kPackThreads) + threadIdx.x;
  if (idx >= (rows / G) * quads) return;
  const int64_t rg = idx / quads;
  const int64_t c0 = (idx - rg * quads) * 4;
  const uint2* in = reinterpret_cast<const uint2*>(static_cast<const In*>(input) + rg * G * cols + c0);
  uint2 raw[G];
#pragma unroll
  for (int r = 0; r < G; ++r) raw[r] = __ldg(in + r * quads);
  // Columns c0, c0 + 1 are the halves of word x; c0 + 2, c0 + 3 those of word y.
  uint32_t lo[2] = {raw[0].x, raw[0].y};
  uint32_t hi[2] = {raw[0].x, raw[0].y};
#pragma unroll
  for (int r = 1; r < G; ++r) {
    lo[0] = min2_nan<In>(lo[0], raw[r].x);
    lo[1] = min2_nan<In>(lo[1], raw[r].y);
    hi[0] = max2_nan<In>(hi[0], raw[r].x);
    hi[1] = max2_nan<In>(hi[1], raw[r].y);
  }
  float s[4];
  float z[4];
  float inv[4];
  uint16_t sb[4];
  uint16_t zb[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float mn = half_f32<In>(lo[j / 2], j % 2);
    const float mx = half_f32<In>(hi[j / 2], j % 2);
    if (!(mn >= -65504.0f && mx <= 65504.0f)) {
      if (bad != nullptr) atomicOr(bad, 1);
      return;
    }
    group_params_d(mn, mx, kQmax, &sb[j], &zb[j]);
    s[j] = f16_bits_to_f32(sb[j]);
    z[j] = f16_bits_to_f32(zb[j]);
    inv[j] = inverse_d(s[j]);
  }
  const int64_t g = rg * cols + c0;
  *reinterpret_cast<uint2*>(scales + g) = make_uint2(sb[0] | (static_cast<uint32_t>(sb[1]) << 16), sb[2] | (static_cast<uint32_t>(sb[3]) << 16));
  *reinterpret_cast<uint2*>(zeros + g) = make_uint2(zb[0] | (static_cast<uint32_t>(zb[1]) << 16), zb[2] | (static_cast<uint32_t>(zb[3]) << 16));
#pragma unroll
  for (int r = 0; r < G; ++r) {
    float x[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = half_f32<In>(j < 2 ? raw[r].x : raw[r].y, j % 2);
    bool near = false;
    uint32_t word = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) word |= quantise_fast_d(x[j], inv[j], z[j], kQmax, near) << (j * BITS);
    if (near) {
      word = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) word |= quantise_d(x[j], s[j], z[j], kQmax) << (j * BITS);
    }
    uint8_t* out = codes + ((rg * G + r) * cols + c0) * BITS / 8;
    if constexpr (BITS == 2) *out = static_cast<uint8_t>(word);
    if constexpr (BITS == 4) *reinterpret_cast<uint16_t*>(out) = static_cast<uint16_t>(word);
    if constexpr (BITS == 8) *reinterpret_cast<uint32_t*>(out) = word;
  }
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
    inv[j] = inverse_d(s[j]);
  }
  if (!fine) {
    if (bad != nullptr) atomicOr(bad, 1);
    return;
  }
  for (int r = 0; r < group; ++r) {
    uint32_t byte = 0;
#pragma unroll
    for (int j = 0; j < PER; ++j) byte |= quantise_checked_d(load_in<In>(input, (r0 + r) * cols + c0 + j), s[j], inv[j], z[j], kQmax) << (j * BITS);
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

// Whether axis 0 can take pack_columns_quads (whose conditions it states).
bool quads(const void* input, const PackShape& shape, const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros,
           size_t elem) {
  const auto at = [](const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; };
  const int64_t g = shape.group_size;
  return shape.axis == 0 && elem == 2 && (g == 8 || g == 16 || g == 32) && shape.cols % 4 == 0 && at(input, 8) && at(codes, 4) &&
         at(scales, 8) && at(zeros, 8);
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
        const unsigned blocks = static_cast<unsigned>((lanes + kPackThreads * kChunks - 1) / (kPackThreads * kChunks));
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
      } else if (quads(input, shape, codes, scales, zeros, sizeof(In))) {
        const unsigned blocks = static_cast<unsigned>(((shape.rows / g) * (shape.cols / 4) + kPackThreads - 1) / kPackThreads);
        if constexpr (sizeof(In) == 2) {
          switch (g) {
            case 8:
              pack_columns_quads<In, BITS, 8><<<blocks, kPackThreads, 0, st>>>(input, shape.rows, shape.cols, codes, scales, zeros, bad);
              break;
            case 16:
              pack_columns_quads<In, BITS, 16><<<blocks, kPackThreads, 0, st>>>(input, shape.rows, shape.cols, codes, scales, zeros, bad);
              break;
            default:
              pack_columns_quads<In, BITS, 32><<<blocks, kPackThreads, 0, st>>>(input, shape.rows, shape.cols, codes, scales, zeros, bad);
          }
        }
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
