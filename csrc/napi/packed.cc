// The packer and packed-store entry points (docs/packing.md): read and check every argument, run the
// kernel, map its status. Registered on the addon's exports by RegisterPacked.
#include "packed.h"

#include <cmath>
#include <cstring>
#include <string>

#include "args.h"
#include "scissorhands/pack.h"
#include "scissorhands/packed.h"

namespace sh::napi {
namespace {

uint64_t u64(int64_t x) { return static_cast<uint64_t>(x); }

Addon& addon_of(const Napi::CallbackInfo& info) { return *static_cast<Addon*>(info.Data()); }

// The typed array's data if `value` is one of `type` with exactly `length` elements, else a KV error.
void* typed(const Args& args, napi_value value, const std::string& name, napi_typedarray_type type, const char* type_name,
            uint64_t length) {
  napi_env env = args.env();
  bool is_typed = false;
  napi_is_typedarray(env, value, &is_typed);
  if (!is_typed) args.fail(kDType, name, std::string("expected a ") + type_name);
  napi_typedarray_type actual;
  size_t actual_length = 0;
  void* data = nullptr;
  napi_get_typedarray_info(env, value, &actual, &actual_length, &data, nullptr, nullptr);
  if (actual != type) args.fail(kDType, name, std::string("expected a ") + type_name);
  if (actual_length != length) {
    args.fail(kShape, name, "expected " + std::to_string(length) + " elements, got " + std::to_string(actual_length));
  }
  return data;
}

napi_value named(const Args& args, napi_value object, const char* name) {
  napi_value value;
  if (napi_get_named_property(args.env(), object, name, &value) != napi_ok) throw Napi::Error::New(args.env());
  return value;
}

int64_t integer_of(const Args& args, napi_value value, const std::string& name, int64_t min, int64_t max) {
  napi_valuetype type;
  napi_typeof(args.env(), value, &type);
  double x = NAN;
  if (type == napi_number) napi_get_value_double(args.env(), value, &x);
  if (!(x >= static_cast<double>(min) && x <= static_cast<double>(max) && std::floor(x) == x)) {
    args.fail(kArgument, name, "expected an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return static_cast<int64_t>(x);
}

DType dtype_of(const Args& args, size_t i, const char* name) {
  char text[8] = {0};
  size_t length = 0;
  napi_value value = args.argument(i);
  if (napi_get_value_string_utf8(args.env(), value, text, sizeof text, &length) == napi_ok) {
    if (std::strcmp(text, "f32") == 0) return DType::F32;
    if (std::strcmp(text, "f16") == 0) return DType::F16;
    if (std::strcmp(text, "bf16") == 0) return DType::BF16;
  }
  args.fail(kDType, name, "expected 'f32', 'f16' or 'bf16'");
}

// Every property of a packed LayerStore, read before any data pointer is taken.
struct PackedRefs {
  Args::StoreRefs base;
  int64_t bits;
  int64_t group_size;
  int64_t residual;
  int64_t packed_slots;
  int64_t residual_slots;
  int64_t max_runs;
  napi_value arrays[12];
};

constexpr const char* kPackedArrays[12] = {
    "keyCodes", "valueCodes", "valueScales", "valueZeros", "keyScales", "keyZeros",
    "runLengths", "runGenerations", "runs", "packed", "residualKeys", "residualValues",
};

PackedRefs read_packed(const Args& args) {
  PackedRefs refs{};
  refs.base = args.read_store(0);
  // Packed arrays are laid out per (sequence, head) with equal slots: no per-head layout.
  if (refs.base.bases != nullptr) args.fail(kArgument, "store.heads", "packed stores have no per-head layout");
  napi_value packed = named(args, args.argument(0), "packed");
  napi_valuetype type;
  napi_typeof(args.env(), packed, &type);
  if (type != napi_object) args.fail(kArgument, "store.packed", "expected a packed store (KVCache storage 'int2', 'int4' or 'int8')");
  refs.bits = integer_of(args, named(args, packed, "bits"), "store.packed.bits", 2, 8);
  if (refs.bits != 2 && refs.bits != 4 && refs.bits != 8) args.fail(kArgument, "store.packed.bits", "expected 2, 4 or 8");
  refs.group_size = integer_of(args, named(args, packed, "groupSize"), "store.packed.groupSize", 8, 512);
  refs.residual = integer_of(args, named(args, packed, "residual"), "store.packed.residual", 0, 1 << 16);
  refs.packed_slots = integer_of(args, named(args, packed, "packedSlots"), "store.packed.packedSlots", 0, INT32_MAX);
  refs.residual_slots = integer_of(args, named(args, packed, "residualSlots"), "store.packed.residualSlots", 0, INT32_MAX);
  refs.max_runs = integer_of(args, named(args, packed, "maxRuns"), "store.packed.maxRuns", 0, INT32_MAX);
  for (int a = 0; a < 12; ++a) refs.arrays[a] = named(args, packed, kPackedArrays[a]);
  return refs;
}

PackedView resolve_packed(const Args& args, const PackedRefs& refs) {
  PackedView view;
  LayerView& base = view.base;
  base = refs.base.view;
  const int32_t d = base.head_dim;
  if (refs.group_size % 8 != 0 || d % refs.group_size != 0) {
    args.fail(kArgument, "store.packed.groupSize", "must be a multiple of 8 dividing the head size");
  }
  view.bits = static_cast<uint32_t>(refs.bits);
  view.group_size = static_cast<int32_t>(refs.group_size);
  view.residual = static_cast<int32_t>(refs.residual);
  int32_t packed_slots = 0;
  int32_t residual_slots = 0;
  int32_t max_runs = 0;
  cpu::packed_sizes(base.capacity, view.group_size, view.residual, &packed_slots, &residual_slots, &max_runs);
  if (refs.packed_slots != packed_slots || refs.residual_slots != residual_slots || refs.max_runs != max_runs) {
    args.fail(kArgument, "store.packed", "sizes do not match the store's capacity, group size and residual window");
  }
  view.packed_slots = packed_slots;
  view.residual_slots = residual_slots;
  view.max_runs = max_runs;

  const uint64_t heads = static_cast<uint64_t>(base.max_sequences) * static_cast<uint64_t>(base.kv_heads);
  const uint64_t limit = uint64_t{1} << 53;
  if (heads > limit / static_cast<uint64_t>(base.capacity)) args.fail(kShape, "store.capacity", "the store is too large");
  const uint64_t tokens = heads * static_cast<uint64_t>(base.capacity);
  if (tokens > limit / (kMaxHeadDim * 4) || tokens > limit / (static_cast<uint64_t>(base.aux_words) + 1)) {
    args.fail(kShape, "store.capacity", "the store is too large");
  }
  // Dense rows are unused: a packed store's keys and values are empty.
  typed(args, refs.base.arrays[0], "store.keys", napi_uint8_array, "Uint8Array", 0);
  typed(args, refs.base.arrays[1], "store.values", napi_uint8_array, "Uint8Array", 0);
  base.keys = nullptr;
  base.values = nullptr;
  base.positions = static_cast<int32_t*>(typed(args, refs.base.arrays[2], "store.positions", napi_int32_array, "Int32Array", tokens));
  base.scores = static_cast<float*>(typed(args, refs.base.arrays[3], "store.scores", napi_float32_array, "Float32Array", tokens));
  base.aux = static_cast<uint32_t*>(typed(args, refs.base.arrays[4], "store.aux", napi_uint32_array, "Uint32Array",
                                          tokens * static_cast<uint64_t>(base.aux_words)));
  base.lengths = static_cast<int32_t*>(typed(args, refs.base.arrays[5], "store.lengths", napi_int32_array, "Int32Array", heads));
  base.steps = static_cast<double*>(typed(args, refs.base.arrays[6], "store.steps", napi_float64_array, "Float64Array",
                                          static_cast<uint64_t>(base.max_sequences)));

  const uint64_t slots = heads * static_cast<uint64_t>(packed_slots);
  const uint64_t runs = heads * static_cast<uint64_t>(max_runs);
  const uint64_t cb = static_cast<uint64_t>(d) * view.bits / 8;
  const uint64_t groups = static_cast<uint64_t>(d / view.group_size);
  const uint64_t residual_bytes = heads * static_cast<uint64_t>(residual_slots) * base.row_bytes();
  view.key_codes = static_cast<uint8_t*>(typed(args, refs.arrays[0], "store.packed.keyCodes", napi_uint8_array, "Uint8Array", slots * cb));
  view.value_codes = static_cast<uint8_t*>(typed(args, refs.arrays[1], "store.packed.valueCodes", napi_uint8_array, "Uint8Array", slots * cb));
  view.value_scales = static_cast<uint16_t*>(typed(args, refs.arrays[2], "store.packed.valueScales", napi_uint16_array, "Uint16Array", slots * groups));
  view.value_zeros = static_cast<uint16_t*>(typed(args, refs.arrays[3], "store.packed.valueZeros", napi_uint16_array, "Uint16Array", slots * groups));
  view.key_scales = static_cast<uint16_t*>(typed(args, refs.arrays[4], "store.packed.keyScales", napi_uint16_array, "Uint16Array", runs * u64(d)));
  view.key_zeros = static_cast<uint16_t*>(typed(args, refs.arrays[5], "store.packed.keyZeros", napi_uint16_array, "Uint16Array", runs * u64(d)));
  view.run_lengths = static_cast<int32_t*>(typed(args, refs.arrays[6], "store.packed.runLengths", napi_int32_array, "Int32Array", runs));
  view.run_generations = static_cast<uint8_t*>(typed(args, refs.arrays[7], "store.packed.runGenerations", napi_uint8_array, "Uint8Array", runs));
  view.runs = static_cast<int32_t*>(typed(args, refs.arrays[8], "store.packed.runs", napi_int32_array, "Int32Array", heads));
  view.packed = static_cast<int32_t*>(typed(args, refs.arrays[9], "store.packed.packed", napi_int32_array, "Int32Array", heads));
  view.residual_keys = static_cast<uint8_t*>(typed(args, refs.arrays[10], "store.packed.residualKeys", napi_uint8_array, "Uint8Array", residual_bytes));
  view.residual_values = static_cast<uint8_t*>(typed(args, refs.arrays[11], "store.packed.residualValues", napi_uint8_array, "Uint8Array", residual_bytes));
  const uintptr_t element = bytes_per_element(base.dtype);
  if (reinterpret_cast<uintptr_t>(view.residual_keys) % element != 0 || reinterpret_cast<uintptr_t>(view.residual_values) % element != 0) {
    args.fail(kArgument, "store.packed.residualKeys", "residual rows must start at a multiple of the element size");
  }
  return view;
}

void check_packed_state(const Args& args, const PackedView& view, int32_t seq, int32_t min_length) {
  args.check_state(view.base, seq, min_length);
  if (!cpu::packed_state_valid(view, seq)) {
    args.fail(kArgument, "store.packed", "the packed state of sequence " + std::to_string(seq) + " is inconsistent (runs, packed and lengths)");
  }
}

void check_values(const Args& args, const PackedView& view, HostSpan span, uint64_t elements, const char* name) {
  const int64_t bad = cpu::first_unpackable(view, span, static_cast<size_t>(elements));
  if (bad >= 0) {
    args.fail(kArgument, name,
              "element " + std::to_string(bad) + " is NaN, infinite or outside [-65504, 65504] as stored: packed storage holds finite values in the f16 range");
  }
}

// packMatrix(input, dtype, bits, rows, cols, axis, groupSize, codes, scales, zeros)
Napi::Value PackMatrix(const Napi::CallbackInfo& info) {
  Addon& addon = addon_of(info);
  const Args args(addon, info);
  cpu::Matrix m;
  m.dtype = dtype_of(args, 1, "dtype");
  cpu::PackSpec spec;
  spec.bits = static_cast<uint32_t>(args.integer(2, "bits", 2, 8));
  if (spec.bits != 2 && spec.bits != 4 && spec.bits != 8) args.fail(kArgument, "bits", "expected 2, 4 or 8");
  m.rows = args.integer(3, "rows", 1, int64_t{1} << 30);
  m.cols = args.integer(4, "cols", 1, int64_t{1} << 30);
  if (m.rows * m.cols > (int64_t{1} << 31)) args.fail(kShape, "rows", "more than 2^31 elements");
  spec.axis = static_cast<int32_t>(args.integer(5, "axis", 0, 1));
  spec.group_size = args.integer(6, "groupSize", 1, int64_t{1} << 30);
  if ((spec.axis == 1 ? m.cols : m.rows) % spec.group_size != 0) args.fail(kArgument, "groupSize", "does not divide the grouped axis");
  const uint64_t n = u64(m.rows * m.cols);
  const uint64_t groups = n / u64(spec.group_size);
  const void* input = m.dtype == DType::F32 ? typed(args, args.argument(0), "input", napi_float32_array, "Float32Array", n)
                                            : typed(args, args.argument(0), "input", napi_uint16_array, "Uint16Array", n);
  uint8_t* codes = static_cast<uint8_t*>(typed(args, args.argument(7), "codes", napi_uint8_array, "Uint8Array", (n * spec.bits + 7) / 8));
  uint16_t* scales = static_cast<uint16_t*>(typed(args, args.argument(8), "scales", napi_uint16_array, "Uint16Array", groups));
  uint16_t* zeros = static_cast<uint16_t*>(typed(args, args.argument(9), "zeros", napi_uint16_array, "Uint16Array", groups));
  std::memset(codes, 0, (n * spec.bits + 7) / 8);
  int64_t bad = -1;
  const bool simd = std::strcmp(addon.context().simd(), "avx512") == 0 && cpu::pack_simd_available();
  if (cpu::pack_matrix(input, m, spec, codes, scales, zeros, &bad, simd) != Status::Ok) {
    args.fail(kArgument, "input",
              "element " + std::to_string(bad) + " is NaN, infinite or outside [-65504, 65504]: packed formats hold finite values in the f16 range");
  }
  return info.Env().Undefined();
}

// unpackMatrix(codes, scales, zeros, bits, rows, cols, axis, groupSize, outDtype, out)
Napi::Value UnpackMatrix(const Napi::CallbackInfo& info) {
  Addon& addon = addon_of(info);
  const Args args(addon, info);
  cpu::Matrix m;
  cpu::PackSpec spec;
  spec.bits = static_cast<uint32_t>(args.integer(3, "bits", 2, 8));
  if (spec.bits != 2 && spec.bits != 4 && spec.bits != 8) args.fail(kArgument, "bits", "expected 2, 4 or 8");
  m.rows = args.integer(4, "rows", 1, int64_t{1} << 30);
  m.cols = args.integer(5, "cols", 1, int64_t{1} << 30);
  if (m.rows * m.cols > (int64_t{1} << 31)) args.fail(kShape, "rows", "more than 2^31 elements");
  spec.axis = static_cast<int32_t>(args.integer(6, "axis", 0, 1));
  spec.group_size = args.integer(7, "groupSize", 1, int64_t{1} << 30);
  if ((spec.axis == 1 ? m.cols : m.rows) % spec.group_size != 0) args.fail(kArgument, "groupSize", "does not divide the grouped axis");
  const DType out_dtype = dtype_of(args, 8, "dtype");
  const uint64_t n = u64(m.rows * m.cols);
  const uint64_t groups = n / u64(spec.group_size);
  const uint8_t* codes = static_cast<uint8_t*>(typed(args, args.argument(0), "codes", napi_uint8_array, "Uint8Array", (n * spec.bits + 7) / 8));
  const uint16_t* scales = static_cast<uint16_t*>(typed(args, args.argument(1), "scales", napi_uint16_array, "Uint16Array", groups));
  const uint16_t* zeros = static_cast<uint16_t*>(typed(args, args.argument(2), "zeros", napi_uint16_array, "Uint16Array", groups));
  void* out = out_dtype == DType::F32 ? typed(args, args.argument(9), "out", napi_float32_array, "Float32Array", n)
                                      : typed(args, args.argument(9), "out", napi_uint16_array, "Uint16Array", n);
  const bool simd = std::strcmp(addon.context().simd(), "avx512") == 0 && cpu::pack_simd_available();
  cpu::unpack_matrix(codes, scales, zeros, m, spec, out_dtype, out, simd);
  return info.Env().Undefined();
}

// packedAppend(store, seq, k, v, count, firstPosition, tracker, keysOut | null)
Napi::Value PackedAppend(const Napi::CallbackInfo& info) {
  Addon& addon = addon_of(info);
  const Args args(addon, info);
  const PackedRefs refs = read_packed(args);
  const TrackerSpec tracker = args.tracker(6, refs.base.view);
  const PackedView view = resolve_packed(args, refs);
  const LayerView& base = view.base;
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, base.max_sequences - 1));
  const int64_t count = args.integer(4, "count", 0, INT32_MAX);
  const int64_t first = args.integer(5, "firstPosition", INT32_MIN, INT32_MAX - count);
  check_packed_state(args, view, seq, 0);
  const int32_t* lengths = base.lengths + static_cast<size_t>(seq) * static_cast<size_t>(base.kv_heads);
  for (int32_t h = 0; h < base.kv_heads; ++h) {
    if (count > base.capacity - lengths[h]) {
      args.fail(kBudget, "count",
                "head " + std::to_string(h) + " of sequence " + std::to_string(seq) + " keeps " + std::to_string(lengths[h]) + " of " +
                    std::to_string(base.capacity) + " tokens: no room for " + std::to_string(count) + " more");
    }
  }
  const uint64_t elements = u64(count) * u64(base.kv_heads) * u64(base.head_dim);
  const HostSpan k = args.host(2, "k", base, elements);
  const HostSpan v = args.host(3, "v", base, elements);
  float* keys_out = args.floats(7, "keysOut", elements, true);
  check_values(args, view, k, elements, "k");
  check_values(args, view, v, elements, "v");
  args.check(cpu::packed_append(addon.context(), view, seq, k, v, static_cast<int32_t>(count), static_cast<int32_t>(first), tracker,
                                keys_out),
             "append");
  return info.Env().Undefined();
}

// packedDecode(store, seq, q, out, queryHeads, scale, tracker, probsOut | null)
Napi::Value PackedDecode(const Napi::CallbackInfo& info) {
  Addon& addon = addon_of(info);
  const Args args(addon, info);
  const PackedRefs refs = read_packed(args);
  const TrackerSpec tracker = args.tracker(6, refs.base.view);
  const PackedView view = resolve_packed(args, refs);
  const LayerView& base = view.base;
  cpu::AttentionArgs a;
  a.seq = static_cast<int32_t>(args.integer(1, "seq", 0, base.max_sequences - 1));
  a.query_heads = static_cast<int32_t>(args.integer(4, "attention.queryHeads", 1, 4096));
  if (a.query_heads % base.kv_heads != 0) args.fail(kArgument, "attention.queryHeads", "must be a multiple of the store's kvHeads");
  a.scale = static_cast<float>(args.finite(5, "attention.scale"));
  const uint64_t elements = u64(a.query_heads) * u64(base.head_dim);
  a.q = args.host(2, "q", base, elements);
  a.out = args.host_like(3, "out", a.q, elements);
  a.probs_out = args.floats(7, "probsOut", u64(base.kv_heads) * u64(base.capacity), true);
  check_packed_state(args, view, a.seq, 1);
  args.check(cpu::packed_attend(addon.context(), view, a, tracker), "decode");
  return info.Env().Undefined();
}

// packedPrefill(store, seq, q, rows, out, queryHeads, scale, tracker, rowBegin, rowEnd, probsOut | null)
Napi::Value PackedPrefill(const Napi::CallbackInfo& info) {
  Addon& addon = addon_of(info);
  const Args args(addon, info);
  const PackedRefs refs = read_packed(args);
  const TrackerSpec tracker = args.tracker(7, refs.base.view);
  const PackedView view = resolve_packed(args, refs);
  const LayerView& base = view.base;
  cpu::AttentionArgs a;
  a.seq = static_cast<int32_t>(args.integer(1, "seq", 0, base.max_sequences - 1));
  a.rows = static_cast<int32_t>(args.integer(3, "rows", 1, base.capacity));
  a.query_heads = static_cast<int32_t>(args.integer(5, "attention.queryHeads", 1, 4096));
  if (a.query_heads % base.kv_heads != 0) args.fail(kArgument, "attention.queryHeads", "must be a multiple of the store's kvHeads");
  a.scale = static_cast<float>(args.finite(6, "attention.scale"));
  a.row_begin = static_cast<int32_t>(args.integer(8, "rowBegin", 0, a.rows - 1));
  a.row_end = static_cast<int32_t>(args.integer(9, "rowEnd", a.row_begin + 1, a.rows));
  const uint64_t elements = u64(a.rows) * u64(a.query_heads) * u64(base.head_dim);
  a.q = args.host(2, "q", base, elements);
  a.out = args.host_like(4, "out", a.q, elements);
  a.probs_out = args.floats(10, "probsOut", u64(a.row_end - a.row_begin) * u64(base.kv_heads) * u64(base.capacity), true);
  check_packed_state(args, view, a.seq, a.rows);
  args.check(cpu::packed_attend(addon.context(), view, a, tracker), "prefill");
  return info.Env().Undefined();
}

// packedObserve(store, seq, probs, stride, queryHeads, tracker, probsOut | null)
Napi::Value PackedObserve(const Napi::CallbackInfo& info) {
  Addon& addon = addon_of(info);
  const Args args(addon, info);
  const PackedRefs refs = read_packed(args);
  const TrackerSpec tracker = args.tracker(5, refs.base.view);
  const PackedView view = resolve_packed(args, refs);
  const LayerView& base = view.base;
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, base.max_sequences - 1));
  const int64_t stride = args.integer(3, "stride", 0, INT32_MAX);
  const int64_t query_heads = args.integer(4, "queryHeads", 1, 4096);
  if (query_heads % base.kv_heads != 0) args.fail(kArgument, "queryHeads", "must be a multiple of the store's kvHeads");
  const float* probs = args.floats(2, "probs", u64(query_heads) * u64(stride), false);
  float* probs_out = args.floats(6, "probsOut", u64(base.kv_heads) * u64(base.capacity), true);
  check_packed_state(args, view, seq, 0);
  const int32_t* lengths = base.lengths + static_cast<size_t>(seq) * static_cast<size_t>(base.kv_heads);
  for (int32_t h = 0; h < base.kv_heads; ++h) {
    if (lengths[h] > stride) {
      args.fail(kShape, "stride",
                "stride " + std::to_string(stride) + " is shorter than the " + std::to_string(lengths[h]) + " tokens of head " + std::to_string(h));
    }
  }
  args.check(cpu::observe(base, seq, probs, static_cast<size_t>(stride), static_cast<int32_t>(query_heads), tracker, probs_out), "observe");
  return info.Env().Undefined();
}

