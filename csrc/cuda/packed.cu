// append to a packed store (docs/semantics.md#packed-storage): one block per KV head writes the tokens,
// one at a time, at the end of the head's residual window and initialises their tracker state; whenever
// the window holds residual + group tokens its oldest group is packed into a new key run (per channel)
// and their values per token, merging the two thinnest neighbouring runs first when the run table is
// full, exactly as src/backend/packed-store.ts does. Every block first checks every input of the call,
// so a key or value that cannot be packed leaves every head unchanged (kErrorUnpackable).
// Also the byte ledger of a packed KVCache (api.h account_packed): the counts it depends on (tokens packed,
// runs in use) change in the append and eviction kernels, so the bytes are counted on the device too, by
// one warp per (layer, sequence) after those kernels in stream order; no host copy until stats() reads it.
#include "packing.cuh"

namespace sh::cuda {
namespace {

constexpr int kThreads = 256;

struct PackedAppendParams {
  PackedArgs pk;
  int32_t* positions;
  float* scores;
  uint32_t* aux;
  int32_t* lengths;
  int32_t* error;
  Tensor k;
  Tensor v;
  int32_t seq;
  int32_t kv_heads;
  int32_t head_dim;
  int32_t capacity;
  int32_t aux_words;
  int32_t count;
  int32_t first_position;
  uint32_t layer;
  TrackerArgs tracker;
};

// Element i of a caller's array as the store keeps it: rounded to T (as the CPU rounds), then widened.
template <typename T>
__device__ __forceinline__ T stored(const Tensor& src, int64_t i) {
  if constexpr (sizeof(T) == 4) {
    return static_cast<const float*>(src.data)[i];
  } else {
    T out;
    if (src.dtype == DType::F32) {
      Elem<T>::store_f32(&out, static_cast<const float*>(src.data)[i]);
    } else {
      *reinterpret_cast<uint16_t*>(&out) = static_cast<const uint16_t*>(src.data)[i];
    }
    return out;
  }
}

// Merges the two neighbouring runs with the fewest tokens together (at most group; the lower pair on a
// tie): their keys are dequantised and quantised again as one run, codes rewritten in place by the thread
// that owns each code byte column. Returns false (the table is corrupt) when no pair fits.
template <int BITS>
__device__ bool merge_runs(const PackedArgs& p, size_t i, int runs, int* s_pair) {
  constexpr uint32_t kQmax = (1u << BITS) - 1u;
  constexpr int PER = 8 / BITS;
  const int d = p.code_bytes * 8 / BITS;
  int32_t* lengths = p.run_lengths + i * p.max_runs;
  if (threadIdx.x == 0) {
    int best = -1;
    for (int a = 0; a + 1 < runs; ++a) {
      const int n = lengths[a] + lengths[a + 1];
      if (n <= p.group && (best < 0 || n < lengths[best] + lengths[best + 1])) best = a;
    }
    int start = 0;
    for (int r = 0; r < best; ++r) start += lengths[r];
    s_pair[0] = best;
    s_pair[1] = start;
  }
  __syncthreads();
  const int best = s_pair[0];
  const int start = s_pair[1];
  if (best < 0) return false;
  const int na = lengths[best];
  const int nb = lengths[best + 1];
  uint16_t* ks = p.key_scales + (i * p.max_runs + best) * d;
  uint16_t* kz = p.key_zeros + (i * p.max_runs + best) * d;
  uint8_t* codes = p.key_codes + (i * p.packed_slots + start) * p.code_bytes;
  for (int bc = threadIdx.x; bc < p.code_bytes; bc += blockDim.x) {
    float sa[PER], za[PER], sb[PER], zb[PER], ns[PER], nz[PER];
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int c = bc * PER + j;
      sa[j] = f16_bits_to_f32(ks[c]);
      za[j] = f16_bits_to_f32(kz[c]);
      sb[j] = f16_bits_to_f32(ks[d + c]);
      zb[j] = f16_bits_to_f32(kz[d + c]);
      float mn = INFINITY;
      float mx = -INFINITY;
      for (int t = 0; t < na + nb; ++t) {
        const uint32_t code = (codes[t * p.code_bytes + bc] >> (j * BITS)) & kQmax;
        const float x = t < na ? dequantise_d(code, sa[j], za[j]) : dequantise_d(code, sb[j], zb[j]);
        mn = fminf(mn, x);
        mx = fmaxf(mx, x);
      }
      uint16_t sbits;
      uint16_t zbits;
      group_params_d(mn, mx, kQmax, &sbits, &zbits);
      ns[j] = f16_bits_to_f32(sbits);
      nz[j] = f16_bits_to_f32(zbits);
      ks[c] = sbits;
      kz[c] = zbits;
    }
    for (int t = 0; t < na + nb; ++t) {
      const uint32_t old = codes[t * p.code_bytes + bc];
      uint32_t byte = 0;
#pragma unroll
      for (int j = 0; j < PER; ++j) {
        const uint32_t code = (old >> (j * BITS)) & kQmax;
        const float x = t < na ? dequantise_d(code, sa[j], za[j]) : dequantise_d(code, sb[j], zb[j]);
        byte |= quantise_d(x, ns[j], nz[j], kQmax) << (j * BITS);
      }
      codes[t * p.code_bytes + bc] = static_cast<uint8_t>(byte);
    }
  }
  // Every read of the pair's old entries is done before the entries after it move down by one (each
  // thread its own channels, in order).
  __syncthreads();
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    for (int r = best + 2; r < runs; ++r) {
      ks[(r - 1 - best) * d + c] = ks[(r - best) * d + c];
      kz[(r - 1 - best) * d + c] = kz[(r - best) * d + c];
    }
  }
  if (threadIdx.x == 0) {
    uint8_t* generations = p.run_generations + i * p.max_runs;
    const int generation = min(255, max(generations[best], generations[best + 1]) + 1);
    lengths[best] = na + nb;
    generations[best] = static_cast<uint8_t>(generation);
    for (int r = best + 2; r < runs; ++r) {
      lengths[r - 1] = lengths[r];
      generations[r - 1] = generations[r];
    }
  }
  __syncthreads();
  return true;
}

