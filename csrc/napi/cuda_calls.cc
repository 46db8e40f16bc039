// The CUDA entry points (built only into scissorhands_cuda.node): device memory, streams and events for
// the SDK's DeviceTensor, device stores, and the kernels of csrc/cuda. Every argument is checked here;
// device addresses cannot be checked, so the TypeScript layer passes only addresses of live SDK
// allocations or ones the caller vouched for (DeviceTensor.wrap). Kernel launches neither allocate nor
// synchronise; upload/download and info calls do.
#include <cmath>
#include <string>

#include "../cuda/api.h"
#include "addon.h"
#include "args.h"

namespace sh::napi {
namespace {

// Type tag of the external that holds a device store.
constexpr napi_type_tag kStoreTag = {0x5c155043a11d5e01ULL, 0x9d2b6c0a7e4f3b21ULL};

struct StoreBox {
  cuda::Store store;
};

void* as_ptr(uint64_t value) { return reinterpret_cast<void*>(static_cast<uintptr_t>(value)); }

napi_value bigint(napi_env env, const void* ptr) {
  napi_value out;
  napi_create_bigint_uint64(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ptr)), &out);
  return out;
}

void check_cuda(const Args& args, int error, const char* what) {
  if (error != 0) {
    args.fail(kBackend, what, std::string("CUDA error ") + std::to_string(error) + ": " + cuda::error_string(error));
  }
}

void check_result(const Args& args, const cuda::Result& r) {
  if (r.cuda != 0) check_cuda(args, r.cuda, r.what);
  if (r.status == Status::Argument && std::string(r.what) == "headDim") {
    args.fail(kArgument, "store.headDim", "the cuda backend has kernels for head sizes 64, 128 and 256 only");
  }
  args.check(r.status, r.what);
}

cuda::Store& store_arg(const Args& args, size_t i) {
  bool tagged = false;
  napi_valuetype type;
  napi_typeof(args.env(), args.at(i), &type);
  if (type == napi_external) napi_check_object_type_tag(args.env(), args.at(i), &kStoreTag, &tagged);
  if (!tagged) args.fail(kArgument, "store", "expected a device store made by cudaStoreCreate");
  void* data = nullptr;
  napi_get_value_external(args.env(), args.at(i), &data);
  StoreBox* box = static_cast<StoreBox*>(data);
  if (box == nullptr || box->store.base == nullptr) args.fail(kArgument, "store", "the device store was disposed");
  return box->store;
}

DType dtype_of(const Args& args, double code, const char* name) { return static_cast<DType>(args.integer_of(code, name, 0, 2)); }

DType dtype_arg(const Args& args, size_t i, const char* name) {
  return static_cast<DType>(args.integer(i, name, 0, 2));
}

// A caller's device tensor: address, element type (f32 or the store's dtype), row stride (>= the row).
cuda::Tensor tensor_of(const Args& args, uint64_t ptr, double dtype, double stride, const char* name, const cuda::Store& store,
                       int64_t row_elements) {
  if (ptr == 0) args.fail(kArgument, name, "expected a device address, got 0n");
  cuda::Tensor t;
  t.data = as_ptr(ptr);
  t.dtype = dtype_of(args, dtype, name);
  if (t.dtype != DType::F32 && t.dtype != store.spec.dtype) {
    args.fail(kDType, name, "expected f32 elements or the store's dtype");
  }
  t.row_stride = args.integer_of(stride, name, row_elements, INT64_C(1) << 50);
  const uintptr_t size = bytes_per_element(t.dtype);
  if (reinterpret_cast<uintptr_t>(t.data) % size != 0) args.fail(kArgument, name, "the address is not aligned to its element size");
  return t;
}

cuda::Tensor tensor_arg(const Args& args, size_t i, const char* name, const cuda::Store& store, int64_t row_elements) {
  const uint64_t ptr = args.pointer(i, name, false);
  const double dtype = static_cast<double>(args.integer(i + 1, name, 0, 2));
  return tensor_of(args, ptr, dtype, static_cast<double>(args.integer(i + 2, name, row_elements, INT64_C(1) << 50)), name, store,
                   row_elements);
}

// Tracker flags: kind | gqaMax << 8 | observes << 9, then window and seed.
TrackerSpec tracker_of(const Args& args, double flags_value, double window, double seed, const cuda::Store& store) {
  const int64_t flags = args.integer_of(flags_value, "tracker", 0, 0x3ff);
  TrackerSpec t;
  t.kind = static_cast<TrackerKind>(flags & 0xff);
  if (static_cast<int>(t.kind) > 6) args.fail(kArgument, "tracker.kind", "unknown tracker kind");
  if (t.kind == TrackerKind::Custom) {
    args.fail(kArgument, "tracker", "the cuda backend runs built-in trackers only (custom TypeScript trackers are not supported yet)");
  }
  t.gqa = (flags & 0x100) != 0 ? GqaReduce::Max : GqaReduce::Mean;
  t.observes = (flags & 0x200) != 0;
  t.window = static_cast<uint32_t>(args.integer_of(window, "tracker.window", 0, INT32_MAX));
  t.seed = static_cast<uint32_t>(args.integer_of(seed, "tracker.seed", INT32_MIN, UINT32_MAX));
  if (t.kind == TrackerKind::Scissorhands) {
    const uint64_t words = (static_cast<uint64_t>(t.window) + 31) / 32;
    if (t.window == 0 || words > static_cast<uint64_t>(store.spec.aux_words)) {
      args.fail(kArgument, "tracker.window", "the scissorhands window needs ceil(window / 32) aux words per token in the store");
    }
  }
  return t;
}

