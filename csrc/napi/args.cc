#include "args.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace sh::napi {
namespace {

std::string describe(double x) {
  char text[40];
  std::snprintf(text, sizeof text, "%.17g", x);
  return text;
}

}  // namespace

Args::Args(Addon& addon, const Napi::CallbackInfo& info) : addon_(addon), env_(info.Env()), argc_(info.Length()) {
  napi_value undefined;
  napi_get_undefined(env_, &undefined);
  for (size_t i = 0; i < sizeof argv_ / sizeof argv_[0]; ++i) argv_[i] = i < argc_ ? info[i] : undefined;
}

void Args::fail(const char* code, const std::string& argument, const std::string& message) const {
  addon_.fail(Napi::Env(env_), code, argument, message);
}

napi_value Args::property(napi_value object, Key key) const {
  napi_value value;
  if (napi_get_property(env_, object, addon_.key(Napi::Env(env_), key), &value) != napi_ok) {
    // A throwing getter: surface its exception as is.
    throw Napi::Error::New(env_);
  }
  return value;
}

int64_t Args::integer_value(napi_value value, const std::string& name, int64_t min, int64_t max) const {
  napi_valuetype type;
  napi_typeof(env_, value, &type);
  if (type != napi_number) {
    fail(kArgument, name, "expected an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "], got a non-number");
  }
  double x = NAN;
  napi_get_value_double(env_, value, &x);
  return integer_of(x, name, min, max);
}

int64_t Args::integer(size_t i, const char* name, int64_t min, int64_t max) const {
  return integer_value(argv_[i], name, min, max);
}

int64_t Args::integer_of(double x, const std::string& name, int64_t min, int64_t max) const {
  if (!(x >= static_cast<double>(min) && x <= static_cast<double>(max) && std::floor(x) == x)) {
    fail(kArgument, name, "expected an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "], got " + describe(x));
  }
  return static_cast<int64_t>(x);
}

double Args::finite(size_t i, const char* name) const {
  napi_valuetype type;
  napi_typeof(env_, argv_[i], &type);
  double x = NAN;
  if (type == napi_number) napi_get_value_double(env_, argv_[i], &x);
  if (!std::isfinite(x)) fail(kArgument, name, "expected a finite number");
  return x;
}

bool Args::choice(size_t i, const char* name, const char* first, const char* second) const {
  char text[16] = {0};
  size_t length = 0;
  if (napi_get_value_string_utf8(env_, argv_[i], text, sizeof text, &length) == napi_ok) {
    if (std::strcmp(text, first) == 0) return false;
    if (std::strcmp(text, second) == 0) return true;
  }
  fail(kArgument, name, std::string("expected '") + first + "' or '" + second + "'");
}

void* Args::typed(napi_value value, const std::string& name, napi_typedarray_type type, const char* type_name,
                  uint64_t length) const {
  bool is_typed = false;
  napi_is_typedarray(env_, value, &is_typed);
  if (!is_typed) fail(kDType, name, std::string("expected a ") + type_name);
  napi_typedarray_type actual;
  size_t actual_length = 0;
  void* data = nullptr;
  napi_get_typedarray_info(env_, value, &actual, &actual_length, &data, nullptr, nullptr);
  if (actual != type) fail(kDType, name, std::string("expected a ") + type_name);
  if (actual_length != length) {
    fail(kShape, name, "expected " + std::to_string(length) + " elements, got " + std::to_string(actual_length));
  }
  return data;
}

