// Reading and checking the arguments of one call. Every check failure throws a JS error with a stable
// KV_* code naming the argument; nothing that passes these checks can make a kernel read or write out
// of bounds.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

#include "addon.h"
#include "scissorhands/layer_view.h"
#include "scissorhands/status.h"
#include "scissorhands/tracker.h"

namespace sh::napi {

// Stable codes of src/core/errors.ts.
inline constexpr const char* kShape = "KV_SHAPE";
inline constexpr const char* kDType = "KV_DTYPE";
inline constexpr const char* kArgument = "KV_ARGUMENT";
inline constexpr const char* kBudget = "KV_BUDGET";
inline constexpr const char* kBackend = "KV_BACKEND";

class Args {
 public:
  Args(Addon& addon, const Napi::CallbackInfo& info);

  [[noreturn]] void fail(const char* code, const std::string& argument, const std::string& message) const;

  // An integer in [min, max].
  int64_t integer(size_t i, const char* name, int64_t min, int64_t max) const;
  // A number read from an argument block (e.g. a Float64Array) that must be an integer in [min, max].
  int64_t integer_of(double x, const std::string& name, int64_t min, int64_t max) const;
  // A finite number.
  double finite(size_t i, const char* name) const;
  // One of two strings: false for `first`, true for `second`.
  bool choice(size_t i, const char* name, const char* first, const char* second) const;

  // The LayerStore's sizes and arrays. Reading properties may run JS (getters), which could detach a
  // buffer, so every property is read first (read_store, tracker) and only then are data pointers taken
  // (resolve), with no JS running until the kernel returns.
  struct StoreRefs {
    LayerView view;
    napi_value arrays[7];
    // The per-head layout (store.heads), absent (both null) for a dense store.
    napi_value bases = nullptr;
    napi_value capacities = nullptr;
    // Token slots of one sequence: store.heads.slots, or kvHeads * capacity for a dense store.
    uint64_t slots = 0;
  };
  StoreRefs read_store(size_t i) const;
  // Every array's element type, length and alignment; fills the view's pointers.
  LayerView resolve(const StoreRefs& refs) const;
  // The heads of seq lie in order inside its slots without overlapping, each within capacity; their kept
  // lengths are in [min_length, the head's capacity]; its clock is an exact integer.
  void check_state(const LayerView& view, int32_t seq, int32_t min_length) const;
  TrackerSpec tracker(size_t i, const LayerView& view) const;
  // q, k, v, out: a Float32Array, or a Uint16Array of the store's 16-bit dtype, of exactly `length`.
  HostSpan host(size_t i, const char* name, const LayerView& view, uint64_t length) const;
  // out: the same array type as `like`, of exactly `length`.
  HostSpan host_like(size_t i, const char* name, HostSpan like, uint64_t length) const;
  // A typed array of `type` with exactly `length` elements.
  void* typed_array(size_t i, const char* name, napi_typedarray_type type, const char* type_name, uint64_t length) const {
    return typed(argv_[i], name, type, type_name, length);
  }
  // A Float32Array of exactly `length` elements; null/undefined gives nullptr when optional.
  float* floats(size_t i, const char* name, uint64_t length, bool optional) const;

  // A device pointer or stream passed as a bigint (0n is null: allowed only when `nullable`).
  uint64_t pointer(size_t i, const char* name, bool nullable) const;
  napi_value at(size_t i) const { return argv_[i]; }

  // Throws for a kernel's failure status (the checks above make these rare).
  void check(Status status, const char* what) const;

  napi_env env() const { return env_; }
  // Argument i as passed (undefined past the last).
  napi_value argument(size_t i) const { return argv_[i]; }

 private:
  napi_value property(napi_value object, Key key) const;
  int64_t integer_value(napi_value value, const std::string& name, int64_t min, int64_t max) const;
  // The typed array's data if `value` is one of `type` with exactly `length` elements.
  void* typed(napi_value value, const std::string& name, napi_typedarray_type type, const char* type_name,
              uint64_t length) const;

  Addon& addon_;
  napi_env env_;
  napi_value argv_[16];
  size_t argc_;
};

}  // namespace sh::napi