// Packs the oldest `group` residual tokens of head i into run `run` at packed slots [packed, packed +
// group): keys per channel (a thread per code byte column), values per token (a thread per value group).
template <typename T, int BITS>
__device__ void pack_oldest(const PackedArgs& p, size_t i, int packed, int run) {
  constexpr uint32_t kQmax = (1u << BITS) - 1u;
  constexpr int PER = 8 / BITS;
  const int d = p.code_bytes * 8 / BITS;
  const int g = p.group;
  const T* rk = reinterpret_cast<const T*>(p.residual_keys) + i * p.residual_slots * d;
  const T* rv = reinterpret_cast<const T*>(p.residual_values) + i * p.residual_slots * d;
  uint8_t* kc = p.key_codes + (i * p.packed_slots + packed) * p.code_bytes;
  uint8_t* vc = p.value_codes + (i * p.packed_slots + packed) * p.code_bytes;
  for (int bc = threadIdx.x; bc < p.code_bytes; bc += blockDim.x) {
    float s[PER], z[PER];
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int c = bc * PER + j;
      float mn = INFINITY;
      float mx = -INFINITY;
      for (int t = 0; t < g; ++t) {
        const float x = Elem<T>::load(rk + t * d + c);
        mn = fminf(mn, x);
        mx = fmaxf(mx, x);
      }
      uint16_t sbits;
      uint16_t zbits;
      group_params_d(mn, mx, kQmax, &sbits, &zbits);
      p.key_scales[(i * p.max_runs + run) * d + c] = sbits;
      p.key_zeros[(i * p.max_runs + run) * d + c] = zbits;
      s[j] = f16_bits_to_f32(sbits);
      z[j] = f16_bits_to_f32(zbits);
    }
    for (int t = 0; t < g; ++t) {
      uint32_t byte = 0;
#pragma unroll
      for (int j = 0; j < PER; ++j) byte |= quantise_d(Elem<T>::load(rk + t * d + bc * PER + j), s[j], z[j], kQmax) << (j * BITS);
      kc[t * p.code_bytes + bc] = static_cast<uint8_t>(byte);
    }
  }
  const int groups = d / g;
  for (int idx = threadIdx.x; idx < g * groups; idx += blockDim.x) {
    const int t = idx / groups;
    const int q = idx - t * groups;
    const T* x = rv + t * d + q * g;
    float mn = INFINITY;
    float mx = -INFINITY;
    for (int c = 0; c < g; ++c) {
      mn = fminf(mn, Elem<T>::load(x + c));
      mx = fmaxf(mx, Elem<T>::load(x + c));
    }
    uint16_t sbits;
    uint16_t zbits;
    group_params_d(mn, mx, kQmax, &sbits, &zbits);
    const size_t slot = i * p.packed_slots + packed + t;
    p.value_scales[slot * groups + q] = sbits;
    p.value_zeros[slot * groups + q] = zbits;
    const float s = f16_bits_to_f32(sbits);
    const float z = f16_bits_to_f32(zbits);
    // A value group owns g * BITS / 8 whole bytes of its token's codes.
    uint8_t* out = vc + t * p.code_bytes + q * g * BITS / 8;
    for (int b = 0; b < g / PER; ++b) {
      uint32_t byte = 0;
#pragma unroll
      for (int j = 0; j < PER; ++j) byte |= quantise_d(Elem<T>::load(x + b * PER + j), s, z, kQmax) << (j * BITS);
      out[b] = static_cast<uint8_t>(byte);
    }
  }
  __syncthreads();
}

