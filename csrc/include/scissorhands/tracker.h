// Native tracker descriptions. Codes match TrackerKind in src/trackers/tracker.ts.
#pragma once

#include <cstdint>

namespace sh {

enum class TrackerKind : int32_t {
  // No native rule: kernels hand GQA-combined probabilities to the caller instead.
  Custom = 0,
  Scissorhands = 1,
  H2O = 2,
  Tova = 3,
  KeyNorm = 4,
  Random = 5,
  Position = 6,
};

enum class GqaReduce : int32_t { Mean = 0, Max = 1 };

enum class EvictScope : int32_t { Head = 0, Layer = 1 };

struct TrackerSpec {
  TrackerKind kind = TrackerKind::Custom;
  // Scissorhands history window in steps (needs ceil(window / 32) aux words per token).
  uint32_t window = 0;
  // Seed of the random tracker.
  uint32_t seed = 0;
  GqaReduce gqa = GqaReduce::Mean;
  // False for trackers whose input is not attention: observations then only advance the clock.
  bool observes = false;
};

// randomScore of docs/semantics.md: a 24-bit hash of (seed, layer, kvHead, position) scaled to [0, 1).
inline uint32_t random_mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

inline float random_score(uint32_t seed, uint32_t layer, uint32_t kv_head, int32_t position) {
  const uint32_t h = random_mix(random_mix(random_mix(seed ^ layer) ^ kv_head) ^ static_cast<uint32_t>(position));
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

}  // namespace sh