TrackerSpec tracker_arg(const Args& args, size_t i, const cuda::Store& store) {
  const double flags = static_cast<double>(args.integer(i, "tracker", 0, 0x3ff));
  const double window = static_cast<double>(args.integer(i + 1, "tracker.window", 0, INT32_MAX));
  return tracker_of(args, flags, window, static_cast<double>(args.integer(i + 2, "tracker.seed", INT32_MIN, UINT32_MAX)), store);
}

int32_t query_heads_of(const Args& args, double value, const cuda::Store& store) {
  const int32_t qh = static_cast<int32_t>(args.integer_of(value, "attention.queryHeads", 1, store.spec.query_heads));
  if (qh % store.spec.kv_heads != 0) args.fail(kArgument, "attention.queryHeads", "must be a multiple of the store's kvHeads");
  if (qh / store.spec.kv_heads > cuda::kMaxGroup) args.fail(kArgument, "attention.queryHeads", "more than 256 query heads per KV head");
  return qh;
}

int32_t query_heads_arg(const Args& args, size_t i, const cuda::Store& store) {
  return query_heads_of(args, static_cast<double>(args.integer(i, "attention.queryHeads", 1, store.spec.query_heads)), store);
}

// 1 to 64 distinct sequence ids of the store (an Int32Array), copied into `out`; returns how many.
int32_t seq_list(const Args& args, size_t i, const cuda::Store& store, int32_t* out) {
  bool is_typed = false;
  napi_is_typedarray(args.env(), args.at(i), &is_typed);
  napi_typedarray_type type = napi_uint8_array;
  size_t length = 0;
  void* data = nullptr;
  if (is_typed) napi_get_typedarray_info(args.env(), args.at(i), &type, &length, &data, nullptr, nullptr);
  if (type != napi_int32_array) args.fail(kDType, "seqs", "expected an Int32Array of sequence ids");
  if (length < 1 || length > static_cast<size_t>(cuda::kMaxBatch)) args.fail(kShape, "seqs", "expected 1 to 64 sequence ids");
  for (size_t b = 0; b < length; ++b) {
    out[b] = static_cast<const int32_t*>(data)[b];
    if (out[b] < 0 || out[b] >= store.spec.max_sequences) args.fail(kArgument, "seqs", "sequence id out of range");
    for (size_t a = 0; a < b; ++a) {
      if (out[a] == out[b]) args.fail(kArgument, "seqs", "a sequence id appears twice");
    }
  }
  return static_cast<int32_t>(length);
}

void* stream_arg(const Args& args, size_t i) { return as_ptr(args.pointer(i, "stream", true)); }

// A host typed array's bytes.
void* host_bytes(const Args& args, size_t i, const char* name, size_t* bytes) {
  bool is_typed = false;
  napi_is_typedarray(args.env(), args.at(i), &is_typed);
  if (!is_typed) args.fail(kDType, name, "expected a typed array");
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  napi_get_typedarray_info(args.env(), args.at(i), &type, &length, &data, nullptr, nullptr);
  size_t element = 1;
  switch (type) {
    case napi_int16_array:
    case napi_uint16_array:
      element = 2;
      break;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
      element = 4;
      break;
    case napi_float64_array:
    case napi_bigint64_array:
    case napi_biguint64_array:
      element = 8;
      break;
    default:
      element = 1;
  }
  *bytes = length * element;
  return data;
}

}  // namespace

