// Status codes returned by every kernel. Kernels never throw; only csrc/napi turns a status into a JS
// error (KV_* codes of src/core/errors.ts).
#pragma once

#include <cstdint>

namespace sh {

enum class Status : int32_t {
  Ok = 0,
  // An array has the wrong length for the store's geometry (KV_SHAPE).
  Shape = 1,
  // An element type the operation does not accept (KV_DTYPE).
  DType = 2,
  // An argument out of range, or a store whose state breaks its invariants (KV_ARGUMENT).
  Argument = 3,
  // No room left, or more tokens asked for than can be dropped (KV_BUDGET).
  Budget = 4,
  // Scratch memory could not be allocated (KV_BACKEND).
  NoMemory = 5,
};

}  // namespace sh
