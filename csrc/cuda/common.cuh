// Shared device code: element types, exact conversions, dispatch, the tracker rules.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "api.h"

namespace sh::cuda {

// ---- element conversions (bit for bit the rounding of csrc/include/scissorhands/dtype.h) ----


__device__ inline uint16_t f32_to_f16_bits(float value) {
  const uint32_t x = __float_as_uint(value);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xffu) return static_cast<uint16_t>(sign | 0x7c00u | (mant != 0 ? 0x200u | (mant >> 13) : 0u));
  const int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const int shift = 14 - e;
    const uint32_t half = 1u << (shift - 1);
    uint32_t h = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1);
    if (rest > half || (rest == half && (h & 1u) != 0)) h += 1;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) != 0)) h += 1;
  return static_cast<uint16_t>(sign | h);
}

__device__ inline uint16_t f32_to_bf16_bits(float value) {
  const uint32_t x = __float_as_uint(value);
  if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu) != 0) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float f16_bits_to_f32(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t bits) { return __uint_as_float(static_cast<uint32_t>(bits) << 16); }

// Storage element types: T is the C++ type, Bits its raw form.
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  static constexpr DType dtype = DType::F32;
  __device__ static __forceinline__ float load(const float* p) { return *p; }
  __device__ static __forceinline__ void store_f32(float* p, float x) { *p = x; }
};
template <>
struct Elem<__half> {
  static constexpr DType dtype = DType::F16;
  __device__ static __forceinline__ float load(const __half* p) { return __half2float(*p); }
  __device__ static __forceinline__ void store_f32(__half* p, float x) {
    *reinterpret_cast<uint16_t*>(p) = f32_to_f16_bits(x);
  }
};
template <>
struct Elem<__nv_bfloat16> {
  static constexpr DType dtype = DType::BF16;
  __device__ static __forceinline__ float load(const __nv_bfloat16* p) {
    return bf16_bits_to_f32(*reinterpret_cast<const uint16_t*>(p));
  }
  __device__ static __forceinline__ void store_f32(__nv_bfloat16* p, float x) {
    *reinterpret_cast<uint16_t*>(p) = f32_to_bf16_bits(x);
  }
};

// Decodes the 16 bytes at p (16-byte aligned) into 16 / sizeof(T) floats.
template <typename T>
__device__ __forceinline__ void load16(const T* p, float* out) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  if constexpr (sizeof(T) == 4) {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z);
    out[3] = __uint_as_float(raw.w);
  } else {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (Elem<T>::dtype == DType::F16) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
      } else {
        out[2 * i] = __uint_as_float(words[i] << 16);
        out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
      }
    }
  }
}

// Raw 16-byte load (decoded later, so several loads can be in flight first).
__device__ __forceinline__ uint4 raw16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// 16 bytes read once per call (a decode's keys and values): evict-first in the caches, so the smaller
// arrays the same launch reads again (raw scores, partials, tracker state) stay in L2. Coherent with the
// launch's own writes (an attend's new token).
__device__ __forceinline__ uint4 stream16(const void* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }

// Fetches the 128-byte line at p into L2, to be kept there over streamed data.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(p)); }

// Fetches into L2 the 128-byte lines that hold [p, p + bytes), a line a thread of the block.
__device__ __forceinline__ void prefetch_lines(const void* p, int bytes) {
  if (bytes <= 0) return;
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) >> 7;
  const uintptr_t last = (reinterpret_cast<uintptr_t>(p) + bytes - 1) >> 7;
  for (uintptr_t line = first + threadIdx.x; line <= last; line += blockDim.x) prefetch_l2(reinterpret_cast<const void*>(line << 7));
}

// Flags between blocks of one launch, at GPU scope (PTX memory model). A block publishes what its threads
// wrote by __syncthreads() and then one thread's release; a thread that acquires the flag, followed by
// __syncthreads(), gives its block those writes. Release and acquire order only what they must, where
// __threadfence() is a sequentially consistent fence.
__device__ __forceinline__ int32_t atomic_add_acq_rel(int32_t* p, int32_t v) {
  int32_t old;
  asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}
