// The kernel entry points: read and check every argument, run the kernel, map its status.
#include <algorithm>
#include <string>
#include <vector>

#include "addon.h"
#include "args.h"

namespace sh::napi {
namespace {

uint64_t u64(int64_t x) { return static_cast<uint64_t>(x); }

}  // namespace

// append(store, seq, k, v, count, firstPosition, tracker, keysOut | null)
Napi::Value Addon::Append(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const Args::StoreRefs refs = args.read_store(0);
  const TrackerSpec tracker = args.tracker(6, refs.view);
  const LayerView view = args.resolve(refs);
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, view.max_sequences - 1));
  const int64_t count = args.integer(4, "count", 0, INT32_MAX);
  const int64_t first = args.integer(5, "firstPosition", INT32_MIN, INT32_MAX - count);
  args.check_state(view, seq, 0);
  const int32_t* lengths = view.lengths + static_cast<size_t>(seq) * static_cast<size_t>(view.kv_heads);
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    const int32_t capacity = view.head_capacity(seq, h);
    if (count > capacity - lengths[h]) {
      fail(info.Env(), kBudget, "count",
           "head " + std::to_string(h) + " of sequence " + std::to_string(seq) + " keeps " + std::to_string(lengths[h]) +
               " of " + std::to_string(capacity) + " tokens: no room for " + std::to_string(count) + " more");
    }
  }
  const uint64_t elements = u64(count) * u64(view.kv_heads) * u64(view.head_dim);
  const HostSpan k = args.host(2, "k", view, elements);
  const HostSpan v = args.host(3, "v", view, elements);
  float* keys_out = args.floats(7, "keysOut", elements, true);
  args.check(cpu::append(view, seq, k, v, static_cast<int32_t>(count), static_cast<int32_t>(first), tracker, keys_out), "append");
  return info.Env().Undefined();
}

// decode(store, seq, q, out, queryHeads, scale, tracker, probsOut | null)
Napi::Value Addon::Decode(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const Args::StoreRefs refs = args.read_store(0);
  const TrackerSpec tracker = args.tracker(6, refs.view);
  const LayerView view = args.resolve(refs);
  cpu::AttentionArgs a;
  a.seq = static_cast<int32_t>(args.integer(1, "seq", 0, view.max_sequences - 1));
  a.query_heads = static_cast<int32_t>(args.integer(4, "attention.queryHeads", 1, 4096));
  if (a.query_heads % view.kv_heads != 0) fail(info.Env(), kArgument, "attention.queryHeads", "must be a multiple of the store's kvHeads");
  a.scale = static_cast<float>(args.finite(5, "attention.scale"));
  const uint64_t elements = u64(a.query_heads) * u64(view.head_dim);
  a.q = args.host(2, "q", view, elements);
  a.out = args.host_like(3, "out", a.q, elements);
  a.probs_out = args.floats(7, "probsOut", u64(view.kv_heads) * u64(view.capacity), true);
  args.check_state(view, a.seq, 1);
  args.check(cpu::attend(context_, view, a, tracker), "decode");
  return info.Env().Undefined();
}

// prefill(store, seq, q, rows, out, queryHeads, scale, tracker, rowBegin, rowEnd, probsOut | null)
Napi::Value Addon::Prefill(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const Args::StoreRefs refs = args.read_store(0);
  const TrackerSpec tracker = args.tracker(7, refs.view);
  const LayerView view = args.resolve(refs);
  cpu::AttentionArgs a;
  a.seq = static_cast<int32_t>(args.integer(1, "seq", 0, view.max_sequences - 1));
  a.rows = static_cast<int32_t>(args.integer(3, "rows", 1, view.capacity));
  a.query_heads = static_cast<int32_t>(args.integer(5, "attention.queryHeads", 1, 4096));
  if (a.query_heads % view.kv_heads != 0) fail(info.Env(), kArgument, "attention.queryHeads", "must be a multiple of the store's kvHeads");
  a.scale = static_cast<float>(args.finite(6, "attention.scale"));
  a.row_begin = static_cast<int32_t>(args.integer(8, "rowBegin", 0, a.rows - 1));
  a.row_end = static_cast<int32_t>(args.integer(9, "rowEnd", a.row_begin + 1, a.rows));
  const uint64_t elements = u64(a.rows) * u64(a.query_heads) * u64(view.head_dim);
  a.q = args.host(2, "q", view, elements);
  a.out = args.host_like(4, "out", a.q, elements);
  a.probs_out = args.floats(10, "probsOut", u64(a.row_end - a.row_begin) * u64(view.kv_heads) * u64(view.capacity), true);
  args.check_state(view, a.seq, a.rows);
  args.check(cpu::attend(context_, view, a, tracker), "prefill");
  return info.Env().Undefined();
}