void Addon::DefineCuda(Napi::Object exports) {
  DefineProperties(exports, {
                                InstanceMethod("cudaInfo", &Addon::CudaInfo, napi_enumerable),
                                InstanceMethod("cudaMalloc", &Addon::CudaMalloc, napi_enumerable),
                                InstanceMethod("cudaFree", &Addon::CudaFree, napi_enumerable),
                                InstanceMethod("cudaUpload", &Addon::CudaUpload, napi_enumerable),
                                InstanceMethod("cudaDownload", &Addon::CudaDownload, napi_enumerable),
                                InstanceMethod("cudaMemset", &Addon::CudaMemset, napi_enumerable),
                                InstanceMethod("cudaCopy", &Addon::CudaCopy, napi_enumerable),
                                InstanceMethod("cudaSynchronize", &Addon::CudaSynchronize, napi_enumerable),
                                InstanceMethod("cudaStreamCreate", &Addon::CudaStreamCreate, napi_enumerable),
                                InstanceMethod("cudaStreamDestroy", &Addon::CudaStreamDestroy, napi_enumerable),
                                InstanceMethod("cudaEventCreate", &Addon::CudaEventCreate, napi_enumerable),
                                InstanceMethod("cudaEventRecord", &Addon::CudaEventRecord, napi_enumerable),
                                InstanceMethod("cudaEventElapsed", &Addon::CudaEventElapsed, napi_enumerable),
                                InstanceMethod("cudaEventDestroy", &Addon::CudaEventDestroy, napi_enumerable),
                                InstanceMethod("cudaStoreCreate", &Addon::CudaStoreCreate, napi_enumerable),
                                InstanceMethod("cudaStoreDestroy", &Addon::CudaStoreDestroy, napi_enumerable),
                                InstanceMethod("cudaStoreInfo", &Addon::CudaStoreInfo, napi_enumerable),
                                InstanceMethod("cudaAppend", &Addon::CudaAppend, napi_enumerable),
                                InstanceMethod("cudaDecode", &Addon::CudaDecode, napi_enumerable),
                                InstanceMethod("cudaAttend", &Addon::CudaAttend, napi_enumerable),
                                InstanceMethod("cudaPrefill", &Addon::CudaPrefill, napi_enumerable),
                                InstanceMethod("cudaObserve", &Addon::CudaObserve, napi_enumerable),
                                InstanceMethod("cudaEvict", &Addon::CudaEvict, napi_enumerable),
                                InstanceMethod("cudaClear", &Addon::CudaClear, napi_enumerable),
                                InstanceMethod("cudaAccountPacked", &Addon::CudaAccountPacked, napi_enumerable),
                                InstanceMethod("cudaEvictHeads", &Addon::CudaEvictHeads, napi_enumerable),
                                InstanceMethod("cudaRelayout", &Addon::CudaRelayout, napi_enumerable),
                                InstanceMethod("cudaPoolScores", &Addon::CudaPoolScores, napi_enumerable),
                                InstanceMethod("cudaRestartState", &Addon::CudaRestartState, napi_enumerable),
                                InstanceMethod("cudaReadBench", &Addon::CudaReadBench, napi_enumerable),
                                InstanceMethod("cudaRebuildPackedIndex", &Addon::CudaRebuildPackedIndex, napi_enumerable),
                                InstanceMethod("cudaPack", &Addon::CudaPack, napi_enumerable),
                                InstanceMethod("cudaUnpack", &Addon::CudaUnpack, napi_enumerable),
                                InstanceMethod("cudaGraphCaptureBegin", &Addon::CudaGraphCaptureBegin, napi_enumerable),
                                InstanceMethod("cudaGraphCaptureEnd", &Addon::CudaGraphCaptureEnd, napi_enumerable),
                                InstanceMethod("cudaGraphLaunch", &Addon::CudaGraphLaunch, napi_enumerable),
                                InstanceMethod("cudaGraphDestroy", &Addon::CudaGraphDestroy, napi_enumerable),
                            });
}

// cudaInfo() -> { available, reason?, devices, device?, runtimeVersion, driverVersion, archs, headDims }
Napi::Value Addon::CudaInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cuda::DeviceInfo d;
  const int error = cuda::device_info(&d);
  Napi::Object result = Napi::Object::New(env);
  result.Set("built", true);
  result.Set("available", error == 0);
  if (error != 0) {
    result.Set("reason", std::string("cudaGetDeviceCount/cudaGetDeviceProperties failed with CUDA error ") + std::to_string(error) +
                             ": " + cuda::error_string(error));
  }
  result.Set("devices", d.count);
  if (error == 0) {
    Napi::Object device = Napi::Object::New(env);
    device.Set("index", d.device);
    device.Set("name", std::string(d.name));
    device.Set("computeCapability", std::to_string(d.major) + "." + std::to_string(d.minor));
    device.Set("multiProcessors", d.multiprocessors);
    device.Set("memoryBytes", static_cast<double>(d.memory));
    device.Set("l2Bytes", d.l2_bytes);
    result.Set("device", device);
  }
  result.Set("runtimeVersion", d.runtime_version);
  result.Set("driverVersion", d.driver_version);
  result.Set("archs", std::string(cuda::compiled_archs()));
  Napi::Array dims = Napi::Array::New(env, 3);
  dims.Set(0u, 64);
  dims.Set(1u, 128);
  dims.Set(2u, 256);
  result.Set("headDims", dims);
  return result;
}

// cudaMalloc(bytes) -> bigint
Napi::Value Addon::CudaMalloc(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const int64_t bytes = args.integer(0, "bytes", 1, INT64_C(1) << 50);
  void* ptr = nullptr;
  check_cuda(args, cuda::device_malloc(&ptr, static_cast<size_t>(bytes)), "cudaMalloc");
  return Napi::Value(info.Env(), bigint(info.Env(), ptr));
}

// cudaFree(ptr)
Napi::Value Addon::CudaFree(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  check_cuda(args, cuda::device_free(as_ptr(args.pointer(0, "ptr", true))), "cudaFree");
  return info.Env().Undefined();
}

// cudaUpload(dst, src: TypedArray, stream): returns when the copy is done.
Napi::Value Addon::CudaUpload(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  void* dst = as_ptr(args.pointer(0, "dst", false));
  size_t bytes = 0;
  const void* src = host_bytes(args, 1, "src", &bytes);
  void* stream = stream_arg(args, 2);
  if (bytes > 0) check_cuda(args, cuda::copy_to_device(dst, src, bytes, stream), "cudaUpload");
  return info.Env().Undefined();
}

// cudaDownload(dst: TypedArray, src, stream): returns when the copy is done.
Napi::Value Addon::CudaDownload(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  size_t bytes = 0;
  void* dst = host_bytes(args, 0, "dst", &bytes);
  const void* src = as_ptr(args.pointer(1, "src", false));
  void* stream = stream_arg(args, 2);
  if (bytes > 0) check_cuda(args, cuda::copy_to_host(dst, src, bytes, stream), "cudaDownload");
  return info.Env().Undefined();
}