// packedEvict(store, seq, count, sinks, recent, scope)
Napi::Value PackedEvict(const Napi::CallbackInfo& info) {
  Addon& addon = addon_of(info);
  const Args args(addon, info);
  const PackedRefs refs = read_packed(args);
  const PackedView view = resolve_packed(args, refs);
  const LayerView& base = view.base;
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, base.max_sequences - 1));
  const int64_t count = args.integer(2, "count", 0, INT32_MAX);
  const int64_t sinks = args.integer(3, "sinks", 0, INT32_MAX);
  const int64_t recent = args.integer(4, "recent", 0, INT32_MAX);
  const EvictScope scope = args.choice(5, "scope", "head", "layer") ? EvictScope::Layer : EvictScope::Head;
  check_packed_state(args, view, seq, 0);
  const int32_t* lengths = base.lengths + static_cast<size_t>(seq) * static_cast<size_t>(base.kv_heads);
  for (int32_t h = 0; h < base.kv_heads; ++h) {
    const int64_t candidates = std::max<int64_t>(0, lengths[h] - sinks - recent);
    if (count > candidates) {
      args.fail(kBudget, "count",
                "head " + std::to_string(h) + " has " + std::to_string(candidates) + " tokens outside the " + std::to_string(sinks) +
                    " sinks and " + std::to_string(recent) + " recent ones, asked to drop " + std::to_string(count));
    }
    if (scope == EvictScope::Layer && lengths[h] != lengths[0]) {
      args.fail(kArgument, "scope", "scope 'layer' needs every KV head to keep the same number of tokens");
    }
  }
  args.check(cpu::packed_evict(addon.context(), view, seq, static_cast<int32_t>(count), static_cast<int32_t>(sinks),
                               static_cast<int32_t>(recent), scope),
             "evict");
  return info.Env().Undefined();
}

}  // namespace

void RegisterPacked(Addon& addon, Napi::Env env, Napi::Object exports) {
  const struct {
    const char* name;
    Napi::Value (*fn)(const Napi::CallbackInfo&);
  } functions[] = {
      {"packMatrix", PackMatrix},       {"unpackMatrix", UnpackMatrix},   {"packedAppend", PackedAppend},
      {"packedDecode", PackedDecode},   {"packedPrefill", PackedPrefill}, {"packedObserve", PackedObserve},
      {"packedEvict", PackedEvict},
  };
  for (const auto& f : functions) exports.Set(f.name, Napi::Function::New(env, f.fn, f.name, &addon));
}

}  // namespace sh::napi
