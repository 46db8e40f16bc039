// Device stores (one allocation per layer), device queries, clear, and the read-bandwidth reference.
#include <algorithm>
#include <cstdio>

#include "common.cuh"
#include "internal.cuh"

namespace sh::cuda {
namespace {

size_t align256(size_t n) { return (n + 255) & ~static_cast<size_t>(255); }

struct Layout {
  size_t keys, values, positions, scores, aux, lengths, attended, steps, scratch, partial, evict_state, error, bases, caps, head_args, total;
  // Packed storage.
  size_t key_codes, value_codes, value_scales, value_zeros, key_scales, key_zeros, run_lengths, run_generations, runs,
      packed, residual_keys, residual_values, slot_run, dropped, run_scratch;
};

// Packed slots, residual slots and run-table entries per head (src/quant/storage.ts packedSizes).
void packed_sizes(const StoreSpec& s, int32_t* packed_slots, int32_t* residual_slots, int32_t* max_runs) {
  *packed_slots = s.capacity >= s.residual + s.group_size ? s.capacity - s.residual : 0;
  *residual_slots = std::min(s.capacity, s.residual + s.group_size);
  *max_runs = 2 * ((*packed_slots + s.group_size - 1) / s.group_size);
}

Layout layout(const StoreSpec& s, int32_t max_splits, int32_t evict_chunks) {
  const size_t heads = static_cast<size_t>(s.max_sequences) * static_cast<size_t>(s.kv_heads);
  // A per-head layout holds `slots` tokens per sequence, shared by its heads.
  const size_t tokens = s.slots != 0 ? static_cast<size_t>(s.max_sequences) * static_cast<size_t>(s.slots)
                                     : heads * static_cast<size_t>(s.capacity);
  Layout l{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += align256(bytes);
    return here;
  };
  const size_t dense_row = s.bits == 0 ? row_bytes(s) : 0;
  l.keys = take(tokens * dense_row);
  l.values = take(tokens * dense_row);
  if (s.bits != 0) {
    int32_t ps = 0, rs = 0, mr = 0;
    packed_sizes(s, &ps, &rs, &mr);
    const size_t d = static_cast<size_t>(s.head_dim);
    const size_t code_bytes = d * static_cast<size_t>(s.bits) / 8;
    const size_t groups = d / static_cast<size_t>(s.group_size);
    l.key_codes = take(heads * ps * code_bytes);
    l.value_codes = take(heads * ps * code_bytes);
    l.value_scales = take(heads * ps * groups * 2);
    l.value_zeros = take(heads * ps * groups * 2);
    l.key_scales = take(heads * mr * d * 2);
    l.key_zeros = take(heads * mr * d * 2);
    l.run_lengths = take(heads * mr * 4);
    l.run_generations = take(heads * mr);
    l.runs = take(heads * 4);
    l.packed = take(heads * 4);
    l.residual_keys = take(heads * rs * row_bytes(s));
    l.residual_values = take(heads * rs * row_bytes(s));
    l.slot_run = take(heads * ps * 4);
    l.dropped = take(heads * static_cast<size_t>(s.capacity));
    l.run_scratch = take(heads * mr * 4);
  }
  l.positions = take(tokens * 4);
  l.scores = take(tokens * 4);
  l.aux = take(tokens * 4 * static_cast<size_t>(s.aux_words));
  l.lengths = take(heads * 4);
  l.attended = take(heads * 4);
  l.steps = take(static_cast<size_t>(s.max_sequences) * 8);
  l.scratch = take(static_cast<size_t>(s.max_sequences) * static_cast<size_t>(s.query_heads) * static_cast<size_t>(s.capacity) * 4);
  l.partial = take(static_cast<size_t>(s.max_sequences) * static_cast<size_t>(s.query_heads) * static_cast<size_t>(max_splits) *
                   (static_cast<size_t>(s.head_dim) + 2) * 4);
  l.evict_state = take(static_cast<size_t>(s.max_sequences) * s.kv_heads * evict_state_ints(evict_chunks) * 4);
  l.error = take(4);
  l.head_args = take(static_cast<size_t>(s.kv_heads) * 2 * 4);
  if (s.slots != 0) {
    l.bases = take(heads * 4);
    l.caps = take(heads * 4);
  }
  l.total = at;
  return l;
}

int32_t splits_for(const StoreSpec& s) {
  // Enough split-K blocks to fill a card for a lone sequence; fewer per sequence when many are batched.
  const int32_t by_batch = std::max<int32_t>(2, (1024 + s.max_sequences - 1) / s.max_sequences);
  const int32_t by_length = std::max<int32_t>(1, (s.capacity + 31) / 32);
  return std::min<int32_t>(64, std::min(by_batch, by_length));
}

__global__ void read_kernel(const uint4* data, size_t n, float* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(data + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  acc = __reduce_xor_sync(0xffffffffu, acc);
  if ((threadIdx.x & 31) == 0 && acc == 0x9e3779b9u) sink[blockIdx.x] = 1.0f;
}

}  // namespace

bool head_dim_supported(int32_t head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

bool packed_spec_supported(const StoreSpec& spec) {
  if (spec.bits == 0) return true;
  return (spec.bits == 2 || spec.bits == 4 || spec.bits == 8) && spec.group_size >= 8 && spec.group_size % 8 == 0 &&
         spec.head_dim % spec.group_size == 0 && spec.residual >= 0;
}

#define SH_STRINGIFY_(x) #x
#define SH_STRINGIFY(x) SH_STRINGIFY_(x)

const char* compiled_archs() {
#ifdef SCISSORHANDS_CUDA_ARCHS
  // Built as -DSCISSORHANDS_CUDA_ARCHS=80_86_89_90.
  return SH_STRINGIFY(SCISSORHANDS_CUDA_ARCHS);
#else
  return "unknown";
#endif
}

const char* error_string(int cuda) { return cudaGetErrorString(static_cast<cudaError_t>(cuda)); }

int device_info(DeviceInfo* info) {
  cudaRuntimeGetVersion(&info->runtime_version);
  cudaDriverGetVersion(&info->driver_version);
  cudaError_t e = cudaGetDeviceCount(&info->count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    info->count = 0;
    return static_cast<int>(e);
  }
  if (info->count == 0) return static_cast<int>(cudaErrorNoDevice);
  e = cudaGetDevice(&info->device);
  if (e != cudaSuccess) return static_cast<int>(e);
  cudaDeviceProp prop{};
  e = cudaGetDeviceProperties(&prop, info->device);
  if (e != cudaSuccess) return static_cast<int>(e);
  std::snprintf(info->name, sizeof info->name, "%s", prop.name);
  info->major = prop.major;
  info->minor = prop.minor;
  info->multiprocessors = prop.multiProcessorCount;
  info->memory = prop.totalGlobalMem;
  info->l2_bytes = prop.l2CacheSize;
  return 0;
}

size_t store_bytes(const StoreSpec& spec, int32_t* max_splits) {
  const int32_t splits = splits_for(spec);
  if (max_splits != nullptr) *max_splits = splits;
  const int32_t chunk = evict_chunk_for(spec);
  return layout(spec, splits, (spec.capacity + chunk - 1) / chunk).total;
}

Result store_create(const StoreSpec& spec, Store* out) {
  if (!head_dim_supported(spec.head_dim)) return Result{Status::Argument, 0, "headDim"};
  if (!packed_spec_supported(spec)) return Result{Status::Argument, 0, "storage"};
  if (spec.slots != 0 && (spec.bits != 0 || spec.slots < spec.kv_heads)) return Result{Status::Argument, 0, "slots"};
  if (spec.max_sequences < 1 || spec.kv_heads < 1 || spec.capacity < 1 || spec.aux_words < 0 || spec.query_heads < 1 ||
      spec.query_heads % spec.kv_heads != 0 || spec.query_heads / spec.kv_heads > kMaxGroup) {
    return Result{Status::Argument, 0, "spec"};
  }
  Store s;
  s.spec = spec;
  s.max_splits = splits_for(spec);
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&s.multiprocessors, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return Result{Status::Ok, static_cast<int>(e), "cudaGetDevice"};
  const Result prepared = prepare_kernels();
  if (!ok(prepared)) return prepared;
  s.evict_chunk = evict_chunk_for(spec);
  s.evict_chunks = (spec.capacity + s.evict_chunk - 1) / s.evict_chunk;
  const Layout l = layout(spec, s.max_splits, s.evict_chunks);
  e = cudaMalloc(&s.base, l.total);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return Result{Status::Ok, static_cast<int>(e), "cudaMalloc"};
  }
  e = cudaMemset(s.base, 0, l.total);
  if (e != cudaSuccess) {
    cudaFree(s.base);
    return Result{Status::Ok, static_cast<int>(e), "cudaMemset"};
  }
  uint8_t* b = static_cast<uint8_t*>(s.base);
  s.bytes = l.total;
  s.keys = b + l.keys;
  s.values = b + l.values;
  s.positions = reinterpret_cast<int32_t*>(b + l.positions);
  s.scores = reinterpret_cast<float*>(b + l.scores);
  s.aux = reinterpret_cast<uint32_t*>(b + l.aux);
  s.lengths = reinterpret_cast<int32_t*>(b + l.lengths);
  s.attended = reinterpret_cast<int32_t*>(b + l.attended);
  s.steps = reinterpret_cast<double*>(b + l.steps);
  s.scratch = reinterpret_cast<float*>(b + l.scratch);
  s.partial = reinterpret_cast<float*>(b + l.partial);
  s.evict_state = reinterpret_cast<int32_t*>(b + l.evict_state);
  s.error = reinterpret_cast<int32_t*>(b + l.error);
  s.head_args = reinterpret_cast<int32_t*>(b + l.head_args);
  if (spec.slots != 0) {
    s.bases = reinterpret_cast<int32_t*>(b + l.bases);
    s.caps = reinterpret_cast<int32_t*>(b + l.caps);
    const Result spread = spread_evenly(s, -1, nullptr);
    e = spread.cuda == 0 ? cudaDeviceSynchronize() : static_cast<cudaError_t>(spread.cuda);
    if (e != cudaSuccess) {
      cudaFree(s.base);
      return Result{Status::Ok, static_cast<int>(e), "spread_evenly"};
    }
  }
  if (spec.bits != 0) {
    PackedStoreArrays& a = s.packed;
    packed_sizes(spec, &a.packed_slots, &a.residual_slots, &a.max_runs);
    a.key_codes = b + l.key_codes;
    a.value_codes = b + l.value_codes;
    a.value_scales = reinterpret_cast<uint16_t*>(b + l.value_scales);
    a.value_zeros = reinterpret_cast<uint16_t*>(b + l.value_zeros);
    a.key_scales = reinterpret_cast<uint16_t*>(b + l.key_scales);
    a.key_zeros = reinterpret_cast<uint16_t*>(b + l.key_zeros);
    a.run_lengths = reinterpret_cast<int32_t*>(b + l.run_lengths);
    a.run_generations = b + l.run_generations;
    a.runs = reinterpret_cast<int32_t*>(b + l.runs);
    a.packed = reinterpret_cast<int32_t*>(b + l.packed);
    a.residual_keys = b + l.residual_keys;
    a.residual_values = b + l.residual_values;
    a.slot_run = reinterpret_cast<int32_t*>(b + l.slot_run);
    a.dropped = b + l.dropped;
    a.run_scratch = reinterpret_cast<int32_t*>(b + l.run_scratch);
  }
  *out = s;
  return Result{};
}

void store_destroy(Store* store) {
  if (store->base != nullptr) cudaFree(store->base);
  *store = Store{};
}

Result clear(const Store& store, int32_t seq, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t heads = static_cast<size_t>(store.spec.kv_heads);
  cudaError_t e = cudaMemsetAsync(store.lengths + static_cast<size_t>(seq) * heads, 0, heads * 4, s);
  if (e == cudaSuccess) e = cudaMemsetAsync(store.steps + seq, 0, 8, s);
  // A packed store's sequence also drops its codes and runs (the rest is overwritten before it is read).
  if (e == cudaSuccess && store.spec.bits != 0) e = cudaMemsetAsync(store.packed.packed + static_cast<size_t>(seq) * heads, 0, heads * 4, s);
  if (e == cudaSuccess && store.spec.bits != 0) e = cudaMemsetAsync(store.packed.runs + static_cast<size_t>(seq) * heads, 0, heads * 4, s);
  if (e != cudaSuccess) return Result{Status::Ok, static_cast<int>(e), "clear"};
  // A per-head layout goes back to its even start, as the host stores' clear does.
  return store.spec.slots != 0 ? spread_evenly(store, seq, stream) : Result{};
}

Result read_bench(const void* data, size_t bytes, float* sink, void* stream) {
  const size_t n = bytes / 16;
  int device = 0;
  int sms = 132;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int blocks = std::min(4096, sms * 8);
  read_kernel<<<blocks, 512, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const uint4*>(data), n, sink);
  return launched("read_bench");
}

}  // namespace sh::cuda
