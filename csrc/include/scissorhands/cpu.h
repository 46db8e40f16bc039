// The CPU kernels: the CPU backend, and the oracle later device kernels are tested against. Every entry
// point returns a Status and never throws. Callers (csrc/napi) have validated the shapes, element types
// and ranges of the arguments; the kernels check the semantic preconditions of docs/semantics.md
// (room to append, candidates to evict, sane lengths) before they write anything.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "scissorhands/layer_view.h"
#include "scissorhands/status.h"
#include "scissorhands/tracker.h"

namespace sh::cpu {

// Scratch memory owned by one thread of a Context: grows to the largest request, never shrinks, so the
// hot path allocates nothing once warm.
class Workspace {
 public:
  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace();
  // 64-byte aligned room for n floats, or nullptr when memory is exhausted. Invalidates earlier results.
  float* floats(size_t n);

 private:
  float* data_ = nullptr;
  size_t size_ = 0;
};

class Pool;
struct Primitives;

// Per-environment kernel state: scratch for the caller's thread and one helper thread, and the helper
// itself (started on first use by a call big enough to be worth splitting).
class Context {
 public:
  Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context();

  Workspace& workspace(int part) { return workspaces_[part]; }
  // Runs fn(arg, 0) here and fn(arg, 1) on the helper thread, concurrently; false (having run nothing)
  // if the helper cannot be started.
  bool run_pair(void (*fn)(void* arg, int part), void* arg);
  // The instruction set of the attention kernels in use: "avx512", "avx2" or "scalar".
  const char* simd() const;
  const Primitives& primitives() const;

 private:
  Workspace workspaces_[2];
  std::unique_ptr<Pool> pool_;
  bool pool_failed_ = false;
  // 0 scalar, 1 AVX2 + FMA + F16C, 2 AVX-512F as well.
  int level_;
};

// Attention settings of decode and prefill.
struct AttentionArgs {
  int32_t seq = 0;
  HostSpan q;
  HostSpan out;
  int32_t query_heads = 0;
  float scale = 1;
  // Query rows of q/out; row i sees slots [0, length - rows + i]. Decode is rows == 1.
  int32_t rows = 1;
  // The rows this call computes, [row_begin, row_end), one observation each (steps advance by their count).
  int32_t row_begin = 0;
  int32_t row_end = 1;
  // For Custom trackers that observe: GQA-combined probabilities, [row_end - row_begin][kvHeads][capacity].
  float* probs_out = nullptr;
};

// Writes count tokens of k and v ([count][kvHeads][headDim]) at the end of every KV head of seq with
// positions first_position + i, zeroes their score and aux words and runs the tracker's append rule. keys_out, if
// not null, receives the keys as stored, decoded to f32 ([count][kvHeads][headDim]).
Status append(const LayerView& view, int32_t seq, HostSpan k, HostSpan v, int32_t count, int32_t first_position,
              const TrackerSpec& tracker, float* keys_out);

// Decode (rows == 1) and prefill attention, with the tracker fed in the same pass.
Status attend(Context& ctx, const LayerView& view, const AttentionArgs& args, const TrackerSpec& tracker);

// One observation from engine-computed probabilities ([queryHeads][stride]). probs_out, if not null,
// receives the GQA-combined probabilities [kvHeads][capacity] (for Custom trackers).
Status observe(const LayerView& view, int32_t seq, const float* probs, size_t stride, int32_t query_heads,
               const TrackerSpec& tracker, float* probs_out);

// Drops counts[h] tokens of KV head h of seq among slots [sinks, length - recent), lowest (score, slot)
// first, and compacts the rest to the front in order. Scope Layer needs equal lengths and counts.
Status evict(Context& ctx, const LayerView& view, int32_t seq, const int32_t* counts, int32_t sinks, int32_t recent,
             EvictScope scope);

}  // namespace sh::cpu