// cudaMemset(dst, byte, bytes, stream)
Napi::Value Addon::CudaMemset(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  void* dst = as_ptr(args.pointer(0, "dst", false));
  const int value = static_cast<int>(args.integer(1, "value", 0, 255));
  const int64_t bytes = args.integer(2, "bytes", 0, INT64_C(1) << 50);
  check_cuda(args, cuda::memset_async(dst, value, static_cast<size_t>(bytes), stream_arg(args, 3)), "cudaMemset");
  return info.Env().Undefined();
}

// cudaCopy(dst, src, bytes, stream): device to device, asynchronous.
Napi::Value Addon::CudaCopy(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  void* dst = as_ptr(args.pointer(0, "dst", false));
  const void* src = as_ptr(args.pointer(1, "src", false));
  const int64_t bytes = args.integer(2, "bytes", 0, INT64_C(1) << 50);
  check_cuda(args, cuda::copy_async(dst, src, static_cast<size_t>(bytes), stream_arg(args, 3)), "cudaCopy");
  return info.Env().Undefined();
}

Napi::Value Addon::CudaSynchronize(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  check_cuda(args, cuda::synchronize(stream_arg(args, 0)), "cudaStreamSynchronize");
  return info.Env().Undefined();
}

Napi::Value Addon::CudaStreamCreate(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  void* stream = nullptr;
  check_cuda(args, cuda::stream_create(&stream), "cudaStreamCreate");
  return Napi::Value(info.Env(), bigint(info.Env(), stream));
}

Napi::Value Addon::CudaStreamDestroy(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  check_cuda(args, cuda::stream_destroy(as_ptr(args.pointer(0, "stream", false))), "cudaStreamDestroy");
  return info.Env().Undefined();
}

Napi::Value Addon::CudaEventCreate(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  void* event = nullptr;
  check_cuda(args, cuda::event_create(&event), "cudaEventCreate");
  return Napi::Value(info.Env(), bigint(info.Env(), event));
}

Napi::Value Addon::CudaEventRecord(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  check_cuda(args, cuda::event_record(as_ptr(args.pointer(0, "event", false)), stream_arg(args, 1)), "cudaEventRecord");
  return info.Env().Undefined();
}

// cudaEventElapsed(start, end) -> milliseconds (waits for `end`).
Napi::Value Addon::CudaEventElapsed(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  float ms = 0;
  check_cuda(args, cuda::event_elapsed(&ms, as_ptr(args.pointer(0, "start", false)), as_ptr(args.pointer(1, "end", false))),
             "cudaEventElapsedTime");
  return Napi::Number::New(info.Env(), ms);
}

Napi::Value Addon::CudaEventDestroy(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  check_cuda(args, cuda::event_destroy(as_ptr(args.pointer(0, "event", false))), "cudaEventDestroy");
  return info.Env().Undefined();
}

// cudaStoreCreate(layer, dtype, maxSequences, kvHeads, headDim, capacity, auxWords, queryHeads[, bits, groupSize,
// residual[, slots]]) -> external (bits 0 or absent: dense rows; slots absent: the dense layout)
Napi::Value Addon::CudaStoreCreate(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  cuda::StoreSpec spec;
  spec.layer = static_cast<uint32_t>(args.integer(0, "layer", 0, INT32_MAX));
  spec.dtype = dtype_arg(args, 1, "dtype");
  spec.max_sequences = static_cast<int32_t>(args.integer(2, "maxSequences", 1, 1 << 16));
  spec.kv_heads = static_cast<int32_t>(args.integer(3, "kvHeads", 1, 4096));
  spec.head_dim = static_cast<int32_t>(args.integer(4, "headDim", 1, kMaxHeadDim));
  spec.capacity = static_cast<int32_t>(args.integer(5, "capacity", 1, 1 << 24));
  spec.aux_words = static_cast<int32_t>(args.integer(6, "auxWords", 0, 1 << 16));
  spec.query_heads = static_cast<int32_t>(args.integer(7, "queryHeads", 1, 4096));
  if (info.Length() > 8 && !info[8].IsUndefined()) {
    spec.bits = static_cast<int32_t>(args.integer(8, "storage.bits", 0, 8));
    spec.group_size = static_cast<int32_t>(args.integer(9, "storage.groupSize", 0, kMaxHeadDim));
    spec.residual = static_cast<int32_t>(args.integer(10, "storage.residual", 0, 1 << 24));
    if (!cuda::packed_spec_supported(spec)) {
      args.fail(kArgument, "storage", "packed storage needs 2, 4 or 8 bits and a group size that is a multiple of 8 dividing headDim");
    }
  }
  if (info.Length() > 11 && !info[11].IsUndefined()) {
    spec.slots = static_cast<int32_t>(args.integer(11, "slots", spec.kv_heads, INT32_MAX));
    if (spec.bits != 0) args.fail(kArgument, "storage", "packed storage has no per-head layout: heads with their own budgets need dense storage");
    if (static_cast<int64_t>(spec.slots) * spec.max_sequences > INT32_MAX) args.fail(kArgument, "slots", "maxSequences x slots must fit in int32");
  }
  if (!cuda::head_dim_supported(spec.head_dim)) {
    args.fail(kArgument, "headDim", "the cuda backend has kernels for head sizes 64, 128 and 256 only, got " + std::to_string(spec.head_dim));
  }
  if (spec.query_heads % spec.kv_heads != 0 || spec.query_heads / spec.kv_heads > cuda::kMaxGroup) {
    args.fail(kArgument, "queryHeads", "must be a multiple of kvHeads, at most 256 times it");
  }
  StoreBox* box = new StoreBox();
  const cuda::Result r = cuda::store_create(spec, &box->store);
  if (!cuda::ok(r)) {
    delete box;
    check_result(args, r);
  }
  napi_value external;
  napi_create_external(
      info.Env(), box,
      [](napi_env, void* data, void*) {
        StoreBox* b = static_cast<StoreBox*>(data);
        cuda::store_destroy(&b->store);
        delete b;
      },
      nullptr, &external);
  napi_type_tag_object(info.Env(), external, &kStoreTag);
  return Napi::Value(info.Env(), external);
}