__device__ __forceinline__ int32_t load_acquire(const int32_t* p) {
  int32_t v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void store_release(int32_t* p, int32_t v) {
  asm volatile("st.release.gpu.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

template <typename T>
__device__ __forceinline__ void decode16(uint4 raw, float* out) {
  if constexpr (sizeof(T) == 4) {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z);
    out[3] = __uint_as_float(raw.w);
  } else {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (Elem<T>::dtype == DType::F16) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
      } else {
        out[2 * i] = __uint_as_float(words[i] << 16);
        out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
      }
    }
  }
}

// An element of a caller's array: f32, or bits of the 16-bit dtype `dtype`.
__device__ __forceinline__ float load_input(const void* data, DType dtype, int64_t i) {
  if (dtype == DType::F32) return static_cast<const float*>(data)[i];
  const uint16_t bits = static_cast<const uint16_t*>(data)[i];
  return dtype == DType::F16 ? f16_bits_to_f32(bits) : bf16_bits_to_f32(bits);
}

__device__ __forceinline__ void store_output(void* data, DType dtype, int64_t i, float x) {
  if (dtype == DType::F32) {
    static_cast<float*>(data)[i] = x;
  } else {
    static_cast<uint16_t*>(data)[i] = dtype == DType::F16 ? f32_to_f16_bits(x) : f32_to_bf16_bits(x);
  }
}

// ---- the tracker rules of docs/semantics.md ----

struct TrackerArgs {
  int32_t kind;
  uint32_t window;
  uint32_t seed;
  int32_t gqa_max;
  int32_t observes;
};

inline TrackerArgs tracker_args(const TrackerSpec& spec) {
  return TrackerArgs{static_cast<int32_t>(spec.kind), spec.window, spec.seed, spec.gqa == GqaReduce::Max ? 1 : 0,
                     spec.observes ? 1 : 0};
}

// Whether the kernels update the tracker state from attention probabilities.
__host__ __device__ inline bool tracker_observes(const TrackerArgs& t) {
  return t.observes != 0 &&
         (t.kind == static_cast<int32_t>(TrackerKind::Scissorhands) || t.kind == static_cast<int32_t>(TrackerKind::H2O) ||
          t.kind == static_cast<int32_t>(TrackerKind::Tova));
}

// Math.max: NaN wins, +0 beats -0.
__device__ __forceinline__ float js_max(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  if (a == b) return signbit(a) ? b : a;
  return a > b ? a : b;
}

// Folds the probability of query g of the group into the combined value (in query-head order).
__device__ __forceinline__ float gqa_fold(float acc, float p, int g, int gqa_max) {
  if (gqa_max != 0) return g == 0 ? p : js_max(acc, p);
  return g == 0 ? __fadd_rn(0.0f, p) : __fadd_rn(acc, p);
}

__device__ __forceinline__ float gqa_finish(float acc, int group, int gqa_max) {
  return gqa_max != 0 ? acc : __fdiv_rn(acc, static_cast<float>(group));
}

// The aux word (0 for rules without one) that an observation at `step` reads and writes.
__device__ __forceinline__ size_t observed_word(const TrackerArgs& t, uint64_t step) {
  return t.kind == static_cast<int32_t>(TrackerKind::Scissorhands) ? static_cast<size_t>((step % t.window) >> 5) : 0;
}

// One observation (combined probability c of a token, n slots attended, clock step) applied to the
// token's score and its observed_word, as values: callers that observe several tokens load them all
// first, so the loads are in flight together.
__device__ __forceinline__ void observe_rule(float& score, uint32_t& word, const TrackerArgs& t, float c, int n, uint64_t step) {
  if (t.kind == static_cast<int32_t>(TrackerKind::Scissorhands)) {
    const uint32_t mask = 1u << ((step % t.window) & 31);
    const int unimportant = static_cast<double>(c) < 1.0 / static_cast<double>(n) ? 1 : 0;
    const int old = (word & mask) != 0 ? 1 : 0;
    score = __fsub_rn(score, static_cast<float>(unimportant - old));
    word = unimportant != 0 ? (word | mask) : (word & ~mask);
  } else if (t.kind == static_cast<int32_t>(TrackerKind::H2O)) {
    score = __fadd_rn(score, c);
  } else if (t.kind == static_cast<int32_t>(TrackerKind::Tova)) {
    score = c;
  }
}