template <typename T, int BITS>
__global__ void __launch_bounds__(kThreads) packed_append_kernel(const PackedAppendParams p) {
  __shared__ int s_bad;
  __shared__ int s_pair[2];
  const int h = blockIdx.x;
  const int tid = threadIdx.x;
  const size_t i = static_cast<size_t>(p.seq) * p.kv_heads + h;
  const int d = p.head_dim;
  const PackedArgs& pk = p.pk;
  int n = p.lengths[i];
  if (n < 0 || n > p.capacity || p.count > p.capacity - n) {
    if (tid == 0) atomicOr(p.error, n < 0 || n > p.capacity ? kErrorBadLength : kErrorNoRoom);
    return;
  }
  if (tid == 0) s_bad = 0;
  __syncthreads();
  const int64_t row = static_cast<int64_t>(p.kv_heads) * d;
  for (int64_t idx = tid; idx < static_cast<int64_t>(p.count) * row; idx += kThreads) {
    const int64_t t = idx / row;
    const int64_t e = idx - t * row;
    const T ks = stored<T>(p.k, t * p.k.row_stride + e);
    const T vs = stored<T>(p.v, t * p.v.row_stride + e);
    const float kx = Elem<T>::load(&ks);
    const float vx = Elem<T>::load(&vs);
    if (!packable_d(kx) || !packable_d(vx)) atomicExch(&s_bad, 1);
  }
  __syncthreads();
  if (s_bad != 0) {
    if (tid == 0) atomicOr(p.error, kErrorUnpackable);
    return;
  }
  int packed = pk.packed[i];
  int runs = pk.runs[i];
  T* rk = reinterpret_cast<T*>(pk.residual_keys) + i * pk.residual_slots * d;
  T* rv = reinterpret_cast<T*>(pk.residual_values) + i * pk.residual_slots * d;
  const size_t base = i * p.capacity;
  for (int t = 0; t < p.count; ++t) {
    const int r = n - packed;
    for (int c = tid; c < d; c += kThreads) {
      rk[r * d + c] = stored<T>(p.k, t * p.k.row_stride + static_cast<int64_t>(h) * d + c);
      rv[r * d + c] = stored<T>(p.v, t * p.v.row_stride + static_cast<int64_t>(h) * d + c);
    }
    // Aux words are word-major per head: [word][capacity].
    for (int w = tid; w < p.aux_words; w += kThreads) p.aux[(i * p.aux_words + w) * p.capacity + n] = 0;
    __syncthreads();
    if (tid == 0) {
      const int32_t position = p.first_position + t;
      p.positions[base + n] = position;
      // The tracker's append rule over the key as the window stores it.
      p.scores[base + n] = append_score<T>(rk + r * d, d, p.tracker, p.layer, h, position);
    }
    n += 1;
    if (n - packed >= pk.residual + pk.group) {
      bool merged = false;
      if (runs == pk.max_runs) {
        if (!merge_runs<BITS>(pk, i, runs, s_pair)) {
          if (tid == 0) atomicOr(p.error, kErrorBadLength);
          return;
        }
        runs -= 1;
        merged = true;
      }
      pack_oldest<T, BITS>(pk, i, packed, runs);
      if (tid == 0) {
        pk.run_lengths[i * pk.max_runs + runs] = pk.group;
        pk.run_generations[i * pk.max_runs + runs] = 0;
        pk.runs[i] = runs + 1;
      }
      // The window's newest `residual` rows move to its front, a group of rows at a time (the rows a step
      // writes were read by an earlier step).
      for (int from = pk.group; from < n - packed; from += pk.group) {
        const int rows = min(pk.group, n - packed - from);
        for (int idx = tid; idx < rows * d; idx += kThreads) {
          rk[(from - pk.group) * d + idx] = rk[from * d + idx];
          rv[(from - pk.group) * d + idx] = rv[from * d + idx];
        }
        __syncthreads();
      }
      __syncthreads();
      int32_t* slot_run = pk.slot_run + i * pk.packed_slots;
      if (merged) {
        rebuild_slot_runs(pk, i);
      } else {
        for (int q = tid; q < pk.group; q += kThreads) slot_run[packed + q] = runs;
      }
      packed += pk.group;
      runs += 1;
    }
    __syncthreads();
  }
  if (tid == 0) {
    p.lengths[i] = n;
    pk.packed[i] = packed;
    pk.runs[i] = runs;
  }
}