// cudaStoreDestroy(store): frees the device memory now (idempotent through the TypeScript owner).
Napi::Value Addon::CudaStoreDestroy(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  cuda::Store& store = store_arg(args, 0);
  cuda::store_destroy(&store);
  return info.Env().Undefined();
}

// cudaStoreInfo(store) -> device addresses of its arrays and its size
Napi::Value Addon::CudaStoreInfo(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& s = store_arg(args, 0);
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("keys", Napi::Value(env, bigint(env, s.keys)));
  o.Set("values", Napi::Value(env, bigint(env, s.values)));
  o.Set("positions", Napi::Value(env, bigint(env, s.positions)));
  o.Set("scores", Napi::Value(env, bigint(env, s.scores)));
  o.Set("aux", Napi::Value(env, bigint(env, s.aux)));
  o.Set("lengths", Napi::Value(env, bigint(env, s.lengths)));
  o.Set("steps", Napi::Value(env, bigint(env, s.steps)));
  o.Set("error", Napi::Value(env, bigint(env, s.error)));
  if (s.spec.slots != 0) {
    o.Set("bases", Napi::Value(env, bigint(env, s.bases)));
    o.Set("capacities", Napi::Value(env, bigint(env, s.caps)));
  }
  o.Set("bytes", static_cast<double>(s.bytes));
  o.Set("maxSplits", s.max_splits);
  if (s.spec.bits != 0) {
    const cuda::PackedStoreArrays& a = s.packed;
    Napi::Object p = Napi::Object::New(env);
    p.Set("packedSlots", a.packed_slots);
    p.Set("residualSlots", a.residual_slots);
    p.Set("maxRuns", a.max_runs);
    p.Set("keyCodes", Napi::Value(env, bigint(env, a.key_codes)));
    p.Set("valueCodes", Napi::Value(env, bigint(env, a.value_codes)));
    p.Set("valueScales", Napi::Value(env, bigint(env, a.value_scales)));
    p.Set("valueZeros", Napi::Value(env, bigint(env, a.value_zeros)));
    p.Set("keyScales", Napi::Value(env, bigint(env, a.key_scales)));
    p.Set("keyZeros", Napi::Value(env, bigint(env, a.key_zeros)));
    p.Set("runLengths", Napi::Value(env, bigint(env, a.run_lengths)));
    p.Set("runGenerations", Napi::Value(env, bigint(env, a.run_generations)));
    p.Set("runs", Napi::Value(env, bigint(env, a.runs)));
    p.Set("packed", Napi::Value(env, bigint(env, a.packed)));
    p.Set("residualKeys", Napi::Value(env, bigint(env, a.residual_keys)));
    p.Set("residualValues", Napi::Value(env, bigint(env, a.residual_values)));
    o.Set("packed", p);
  }
  return o;
}

// cudaAppend(store, seq, k, kType, kStride, v, vType, vStride, count, firstPosition, tracker, window, seed, stream)
Napi::Value Addon::CudaAppend(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, store.spec.max_sequences - 1));
  const int64_t row = static_cast<int64_t>(store.spec.kv_heads) * store.spec.head_dim;
  const cuda::Tensor k = tensor_arg(args, 2, "k", store, row);
  const cuda::Tensor v = tensor_arg(args, 5, "v", store, row);
  const int32_t count = static_cast<int32_t>(args.integer(8, "count", 0, store.spec.capacity));
  const int32_t first = static_cast<int32_t>(args.integer(9, "firstPosition", INT32_MIN, INT32_MAX - count));
  const TrackerSpec tracker = tracker_arg(args, 10, store);
  check_result(args, cuda::append(store, seq, k, v, count, first, tracker, stream_arg(args, 13)));
  return info.Env().Undefined();
}