// Applies one observation to the token's score and aux words in place; word w of the token is
// aux[w * word_stride]. Device stores keep aux words word-major per (sequence, head) ([word][capacity],
// so a rule touching one word per token reads and writes contiguous memory); host stores are
// token-major (copyStoreToHost transposes).
__device__ __forceinline__ void observe_token(float* score, uint32_t* aux, size_t word_stride, const TrackerArgs& t, float c,
                                              int n, uint64_t step) {
  uint32_t* word = aux + observed_word(t, step) * word_stride;
  float sc = *score;
  uint32_t w = t.kind == static_cast<int32_t>(TrackerKind::Scissorhands) ? *word : 0u;
  observe_rule(sc, w, t, c, n, step);
  *score = sc;
  if (t.kind == static_cast<int32_t>(TrackerKind::Scissorhands)) *word = w;
}

__device__ __forceinline__ uint32_t random_mix_d(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

__device__ __forceinline__ float random_score_d(uint32_t seed, uint32_t layer, uint32_t kv_head, int32_t position) {
  const uint32_t h = random_mix_d(random_mix_d(random_mix_d(seed ^ layer) ^ kv_head) ^ static_cast<uint32_t>(position));
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

// ---- where a head lives (docs/semantics.md "Per-head layout") ----

// Head i = seq * kvHeads + head of a store. Dense stores (plane 0) compute everything from i, so their
// kernels load nothing more than before; per-head stores read bases and capacities, and keep aux words
// word-major over the whole store ([word][maxSequences * slots]) instead of per head, so that a relayout
// (heads moving, capacities changing) moves each word plane like the other per-token arrays.
struct HeadMap {
  const int32_t* bases;
  const int32_t* caps;
  int32_t capacity;
  int32_t aux_words;
  int64_t plane;
};

struct HeadAt {
  size_t base;        // slot 0 in the per-token arrays
  size_t aux;         // word 0 of slot 0 in aux
  size_t aux_stride;  // from one aux word to the next of a token
  int32_t cap;        // slots the head owns
};

__device__ __forceinline__ HeadAt head_at(const HeadMap& m, size_t i) {
  if (m.plane == 0) {
    const size_t b = i * static_cast<size_t>(m.capacity);
    return HeadAt{b, b * static_cast<size_t>(m.aux_words), static_cast<size_t>(m.capacity), m.capacity};
  }
  const size_t b = static_cast<size_t>(m.bases[i]);
  return HeadAt{b, b, static_cast<size_t>(m.plane), m.caps[i]};
}

inline HeadMap head_map(const Store& s) {
  return HeadMap{s.bases, s.caps, s.spec.capacity, s.spec.aux_words,
                 s.spec.slots == 0 ? 0 : static_cast<int64_t>(s.spec.max_sequences) * s.spec.slots};
}

// The score a token starts with (the tracker's append rule): keyNorm the negated L2 norm of the key as
// stored (sum of squares in f64, in element order), random the hash of (seed, layer, head, position),
// position the position, every other tracker 0. The dense and packed appends and restart_state share it.
template <typename T>
__device__ __forceinline__ float append_score(const T* key, int d, const TrackerArgs& t, uint32_t layer, int head, int32_t position) {
  if (t.kind == static_cast<int32_t>(TrackerKind::KeyNorm)) {
    double sum = 0.0;
    for (int c = 0; c < d; ++c) {
      const double x = Elem<T>::load(key + c);
      sum = __dadd_rn(sum, __dmul_rn(x, x));
    }
    return -static_cast<float>(sqrt(sum));
  }
  if (t.kind == static_cast<int32_t>(TrackerKind::Random)) return random_score_d(t.seed, layer, static_cast<uint32_t>(head), position);
  if (t.kind == static_cast<int32_t>(TrackerKind::Position)) return static_cast<float>(position);
  return 0.0f;
}

// ---- dense append (append_kernel, and the decode split kernels when they append the token they attend) ----

// Stores element i of a caller's array as T: a copy of the bits when the input has the store's dtype,
// else rounded from f32 (exactly as the CPU backend rounds).
template <typename T>
__device__ __forceinline__ void put_input(T* dst, const Tensor& src, int64_t i) {
  if constexpr (sizeof(T) == 4) {
    *dst = static_cast<const float*>(src.data)[i];
  } else {
    if (src.dtype == DType::F32) {
      Elem<T>::store_f32(dst, static_cast<const float*>(src.data)[i]);
    } else {
      *reinterpret_cast<uint16_t*>(dst) = static_cast<const uint16_t*>(src.data)[i];
    }
  }
}

// The block writes rows [0, count) of KV head h of the caller's k and v to keys and values (the head's
// slot n onwards) and zeroes those tokens' aux words (word-major, HeadAt::aux_stride apart).
template <typename T>
__device__ __forceinline__ void append_rows(T* keys, T* values, uint32_t* aux, const HeadAt& at, int32_t n, const Tensor& k,
                                            const Tensor& v, int h, int d, int aux_words, int32_t count) {
  const int64_t total = static_cast<int64_t>(count) * d;
  for (int64_t idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int64_t i = idx / d;
    const int64_t c = idx - i * d;
    put_input(keys + idx, k, i * k.row_stride + static_cast<int64_t>(h) * d + c);
    put_input(values + idx, v, i * v.row_stride + static_cast<int64_t>(h) * d + c);
  }
  for (int64_t idx = threadIdx.x; idx < static_cast<int64_t>(count) * aux_words; idx += blockDim.x) {
    const int64_t w = idx / count;
    const int64_t i = idx - w * count;
    aux[at.aux + w * at.aux_stride + n + i] = 0;
  }
}

// After append_rows and a barrier (the rule may read the stored keys): the tokens' positions and
// starting scores at slots [slot, slot + count).
template <typename T>
__device__ __forceinline__ void append_state(const T* keys, int32_t* positions, float* scores, size_t slot, int d, int32_t count,
                                             int32_t first_position, const TrackerArgs& t, uint32_t layer, int h) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const int32_t position = first_position + i;
    positions[slot + i] = position;
    scores[slot + i] = append_score(keys + static_cast<int64_t>(i) * d, d, t, layer, h, position);
  }
}