Args::StoreRefs Args::read_store(size_t i) const {
  napi_valuetype type;
  napi_typeof(env_, argv_[i], &type);
  if (type != napi_object) fail(kArgument, "store", "expected a LayerStore object");
  const napi_value object = argv_[i];

  StoreRefs refs{};
  LayerView& view = refs.view;
  char dtype[8] = {0};
  size_t dtype_length = 0;
  napi_get_value_string_utf8(env_, property(object, Key::DType), dtype, sizeof dtype, &dtype_length);
  if (std::strcmp(dtype, "f32") == 0) {
    view.dtype = DType::F32;
  } else if (std::strcmp(dtype, "f16") == 0) {
    view.dtype = DType::F16;
  } else if (std::strcmp(dtype, "bf16") == 0) {
    view.dtype = DType::BF16;
  } else {
    fail(kDType, "store.dtype", "expected 'f32', 'f16' or 'bf16'");
  }
  view.layer = static_cast<uint32_t>(integer_value(property(object, Key::Layer), "store.layer", 0, INT32_MAX));
  view.max_sequences = static_cast<int32_t>(integer_value(property(object, Key::MaxSequences), "store.maxSequences", 1, INT32_MAX));
  view.kv_heads = static_cast<int32_t>(integer_value(property(object, Key::KvHeads), "store.kvHeads", 1, 4096));
  view.head_dim = static_cast<int32_t>(integer_value(property(object, Key::HeadDim), "store.headDim", 1, kMaxHeadDim));
  view.capacity = static_cast<int32_t>(integer_value(property(object, Key::Capacity), "store.capacity", 1, INT32_MAX));
  view.aux_words = static_cast<int32_t>(integer_value(property(object, Key::AuxWords), "store.auxWords", 0, 65536));
  const Key arrays[7] = {Key::Keys, Key::Values, Key::Positions, Key::Scores, Key::Aux, Key::Lengths, Key::Steps};
  for (int a = 0; a < 7; ++a) refs.arrays[a] = property(object, arrays[a]);
  refs.slots = static_cast<uint64_t>(view.kv_heads) * static_cast<uint64_t>(view.capacity);
  const napi_value heads = property(object, Key::Heads);
  napi_valuetype heads_type;
  napi_typeof(env_, heads, &heads_type);
  if (heads_type != napi_undefined) {
    if (heads_type != napi_object) fail(kArgument, "store.heads", "expected a HeadLayout object or undefined");
    refs.slots = static_cast<uint64_t>(integer_value(property(heads, Key::Slots), "store.heads.slots", 1, INT32_MAX));
    refs.bases = property(heads, Key::Bases);
    refs.capacities = property(heads, Key::Capacities);
  }
  return refs;
}

LayerView Args::resolve(const StoreRefs& refs) const {
  LayerView view = refs.view;
  // Element counts: each factor is below 2^32 and the products are kept below 2^53 (beyond any typed
  // array length) before anything is multiplied further.
  const uint64_t heads = static_cast<uint64_t>(view.max_sequences) * static_cast<uint64_t>(view.kv_heads);
  const uint64_t limit = uint64_t{1} << 53;
  // slots is at most kvHeads * capacity (dense) or below 2^31 (heads.slots): below 2^43.
  if (static_cast<uint64_t>(view.max_sequences) > limit / refs.slots) fail(kShape, "store.capacity", "the store is too large");
  const uint64_t tokens = static_cast<uint64_t>(view.max_sequences) * refs.slots;
  if (tokens > limit / (kMaxHeadDim * 4) || tokens > limit / (static_cast<uint64_t>(view.aux_words) + 1)) {
    fail(kShape, "store.capacity", "the store is too large");
  }
  const uint64_t bytes = tokens * view.row_bytes();

  view.keys = static_cast<uint8_t*>(typed(refs.arrays[0], "store.keys", napi_uint8_array, "Uint8Array", bytes));
  view.values = static_cast<uint8_t*>(typed(refs.arrays[1], "store.values", napi_uint8_array, "Uint8Array", bytes));
  const uintptr_t element = bytes_per_element(view.dtype);
  if (reinterpret_cast<uintptr_t>(view.keys) % element != 0 || reinterpret_cast<uintptr_t>(view.values) % element != 0) {
    fail(kArgument, "store.keys", "keys and values must start at a multiple of the element size");
  }
  view.positions = static_cast<int32_t*>(typed(refs.arrays[2], "store.positions", napi_int32_array, "Int32Array", tokens));
  view.scores = static_cast<float*>(typed(refs.arrays[3], "store.scores", napi_float32_array, "Float32Array", tokens));
  view.aux = static_cast<uint32_t*>(typed(refs.arrays[4], "store.aux", napi_uint32_array, "Uint32Array",
                                          tokens * static_cast<uint64_t>(view.aux_words)));
  view.lengths = static_cast<int32_t*>(typed(refs.arrays[5], "store.lengths", napi_int32_array, "Int32Array", heads));
  view.steps = static_cast<double*>(typed(refs.arrays[6], "store.steps", napi_float64_array, "Float64Array",
                                          static_cast<uint64_t>(view.max_sequences)));
  view.sequence_slots = refs.slots;
  if (refs.bases != nullptr) {
    view.bases = static_cast<const int32_t*>(typed(refs.bases, "store.heads.bases", napi_int32_array, "Int32Array", heads));
    view.capacities =
        static_cast<const int32_t*>(typed(refs.capacities, "store.heads.capacities", napi_int32_array, "Int32Array", heads));
  }
  return view;
}

