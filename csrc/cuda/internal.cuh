// Declarations shared by the .cu files; not part of the kernel API.
#pragma once

#include "api.h"

namespace sh::cuda {

// One-time per-process kernel attributes (dynamic shared memory limits); idempotent.
Result prepare_kernels();

}  // namespace sh::cuda