// ---- reductions ----

// One key of a streaming attention loop (decode_stream, prefill): its score s enters the online softmax
// (m, l and the output sums acc rescaled when the max grows); returns the key's weight exp(s - m).
template <int PER>
__device__ __forceinline__ float online_softmax(float s, float& m, float& l, float (&acc)[PER]) {
  if (s > m) {
    const float alpha = m == -INFINITY ? 0.0f : __expf(m - s);
    l *= alpha;
#pragma unroll
    for (int e = 0; e < PER; ++e) acc[e] *= alpha;
    m = s;
  }
  const float w = __expf(s - m);
  l += w;
  return w;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- dispatch: runtime (dtype, head size) to template arguments ----

#define SH_DISPATCH_HEAD_DIM(head_dim, D, ...)        \
  [&]() -> Result {                                   \
    switch (head_dim) {                               \
      case 64: {                                      \
        constexpr int D = 64;                         \
        return __VA_ARGS__();                         \
      }                                               \
      case 128: {                                     \
        constexpr int D = 128;                        \
        return __VA_ARGS__();                         \
      }                                               \
      case 256: {                                     \
        constexpr int D = 256;                        \
        return __VA_ARGS__();                         \
      }                                               \
      default:                                        \
        return Result{Status::Argument, 0, "headDim"}; \
    }                                                 \
  }()

#define SH_DISPATCH_DTYPE(dtype, T, ...)            \
  [&]() -> Result {                                 \
    switch (dtype) {                                \
      case DType::F32: {                            \
        using T = float;                            \
        return __VA_ARGS__();                       \
      }                                             \
      case DType::F16: {                            \
        using T = __half;                           \
        return __VA_ARGS__();                       \
      }                                             \
      case DType::BF16: {                           \
        using T = __nv_bfloat16;                    \
        return __VA_ARGS__();                       \
      }                                             \
    }                                               \
    return Result{Status::DType, 0, "dtype"};       \
  }()

inline Result launched(const char* what) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? Result{} : Result{Status::Ok, static_cast<int>(e), what};
}

inline size_t head_base(const StoreSpec& s, int32_t seq, int32_t head) {
  return (static_cast<size_t>(seq) * static_cast<size_t>(s.kv_heads) + static_cast<size_t>(head)) *
         static_cast<size_t>(s.capacity);
}

inline size_t row_bytes(const StoreSpec& s) { return static_cast<size_t>(s.head_dim) * bytes_per_element(s.dtype); }

// Bytes of a token's key (or value) row in the keys/values arrays: none for a packed store.
inline size_t dense_row_bytes(const StoreSpec& s) { return s.bits == 0 ? row_bytes(s) : 0; }

}  // namespace sh::cuda