void Args::check_state(const LayerView& view, int32_t seq, int32_t min_length) const {
  if (view.bases != nullptr) {
    // Heads of seq in order inside its own slots: no kernel call on seq can touch another sequence.
    const int64_t slots = static_cast<int64_t>(view.sequence_slots);
    const size_t first = static_cast<size_t>(seq) * static_cast<size_t>(view.kv_heads);
    int64_t next = static_cast<int64_t>(seq) * slots;
    for (int32_t h = 0; h < view.kv_heads; ++h) {
      const int64_t base = view.bases[first + static_cast<size_t>(h)];
      const int64_t cap = view.capacities[first + static_cast<size_t>(h)];
      if (cap < 0 || cap > view.capacity || base < next) {
        fail(kArgument, "store.heads", "head " + std::to_string(h) + " of sequence " + std::to_string(seq) +
                                           " overlaps the previous one or exceeds the capacity");
      }
      next = base + cap;
    }
    if (next > (static_cast<int64_t>(seq) + 1) * slots) {
      fail(kArgument, "store.heads", "the heads of sequence " + std::to_string(seq) + " run past its slots");
    }
  }
  const int32_t* lengths = view.lengths + static_cast<size_t>(seq) * static_cast<size_t>(view.kv_heads);
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    if (lengths[h] < 0 || lengths[h] > view.head_capacity(seq, h)) {
      fail(kArgument, "store.lengths",
           "length " + std::to_string(lengths[h]) + " of sequence " + std::to_string(seq) + ", head " + std::to_string(h) +
               " is outside [0, capacity]");
    }
    if (lengths[h] < min_length) {
      fail(kArgument, "rows",
           std::to_string(min_length) + " query row(s) need as many kept tokens, but KV head " + std::to_string(h) +
               " keeps " + std::to_string(lengths[h]));
    }
  }
  const double step = view.steps[seq];
  if (!(step >= 0.0 && step < 9007199254740992.0 && std::floor(step) == step)) {
    fail(kArgument, "store.steps", "the clock of sequence " + std::to_string(seq) + " is not an integer in [0, 2^53)");
  }
}