// observe(store, seq, probs, stride, queryHeads, tracker, probsOut | null)
Napi::Value Addon::Observe(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const Args::StoreRefs refs = args.read_store(0);
  const TrackerSpec tracker = args.tracker(5, refs.view);
  const LayerView view = args.resolve(refs);
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, view.max_sequences - 1));
  const int64_t stride = args.integer(3, "stride", 0, INT32_MAX);
  const int64_t query_heads = args.integer(4, "queryHeads", 1, 4096);
  if (query_heads % view.kv_heads != 0) fail(info.Env(), kArgument, "queryHeads", "must be a multiple of the store's kvHeads");
  const float* probs = args.floats(2, "probs", u64(query_heads) * u64(stride), false);
  float* probs_out = args.floats(6, "probsOut", u64(view.kv_heads) * u64(view.capacity), true);
  args.check_state(view, seq, 0);
  const int32_t* lengths = view.lengths + static_cast<size_t>(seq) * static_cast<size_t>(view.kv_heads);
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    if (lengths[h] > stride) {
      fail(info.Env(), kShape, "stride",
           "stride " + std::to_string(stride) + " is shorter than the " + std::to_string(lengths[h]) + " tokens of head " +
               std::to_string(h));
    }
  }
  args.check(cpu::observe(view, seq, probs, static_cast<size_t>(stride), static_cast<int32_t>(query_heads), tracker, probs_out),
             "observe");
  return info.Env().Undefined();
}

// evict(store, seq, count | counts, sinks, recent, scope): counts an Int32Array of one count per KV head.
Napi::Value Addon::Evict(const Napi::CallbackInfo& info) {
  const Args args(*this, info);
  const Args::StoreRefs refs = args.read_store(0);
  const int32_t seq = static_cast<int32_t>(args.integer(1, "seq", 0, refs.view.max_sequences - 1));
  bool per_head = false;
  napi_is_typedarray(info.Env(), args.at(2), &per_head);
  std::vector<int32_t> counts(static_cast<size_t>(refs.view.kv_heads), 0);
  if (!per_head) std::fill(counts.begin(), counts.end(), static_cast<int32_t>(args.integer(2, "count", 0, INT32_MAX)));
  const int64_t sinks = args.integer(3, "sinks", 0, INT32_MAX);
  const int64_t recent = args.integer(4, "recent", 0, INT32_MAX);
  const EvictScope scope = args.choice(5, "scope", "head", "layer") ? EvictScope::Layer : EvictScope::Head;
  // Data pointers are taken only now that no more JS runs before the kernel returns.
  const LayerView view = args.resolve(refs);
  if (per_head) {
    const int32_t* given = static_cast<const int32_t*>(
        args.typed_array(2, "count", napi_int32_array, "Int32Array", static_cast<uint64_t>(view.kv_heads)));
    std::copy(given, given + view.kv_heads, counts.begin());
  }
  args.check_state(view, seq, 0);
  const int32_t* lengths = view.lengths + static_cast<size_t>(seq) * static_cast<size_t>(view.kv_heads);
  for (int32_t h = 0; h < view.kv_heads; ++h) {
    const int64_t candidates = std::max<int64_t>(0, lengths[h] - sinks - recent);
    const int64_t count = counts[static_cast<size_t>(h)];
    if (count < 0) fail(info.Env(), kArgument, "count", "expected counts >= 0");
    if (count > candidates) {
      fail(info.Env(), kBudget, "count",
           "head " + std::to_string(h) + " has " + std::to_string(candidates) + " tokens outside the " + std::to_string(sinks) +
               " sinks and " + std::to_string(recent) + " recent ones, asked to drop " + std::to_string(count));
    }
    if (scope == EvictScope::Layer && (lengths[h] != lengths[0] || count != counts[0])) {
      fail(info.Env(), kArgument, "scope", "scope 'layer' needs every KV head to keep and drop the same number of tokens");
    }
  }
  args.check(cpu::evict(context_, view, seq, counts.data(), static_cast<int32_t>(sinks),
                        static_cast<int32_t>(recent), scope),
             "evict");
  return info.Env().Undefined();
}

}  // namespace sh::napi
