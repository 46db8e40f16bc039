// Declarations shared by the .cu files; not part of the kernel API.
#pragma once

#include "api.h"

namespace sh::cuda {

// One-time per-process kernel attributes (dynamic shared memory limits); idempotent.
Result prepare_kernels();

// Dynamic shared memory an eviction block may use on the current device (after prepare_kernels).
int evict_staging_bytes();

// Slots per chunk of the ordered eviction for a store, and the ints of eviction state per head.
int32_t evict_chunk_for(const StoreSpec& spec);
inline size_t evict_state_ints(int32_t chunks) { return 8 + 3 * static_cast<size_t>(chunks); }

// append for a packed store (packed.cu); append() dispatches to it.
Result append_packed(const Store& store, int32_t seq, Tensor k, Tensor v, int32_t count, int32_t first_position,
                     const TrackerSpec& tracker, void* stream);

// Per-head layouts (heads.cu): every head of `seq` (all sequences for -1) owns
// min(capacity, floor(slots / kvHeads)) slots, in head order from the sequence's first slot.
Result spread_evenly(const Store& store, int32_t seq, void* stream);

}  // namespace sh::cuda
