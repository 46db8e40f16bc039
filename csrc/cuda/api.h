// The CUDA kernels as the addon sees them: plain C++ (no CUDA headers), so csrc/napi can include it. Every
// entry point returns a Result and never throws; launches go on the caller's stream and neither allocate
// nor synchronise (decode, prefill, append, observe, evict and clear are CUDA-graph capturable).
//
// A device store has the layout of LayerStore (src/backend/backend.ts): element [s][h][t] of the
// per-token arrays at (s * kvHeads + h) * capacity + t (dense) or bases[s * kvHeads + h] + t (per-head
// layout), keys and values headDim elements per token. Its
// lengths and clocks live on the device and the kernels advance them, so a captured graph replays
// correctly; the caller's host mirror passes `length` hints that only size the grids.
#pragma once

#include <cstddef>
#include <cstdint>

#include "scissorhands/dtype.h"
#include "scissorhands/status.h"
#include "scissorhands/tracker.h"

namespace sh::cuda {

// Status::Ok with cuda == 0 is success; cuda != 0 is a CUDA runtime error code (cudaError_t). `what`
// names the failing step (a static string).
struct Result {
  Status status = Status::Ok;
  int cuda = 0;
  const char* what = "";
};

inline bool ok(const Result& r) { return r.status == Status::Ok && r.cuda == 0; }

// Head sizes compiled into the kernels (FlashInfer-style dispatch turns these into template arguments).
bool head_dim_supported(int32_t head_dim);
// Largest query heads per KV head that decode and prefill accept.
constexpr int32_t kMaxGroup = 256;
// Largest group that prefill with an observing tracker accepts (one tile of query rows per slot tile).
constexpr int32_t kMaxPrefillTrackGroup = 16;
// Sequences one decode launch covers.
constexpr int32_t kMaxBatch = 64;
// The architectures this build has code for, e.g. "sm_80 sm_86 sm_89 sm_90".
const char* compiled_archs();
const char* error_string(int cuda);

struct DeviceInfo {
  int count = 0;
  int device = 0;
  char name[256] = {0};
  int major = 0;
  int minor = 0;
  int multiprocessors = 0;
  size_t memory = 0;
  int l2_bytes = 0;
  int runtime_version = 0;
  int driver_version = 0;
};

// Fills `info` for the current device; returns 0, or the CUDA error that says why no device is usable.
int device_info(DeviceInfo* info);

struct StoreSpec {
  uint32_t layer = 0;
  DType dtype = DType::F16;
  int32_t max_sequences = 1;
  int32_t kv_heads = 1;
  int32_t head_dim = 128;
  int32_t capacity = 1;
  int32_t aux_words = 0;
  // Query heads the scratch is sized for (decode/prefill/observe accept at most this many).
  int32_t query_heads = 1;
  // Packed storage (docs/packing.md): bits per code (2, 4 or 8; 0 for dense rows), group size (a multiple
  // of 8 dividing head_dim) and residual window.
  int32_t bits = 0;
  int32_t group_size = 0;
  int32_t residual = 0;
  // Per-head layout (src/backend/backend.ts HeadLayout): token slots per sequence, shared by its heads;
  // 0 for the dense layout. Never with packed storage.
  int32_t slots = 0;
};

// The arrays of a packed store, in the LayerStore.packed layout (src/backend/backend.ts), plus device-only
// derived state: slot_run (each packed slot's key run, so decode finds its scales without walking the run
// table) and eviction scratch.
struct PackedStoreArrays {
  int32_t packed_slots = 0;
  int32_t residual_slots = 0;
  int32_t max_runs = 0;
  uint8_t* key_codes = nullptr;
  uint8_t* value_codes = nullptr;
  uint16_t* value_scales = nullptr;
  uint16_t* value_zeros = nullptr;
  uint16_t* key_scales = nullptr;
  uint16_t* key_zeros = nullptr;
  int32_t* run_lengths = nullptr;
  uint8_t* run_generations = nullptr;
  int32_t* runs = nullptr;
  int32_t* packed = nullptr;
  uint8_t* residual_keys = nullptr;
  uint8_t* residual_values = nullptr;
  int32_t* slot_run = nullptr;
  uint8_t* dropped = nullptr;
  int32_t* run_scratch = nullptr;
};

struct Store {
  StoreSpec spec;
  void* base = nullptr;
  size_t bytes = 0;
  uint8_t* keys = nullptr;
  uint8_t* values = nullptr;
  int32_t* positions = nullptr;
  float* scores = nullptr;
  uint32_t* aux = nullptr;
  int32_t* lengths = nullptr;
  double* steps = nullptr;
  // [maxSequences][queryHeads][capacity] floats: raw decode scores, prefill log-sum-exps, layer means.
  float* scratch = nullptr;
  // [maxSequences][queryHeads][maxSplits][headDim + 2] floats: split-K partial outputs, max and sum.
  float* partial = nullptr;
  // Bit flags a kernel sets when the device state breaks a precondition (it then writes nothing).
  int32_t* error = nullptr;
  // Decode's meeting points, [maxSequences][1 + 2 * kvHeads] ints: per sequence the blocks done (the last
  // advances the clock), per (sequence, KV head) the blocks arrived and the barrier's generation. Every
  // count is back at 0 when a launch ends.
  int32_t* sync = nullptr;
  int32_t max_splits = 1;
  int32_t multiprocessors = 1;
  // Eviction bookkeeping per (sequence, head): a header, then per chunk of evict_chunk slots the drops
  // and ties before it and a read mark (see evict.cu).
  int32_t* evict_state = nullptr;
  int32_t evict_chunk = 1;
  int32_t evict_chunks = 1;
  // Packed storage (spec.bits != 0); keys and values are then empty.
  PackedStoreArrays packed;
  // Per-head layout (spec.slots != 0): [maxSequences][kvHeads] base slot and capacity of each head; null
  // for the dense layout.
  int32_t* bases = nullptr;
  int32_t* caps = nullptr;
  // kvHeads x 2 ints of per-call arguments (evict_heads counts, relayout's new capacities and bases,
  // pool_scores ends), copied in stream order before the launch that reads them.
  int32_t* head_args = nullptr;
};

// Error flags of Store::error.
constexpr int32_t kErrorNoRoom = 1;
constexpr int32_t kErrorBadLength = 2;
constexpr int32_t kErrorCandidates = 4;
// A packed append met a key or value that is NaN, infinite or outside [-65504, 65504] as stored.
constexpr int32_t kErrorUnpackable = 8;

// Whether a packed storage spec is one the kernels take: bits 2/4/8, group a multiple of 8 dividing headDim.
bool packed_spec_supported(const StoreSpec& spec);
// Recomputes the device-only slot_run of every head from the run tables (after the arrays were uploaded).
Result rebuild_packed_index(const Store& store, void* stream);

size_t store_bytes(const StoreSpec& spec, int32_t* max_splits);
// Allocates (cudaMalloc, zeroed) on the current device. Status::Argument for an unsupported head size.
Result store_create(const StoreSpec& spec, Store* out);
void store_destroy(Store* store);

// A caller's device array: `data` of element type `dtype` (F32, or the store's 16-bit dtype); row r
// (a token or query row) starts `row_stride` elements after row r - 1, and holds heads x headDim
// contiguous elements.
struct Tensor {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t row_stride = 0;
};

Result append(const Store& store, int32_t seq, Tensor k, Tensor v, int32_t count, int32_t first_position,
              const TrackerSpec& tracker, void* stream);
// One query row per sequence of `seqs` (host array, batch <= kMaxBatch): q and out rows b are the rows
// of seqs[b]. max_length sizes the split-K grid (any device length stays correct).
Result decode(const Store& store, const int32_t* seqs, int32_t batch, int32_t max_length, Tensor q, Tensor out,
              int32_t query_heads, float scale, const TrackerSpec& tracker, void* stream);
// append of one token (k, v at first_position) then decode of seq, as one launch on a dense store (the
// split kernel block whose key range holds the new slot writes it first) and as append + decode on a packed
// one. max_length is the length after the append (it sizes the grid).
Result attend(const Store& store, int32_t seq, int32_t max_length, Tensor k, Tensor v, int32_t first_position, Tensor q,
              Tensor out, int32_t query_heads, float scale, const TrackerSpec& tracker, void* stream);
// Causal attention of `rows` rows over the kept tokens of seq (length sizes the grid).
Result prefill(const Store& store, int32_t seq, int32_t length, Tensor q, int32_t rows, Tensor out, int32_t query_heads,
               float scale, const TrackerSpec& tracker, void* stream);
// One observation of engine-computed probabilities (device f32, [queryHeads][stride]).
Result observe(const Store& store, int32_t seq, int32_t length, const float* probs, int64_t stride, int32_t query_heads,
               const TrackerSpec& tracker, void* stream);
// Drops count tokens of every KV head of each of `seqs` (host array, batch <= kMaxBatch); `length` is
// the longest of their lengths (it sizes the grid of the layer-scope mean).
Result evict(const Store& store, const int32_t* seqs, int32_t batch, int32_t length, int32_t count, int32_t sinks,
             int32_t recent, EvictScope scope, void* stream);
Result clear(const Store& store, int32_t seq, void* stream);

// The byte ledger of a packed KVCache (docs/cuda.md "Packed storage through KVCache"): int64 words, first
// the totals (kLedgerKvBytes, kLedgerTokens, kLedgerPeak: the largest kv bytes + tokens * meta_per_token
// so far), then per entry (the cache's layer * maxSequences + seq) its kv bytes and tokens as last counted.
// account_packed recounts entry `entry` from what seq holds in a packed store now (src/backend/packed-store.ts
// packedKvBytesUsed: packed tokens, runs in use, residual rows) and moves the totals and the peak with it:
// one block on the stream after the kernels that changed the counts (graph-capturable; the caller orders
// every update of a ledger on one stream).
constexpr int32_t kLedgerKvBytes = 0;
constexpr int32_t kLedgerTokens = 1;
constexpr int32_t kLedgerPeak = 2;
constexpr int32_t kLedgerHeader = 3;
Result account_packed(const Store& store, int32_t seq, int64_t* ledger, int32_t entry, int64_t meta_per_token, void* stream);

// Per-head layouts and prompt compression (docs/semantics.md "Per-head layout", "Prompt compression").
// Each takes host arrays of kvHeads ints, copies them to the store's head_args and launches on the
// stream (not graph-capturable: the prompt path only). evict_heads drops counts[h] tokens of head h of
// seq (scope head; the caller checked the candidates). relayout gives head h capacities[h] slots, heads
// in order from the sequence's first slot (the caller checked lengths <= capacities <= capacity and the
// sum <= slots); per-head stores only. pool_scores smooths the scores of slots [0, ends[h]) of each head
// (avg: f64 sum over the window / kernel; max). restart_state zeroes scores and aux words of the kept
// tokens, then applies the tracker's append rule to each.
Result evict_heads(const Store& store, int32_t seq, const int32_t* counts, int32_t sinks, int32_t recent, void* stream);
Result relayout(const Store& store, int32_t seq, const int32_t* capacities, void* stream);
Result pool_scores(const Store& store, int32_t seq, int32_t kernel, bool max, const int32_t* ends, void* stream);
Result restart_state(const Store& store, int32_t seq, const TrackerSpec& tracker, void* stream);

// The standalone packer (docs/packing.md) over a device matrix [rows][cols] of f32, or f16/bf16 bits:
// codes, scales and zeros in the PackedTensor layout, bit for bit those of the CPU packer. The kernels
// need each group to own whole code bytes: axis 1 with groupSize * bits a multiple of 8, axis 0 with
// cols * bits a multiple of 8 (pack_shape_supported). An element that is not packable (NaN, infinite,
// beyond +-65504) sets *bad to 1 (bad may be null) and leaves its group's bits unspecified.
struct PackShape {
  int64_t rows = 0;
  int64_t cols = 0;
  int32_t bits = 4;
  int32_t axis = 1;
  int64_t group_size = 32;
};
bool pack_shape_supported(const PackShape& shape);
Result pack(const void* input, DType dtype, const PackShape& shape, uint8_t* codes, uint16_t* scales, uint16_t* zeros,
            int32_t* bad, void* stream);
// Dequantises into out ([rows][cols] of out_dtype: f32, or f16/bf16 bits rounded to nearest even).
Result unpack(const uint8_t* codes, const uint16_t* scales, const uint16_t* zeros, const PackShape& shape, DType out_dtype,
              void* out, void* stream);

// Thin wrappers of the CUDA runtime for csrc/napi (which includes no CUDA header). Each returns 0 or a
// cudaError_t code. copy_to_device / copy_to_host return when the copy is done (pageable host memory).
int device_malloc(void** ptr, size_t bytes);
int device_free(void* ptr);
int copy_to_device(void* dst, const void* src, size_t bytes, void* stream);
int copy_to_host(void* dst, const void* src, size_t bytes, void* stream);
int copy_async(void* dst, const void* src, size_t bytes, void* stream);
int memset_async(void* dst, int value, size_t bytes, void* stream);
int synchronize(void* stream);
int stream_create(void** stream);
int stream_destroy(void* stream);
int event_create(void** event);
int event_record(void* event, void* stream);
int event_elapsed(float* ms, void* start, void* end);
int event_destroy(void* event);
// CUDA graphs of a stream's work (for engines and the graph test): capture in global mode, instantiate,
// replay, free.
int graph_capture_begin(void* stream);
int graph_capture_end(void* stream, void** exec);
int graph_launch(void* exec, void* stream);
int graph_destroy(void* exec);

// Reads `bytes` (a multiple of 16) at `data` once, for a read-bandwidth reference; writes one float per
// block to `sink` (at least 4096 floats).
Result read_bench(const void* data, size_t bytes, float* sink, void* stream);

}  // namespace sh::cuda