// cudaDecode(store, seqs: Int32Array, maxLength, q, qType, qStride, out, outType, outStride, queryHeads, scale,
//            tracker, window, seed, stream)
Napi::Value Addon::CudaDecode(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  int32_t seqs[cuda::kMaxBatch];
  const int32_t batch = seq_list(args, 1, store, seqs);
  const int32_t max_length = static_cast<int32_t>(args.integer(2, "maxLength", 1, store.spec.capacity));
  const int32_t qh = query_heads_arg(args, 9, store);
  const int64_t row = static_cast<int64_t>(qh) * store.spec.head_dim;
  const cuda::Tensor q = tensor_arg(args, 3, "q", store, batch > 1 ? row : 0);
  const cuda::Tensor out = tensor_arg(args, 6, "out", store, batch > 1 ? row : 0);
  const float scale = static_cast<float>(args.finite(10, "attention.scale"));
  const TrackerSpec tracker = tracker_arg(args, 11, store);
  check_result(args, cuda::decode(store, seqs, batch, max_length, q, out, qh, scale, tracker,
                                  stream_arg(args, 14)));
  return info.Env().Undefined();
}

// cudaAttend(store, numbers: Float64Array, pointers: BigUint64Array): append one token to seq, then decode
// it (cuda::attend). The arguments come in two typed arrays the caller reuses (src/backend/cuda.ts
// AttendNumber, AttendPointer: the same order), so a decode step crosses N-API with three values, not 22.
enum AttendNumber {
  kSeq, kMaxLength, kPosition, kKType, kKStride, kVType, kVStride, kQType, kQStride, kOutType, kOutStride, kQueryHeads,
  kScale, kTrackerFlags, kTrackerWindow, kTrackerSeed, kAttendNumbers
};
enum AttendPointer { kKPtr, kVPtr, kQPtr, kOutPtr, kStreamPtr, kAttendPointers };

Napi::Value Addon::CudaAttend(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  const double* a = static_cast<const double*>(args.typed_array(1, "numbers", napi_float64_array, "Float64Array", kAttendNumbers));
  const uint64_t* p =
      static_cast<const uint64_t*>(args.typed_array(2, "pointers", napi_biguint64_array, "BigUint64Array", kAttendPointers));
  const int32_t seq = static_cast<int32_t>(args.integer_of(a[kSeq], "seq", 0, store.spec.max_sequences - 1));
  const int32_t max_length = static_cast<int32_t>(args.integer_of(a[kMaxLength], "maxLength", 1, store.spec.capacity));
  const int32_t first = static_cast<int32_t>(args.integer_of(a[kPosition], "firstPosition", INT32_MIN, INT32_MAX - 1));
  const int64_t row = static_cast<int64_t>(store.spec.kv_heads) * store.spec.head_dim;
  const cuda::Tensor k = tensor_of(args, p[kKPtr], a[kKType], a[kKStride], "k", store, row);
  const cuda::Tensor v = tensor_of(args, p[kVPtr], a[kVType], a[kVStride], "v", store, row);
  const int32_t qh = query_heads_of(args, a[kQueryHeads], store);
  const cuda::Tensor q = tensor_of(args, p[kQPtr], a[kQType], a[kQStride], "q", store, 0);
  const cuda::Tensor out = tensor_of(args, p[kOutPtr], a[kOutType], a[kOutStride], "out", store, 0);
  if (!std::isfinite(a[kScale])) args.fail(kArgument, "attention.scale", "expected a finite number");
  const TrackerSpec tracker = tracker_of(args, a[kTrackerFlags], a[kTrackerWindow], a[kTrackerSeed], store);
  check_result(args, cuda::attend(store, seq, max_length, k, v, first, q, out, qh, static_cast<float>(a[kScale]), tracker,
                                  as_ptr(p[kStreamPtr])));
  return info.Env().Undefined();
}

// cudaPrefill(store, seq, length, q, qType, qStride, rows, out, outType, outStride, queryHeads, scale, tracker,
//             window, seed, stream)
Napi::Value Addon::CudaPrefill(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, store.spec.max_sequences - 1));
  const int32_t rows = static_cast<int32_t>(args.integer(6, "rows", 1, store.spec.capacity));
  const int32_t length = static_cast<int32_t>(args.integer(2, "length", rows, store.spec.capacity));
  const int32_t qh = query_heads_arg(args, 10, store);
  const int64_t row = static_cast<int64_t>(qh) * store.spec.head_dim;
  const cuda::Tensor q = tensor_arg(args, 3, "q", store, rows > 1 ? row : 0);
  const cuda::Tensor out = tensor_arg(args, 7, "out", store, rows > 1 ? row : 0);
  const float scale = static_cast<float>(args.finite(11, "attention.scale"));
  const TrackerSpec tracker = tracker_arg(args, 12, store);
  if (tracker.observes && qh / store.spec.kv_heads > cuda::kMaxPrefillTrackGroup &&
      (tracker.kind == TrackerKind::Scissorhands || tracker.kind == TrackerKind::H2O || tracker.kind == TrackerKind::Tova)) {
    args.fail(kArgument, "attention.queryHeads", "prefill with an attention tracker supports at most 16 query heads per KV head");
  }
  check_result(args, cuda::prefill(store, seq, length, q, rows, out, qh, scale, tracker, stream_arg(args, 15)));
  return info.Env().Undefined();
}

// cudaObserve(store, seq, length, probs, stride, queryHeads, tracker, window, seed, stream)
Napi::Value Addon::CudaObserve(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, store.spec.max_sequences - 1));
  const int64_t stride = args.integer(4, "stride", 0, INT32_MAX);
  const int32_t length = static_cast<int32_t>(args.integer(2, "length", 0, std::min<int64_t>(stride, store.spec.capacity)));
  const float* probs = static_cast<const float*>(as_ptr(args.pointer(3, "probs", false)));
  const int32_t qh = query_heads_arg(args, 5, store);
  const TrackerSpec tracker = tracker_arg(args, 6, store);
  check_result(args, cuda::observe(store, seq, length, probs, stride, qh, tracker, stream_arg(args, 9)));
  return info.Env().Undefined();
}