__global__ void rebuild_index_kernel(const PackedArgs p) {
  rebuild_slot_runs(p, blockIdx.x);
}

struct AccountParams {
  const int32_t* lengths;
  const int32_t* packed;
  const int32_t* runs;
  int64_t* ledger;
  int32_t seq;
  int32_t kv_heads;
  int32_t entry;
  // Bytes of a packed token (key and value codes, value scales and zero points), of a run's table entry
  // (per-channel key scales and zero points, length and generation) and of a residual token (two rows).
  int64_t per_packed;
  int64_t per_run;
  int64_t per_residual;
  int64_t meta_per_token;
};

__global__ void __launch_bounds__(32) account_kernel(const AccountParams p) {
  int64_t bytes = 0;
  int64_t tokens = 0;
  for (int h = threadIdx.x; h < p.kv_heads; h += 32) {
    const size_t i = static_cast<size_t>(p.seq) * p.kv_heads + h;
    const int64_t n = p.lengths[i];
    const int64_t packed = p.packed[i];
    bytes += packed * p.per_packed + p.runs[i] * p.per_run + (n - packed) * p.per_residual;
    tokens += n;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    bytes += __shfl_down_sync(0xffffffffu, bytes, offset);
    tokens += __shfl_down_sync(0xffffffffu, tokens, offset);
  }
  if (threadIdx.x != 0) return;
  int64_t* entry = p.ledger + kLedgerHeader + 2 * static_cast<size_t>(p.entry);
  const int64_t kv = p.ledger[kLedgerKvBytes] + bytes - entry[0];
  const int64_t kept = p.ledger[kLedgerTokens] + tokens - entry[1];
  entry[0] = bytes;
  entry[1] = tokens;
  p.ledger[kLedgerKvBytes] = kv;
  p.ledger[kLedgerTokens] = kept;
  const int64_t used = kv + kept * p.meta_per_token;
  if (used > p.ledger[kLedgerPeak]) p.ledger[kLedgerPeak] = used;
}

}  // namespace

Result append_packed(const Store& store, int32_t seq, Tensor k, Tensor v, int32_t count, int32_t first_position,
                     const TrackerSpec& tracker, void* stream) {
  const StoreSpec& s = store.spec;
  PackedAppendParams p{};
  p.pk = packed_args(store);
  p.positions = store.positions;
  p.scores = store.scores;
  p.aux = store.aux;
  p.lengths = store.lengths;
  p.error = store.error;
  p.k = k;
  p.v = v;
  p.seq = seq;
  p.kv_heads = s.kv_heads;
  p.head_dim = s.head_dim;
  p.capacity = s.capacity;
  p.aux_words = s.aux_words;
  p.count = count;
  p.first_position = first_position;
  p.layer = s.layer;
  p.tracker = tracker_args(tracker);
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  return SH_DISPATCH_DTYPE(s.dtype, T, [&]() -> Result {
    switch (s.bits) {
      case 2:
        packed_append_kernel<T, 2><<<s.kv_heads, kThreads, 0, st>>>(p);
        break;
      case 4:
        packed_append_kernel<T, 4><<<s.kv_heads, kThreads, 0, st>>>(p);
        break;
      default:
        packed_append_kernel<T, 8><<<s.kv_heads, kThreads, 0, st>>>(p);
    }
    return launched("append_packed");
  });
}

Result rebuild_packed_index(const Store& store, void* stream) {
  if (store.spec.bits == 0) return Result{};
  const unsigned heads = static_cast<unsigned>(store.spec.max_sequences * store.spec.kv_heads);
  rebuild_index_kernel<<<heads, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(packed_args(store));
  return launched("rebuild_packed_index");
}

Result account_packed(const Store& store, int32_t seq, int64_t* ledger, int32_t entry, int64_t meta_per_token, void* stream) {
  const StoreSpec& s = store.spec;
  if (s.bits == 0 || seq < 0 || seq >= s.max_sequences || entry < 0 || meta_per_token < 0) return Result{Status::Argument, 0, "account"};
  const int64_t d = s.head_dim;
  AccountParams p{};
  p.lengths = store.lengths;
  p.packed = store.packed.packed;
  p.runs = store.packed.runs;
  p.ledger = ledger;
  p.seq = seq;
  p.kv_heads = s.kv_heads;
  p.entry = entry;
  p.per_packed = 2 * (d * s.bits / 8) + 4 * (d / s.group_size);
  p.per_run = 4 * d + 5;
  p.per_residual = static_cast<int64_t>(2 * row_bytes(s));
  p.meta_per_token = meta_per_token;
  account_kernel<<<1, 32, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launched("account_packed");
}

}  // namespace sh::cuda