TrackerSpec Args::tracker(size_t i, const LayerView& view) const {
  napi_valuetype type;
  napi_typeof(env_, argv_[i], &type);
  if (type != napi_object) fail(kArgument, "tracker", "expected a tracker description object");
  const napi_value object = argv_[i];
  TrackerSpec spec;
  spec.kind = static_cast<TrackerKind>(integer_value(property(object, Key::Kind), "tracker.kind", 0, 6));
  spec.window = static_cast<uint32_t>(integer_value(property(object, Key::Window), "tracker.window", 0, INT32_MAX));
  // Seeds are taken modulo 2^32, as the 32-bit mixing of randomScore does.
  spec.seed = static_cast<uint32_t>(integer_value(property(object, Key::Seed), "tracker.seed", INT32_MIN, UINT32_MAX));

  char gqa[8] = {0};
  size_t gqa_length = 0;
  napi_get_value_string_utf8(env_, property(object, Key::Gqa), gqa, sizeof gqa, &gqa_length);
  if (std::strcmp(gqa, "mean") == 0) {
    spec.gqa = GqaReduce::Mean;
  } else if (std::strcmp(gqa, "max") == 0) {
    spec.gqa = GqaReduce::Max;
  } else {
    fail(kArgument, "tracker.gqa", "expected 'mean' or 'max'");
  }
  napi_valuetype observes_type;
  const napi_value observes = property(object, Key::Observes);
  napi_typeof(env_, observes, &observes_type);
  if (observes_type != napi_boolean) fail(kArgument, "tracker.observes", "expected a boolean");
  napi_get_value_bool(env_, observes, &spec.observes);

  if (spec.kind == TrackerKind::Scissorhands) {
    if (spec.window == 0) fail(kArgument, "tracker.window", "the scissorhands window must be at least 1");
    const uint64_t words = (static_cast<uint64_t>(spec.window) + 31) / 32;
    if (words > static_cast<uint64_t>(view.aux_words)) {
      fail(kArgument, "tracker.window",
           "a window of " + std::to_string(spec.window) + " needs " + std::to_string(words) + " aux words per token, the store has " +
               std::to_string(view.aux_words));
    }
  }
  return spec;
}

HostSpan Args::host(size_t i, const char* name, const LayerView& view, uint64_t length) const {
  bool is_typed = false;
  napi_is_typedarray(env_, argv_[i], &is_typed);
  napi_typedarray_type type = napi_float32_array;
  if (is_typed) napi_get_typedarray_info(env_, argv_[i], &type, nullptr, nullptr, nullptr, nullptr);
  if (type == napi_uint16_array) {
    if (view.dtype == DType::F32) {
      fail(kDType, name, "a Uint16Array holds f16/bf16 bits, but the store is f32: pass a Float32Array");
    }
    return HostSpan{typed(argv_[i], name, napi_uint16_array, "Uint16Array", length), true};
  }
  return HostSpan{typed(argv_[i], name, napi_float32_array, "Float32Array or Uint16Array", length), false};
}

HostSpan Args::host_like(size_t i, const char* name, HostSpan like, uint64_t length) const {
  if (like.bits16) return HostSpan{typed(argv_[i], name, napi_uint16_array, "Uint16Array like q", length), true};
  return HostSpan{typed(argv_[i], name, napi_float32_array, "Float32Array like q", length), false};
}

float* Args::floats(size_t i, const char* name, uint64_t length, bool optional) const {
  napi_valuetype type;
  napi_typeof(env_, argv_[i], &type);
  if (optional && (type == napi_null || type == napi_undefined)) return nullptr;
  return static_cast<float*>(typed(argv_[i], name, napi_float32_array, "Float32Array", length));
}

uint64_t Args::pointer(size_t i, const char* name, bool nullable) const {
  uint64_t value = 0;
  bool lossless = false;
  if (napi_get_value_bigint_uint64(env_, argv_[i], &value, &lossless) != napi_ok || !lossless) {
    fail(kArgument, name, "expected a bigint device address (non-negative, below 2^64)");
  }
  if (value == 0 && !nullable) fail(kArgument, name, "expected a device address, got 0n");
  return value;
}

void Args::check(Status status, const char* what) const {
  switch (status) {
    case Status::Ok:
      return;
    case Status::Shape:
      fail(kShape, what, "an array does not match the store's geometry");
    case Status::DType:
      fail(kDType, what, "an array's element type does not match the store");
    case Status::Argument:
      fail(kArgument, what, "an argument or the store's state is out of range");
    case Status::Budget:
      fail(kBudget, what, "not enough room or candidates");
    case Status::NoMemory:
      fail(kBackend, what, "out of memory for kernel scratch space");
  }
  fail(kBackend, what, "unknown kernel status " + std::to_string(static_cast<int>(status)));
}

}  // namespace sh::napi