// cudaEvict(store, seqs: Int32Array, length, count, sinks, recent, layerScope, stream): `length` is the
// longest kept length of the sequences (the caller checked every head has count candidates).
Napi::Value Addon::CudaEvict(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  int32_t seqs[cuda::kMaxBatch];
  const int32_t batch = seq_list(args, 1, store, seqs);
  const int32_t length = static_cast<int32_t>(args.integer(2, "length", 0, store.spec.capacity));
  const int32_t count = static_cast<int32_t>(args.integer(3, "count", 0, length));
  const int32_t sinks = static_cast<int32_t>(args.integer(4, "sinks", 0, INT32_MAX));
  const int32_t recent = static_cast<int32_t>(args.integer(5, "recent", 0, INT32_MAX));
  if (static_cast<int64_t>(count) > static_cast<int64_t>(length) - sinks - recent && count > 0) {
    args.fail(kBudget, "count", "asked to drop " + std::to_string(count) + " of " + std::to_string(length) + " tokens with " +
                                    std::to_string(sinks) + " sinks and " + std::to_string(recent) + " recent ones protected");
  }
  bool layer = false;
  if (napi_get_value_bool(args.env(), args.at(6), &layer) != napi_ok) args.fail(kArgument, "scope", "expected a boolean");
  check_result(args, cuda::evict(store, seqs, batch, length, count, sinks, recent, layer ? EvictScope::Layer : EvictScope::Head,
                                 stream_arg(args, 7)));
  return info.Env().Undefined();
}

// A host Int32Array of kvHeads ints (per-head counts, capacities or ends).
static const int32_t* heads_arg(const Args& args, size_t i, const char* name, const cuda::Store& store) {
  return static_cast<const int32_t*>(args.typed_array(i, name, napi_int32_array, "Int32Array", static_cast<uint64_t>(store.spec.kv_heads)));
}

// cudaEvictHeads(store, seq, counts: Int32Array, sinks, recent, stream): the caller checked every head's candidates.
Napi::Value Addon::CudaEvictHeads(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, store.spec.max_sequences - 1));
  const int32_t* counts = heads_arg(args, 2, "counts", store);
  const int32_t sinks = static_cast<int32_t>(args.integer(3, "sinks", 0, INT32_MAX));
  const int32_t recent = static_cast<int32_t>(args.integer(4, "recent", 0, INT32_MAX));
  check_result(args, cuda::evict_heads(store, seq, counts, sinks, recent, stream_arg(args, 5)));
  return info.Env().Undefined();
}

// cudaRelayout(store, seq, capacities: Int32Array, stream): the caller checked lengths <= capacities and their sum.
Napi::Value Addon::CudaRelayout(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  if (store.spec.slots == 0) args.fail(kArgument, "store", "the store has the dense layout");
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, store.spec.max_sequences - 1));
  check_result(args, cuda::relayout(store, seq, heads_arg(args, 2, "capacities", store), stream_arg(args, 3)));
  return info.Env().Undefined();
}

// cudaPoolScores(store, seq, kernel, max: boolean, ends: Int32Array, stream)
Napi::Value Addon::CudaPoolScores(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, store.spec.max_sequences - 1));
  const int32_t kernel = static_cast<int32_t>(args.integer(2, "kernel", 1, 1 << 16));
  bool max = false;
  if (napi_get_value_bool(args.env(), args.at(3), &max) != napi_ok) args.fail(kArgument, "pooling", "expected a boolean");
  check_result(args, cuda::pool_scores(store, seq, kernel, max, heads_arg(args, 4, "ends", store), stream_arg(args, 5)));
  return info.Env().Undefined();
}

// cudaRestartState(store, seq, tracker, window, seed, stream)
Napi::Value Addon::CudaRestartState(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, store.spec.max_sequences - 1));
  if (store.spec.bits != 0) args.fail(kArgument, "store", "tracker state restarts need dense storage");
  const TrackerSpec tracker = tracker_arg(args, 2, store);
  check_result(args, cuda::restart_state(store, seq, tracker, stream_arg(args, 5)));
  return info.Env().Undefined();
}

// cudaClear(store, seq, stream)
Napi::Value Addon::CudaClear(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, store.spec.max_sequences - 1));
  check_result(args, cuda::clear(store, seq, stream_arg(args, 2)));
  return info.Env().Undefined();
}

// cudaAccountPacked(store, seq, ledger, entry, entries, metaPerToken, stream): `ledger` is the caller's device
// allocation of kLedgerHeader + 2 * entries int64 words.
Napi::Value Addon::CudaAccountPacked(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  if (store.spec.bits == 0) args.fail(kArgument, "store", "the byte ledger counts packed stores only");
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, store.spec.max_sequences - 1));
  int64_t* ledger = static_cast<int64_t*>(as_ptr(args.pointer(2, "ledger", false)));
  const int64_t entries = args.integer(4, "entries", 1, INT32_MAX);
  const int32_t entry = static_cast<int32_t>(args.integer(3, "entry", 0, entries - 1));
  const int64_t meta = args.integer(5, "metaPerToken", 0, INT32_MAX);
  check_result(args, cuda::account_packed(store, seq, ledger, entry, meta, stream_arg(args, 6)));
  return info.Env().Undefined();
}

// cudaReadBench(ptr, bytes, sink, stream)
Napi::Value Addon::CudaReadBench(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const void* data = as_ptr(args.pointer(0, "ptr", false));
  const int64_t bytes = args.integer(1, "bytes", 16, INT64_C(1) << 50);
  float* sink = static_cast<float*>(as_ptr(args.pointer(2, "sink", false)));
  check_result(args, cuda::read_bench(data, static_cast<size_t>(bytes) & ~static_cast<size_t>(15), sink, stream_arg(args, 3)));
  return info.Env().Undefined();
}

// cudaRebuildPackedIndex(store, stream)
Napi::Value Addon::CudaRebuildPackedIndex(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const cuda::Store& store = store_arg(args, 0);
  check_result(args, cuda::rebuild_packed_index(store, stream_arg(args, 1)));
  return info.Env().Undefined();
}

static cuda::PackShape pack_shape_arg(const Args& args, size_t i) {
  cuda::PackShape shape;
  shape.rows = args.integer(i, "rows", 1, INT64_C(1) << 40);
  shape.cols = args.integer(i + 1, "cols", 1, INT64_C(1) << 40);
  shape.bits = static_cast<int32_t>(args.integer(i + 2, "bits", 2, 8));
  shape.axis = static_cast<int32_t>(args.integer(i + 3, "axis", 0, 1));
  shape.group_size = args.integer(i + 4, "groupSize", 1, INT64_C(1) << 30);
  if (!cuda::pack_shape_supported(shape)) {
    args.fail(kArgument, "groupSize",
              "the cuda packer needs 2, 4 or 8 bits, a group size dividing the grouped axis, and whole code bytes per thread "
              "(axis 1: groupSize * bits a multiple of 8; axis 0: cols * bits a multiple of 8)");
  }
  return shape;
}

// cudaPack(input, dtype, rows, cols, bits, axis, groupSize, codes, scales, zeros, bad, stream)
Napi::Value Addon::CudaPack(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const void* input = as_ptr(args.pointer(0, "input", false));
  const DType dtype = dtype_arg(args, 1, "dtype");
  const cuda::PackShape shape = pack_shape_arg(args, 2);
  uint8_t* codes = static_cast<uint8_t*>(as_ptr(args.pointer(7, "codes", false)));
  uint16_t* scales = static_cast<uint16_t*>(as_ptr(args.pointer(8, "scales", false)));
  uint16_t* zeros = static_cast<uint16_t*>(as_ptr(args.pointer(9, "zeros", false)));
  int32_t* bad = static_cast<int32_t*>(as_ptr(args.pointer(10, "bad", true)));
  check_result(args, cuda::pack(input, dtype, shape, codes, scales, zeros, bad, stream_arg(args, 11)));
  return info.Env().Undefined();
}

// cudaUnpack(codes, scales, zeros, rows, cols, bits, axis, groupSize, outType, out, stream)
Napi::Value Addon::CudaUnpack(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const uint8_t* codes = static_cast<const uint8_t*>(as_ptr(args.pointer(0, "codes", false)));
  const uint16_t* scales = static_cast<const uint16_t*>(as_ptr(args.pointer(1, "scales", false)));
  const uint16_t* zeros = static_cast<const uint16_t*>(as_ptr(args.pointer(2, "zeros", false)));
  const cuda::PackShape shape = pack_shape_arg(args, 3);
  const DType out_dtype = dtype_arg(args, 8, "outType");
  void* out = as_ptr(args.pointer(9, "out", false));
  check_result(args, cuda::unpack(codes, scales, zeros, shape, out_dtype, out, stream_arg(args, 10)));
  return info.Env().Undefined();
}

// cudaGraphCaptureBegin(stream): global capture mode (a synchronising or allocating call fails the capture).
Napi::Value Addon::CudaGraphCaptureBegin(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  check_cuda(args, cuda::graph_capture_begin(as_ptr(args.pointer(0, "stream", false))), "cudaStreamBeginCapture");
  return info.Env().Undefined();
}

// cudaGraphCaptureEnd(stream) -> bigint (an instantiated cudaGraphExec_t)
Napi::Value Addon::CudaGraphCaptureEnd(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  void* exec = nullptr;
  check_cuda(args, cuda::graph_capture_end(as_ptr(args.pointer(0, "stream", false)), &exec), "cudaStreamEndCapture");
  return Napi::Value(info.Env(), bigint(info.Env(), exec));
}

// cudaGraphLaunch(exec, stream)
Napi::Value Addon::CudaGraphLaunch(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  check_cuda(args, cuda::graph_launch(as_ptr(args.pointer(0, "exec", false)), stream_arg(args, 1)), "cudaGraphLaunch");
  return info.Env().Undefined();
}

// cudaGraphDestroy(exec)
Napi::Value Addon::CudaGraphDestroy(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  check_cuda(args, cuda::graph_destroy(as_ptr(args.pointer(0, "exec", false))), "cudaGraphExecDestroy");
  return info.Env().Undefined();
}

}  // namespace sh::napi
