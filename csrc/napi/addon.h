// The addon's per-environment state (one instance per main thread or worker): kernel scratch and
// helper thread, interned property names, and the JS error factory. No mutable statics anywhere.
#pragma once

#include <napi.h>

#include <string>

#include "scissorhands/cpu.h"

namespace sh::napi {

// Property names read on every call, interned once per environment.
enum class Key : int {
  Layer,
  DType,
  MaxSequences,
  KvHeads,
  HeadDim,
  Capacity,
  AuxWords,
  Keys,
  Values,
  Positions,
  Scores,
  Aux,
  Lengths,
  Steps,
  Kind,
  Window,
  Seed,
  Gqa,
  Observes,
  Count,
};

class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports);

  cpu::Context& context() { return context_; }
  napi_value key(Napi::Env env, Key which) const;
  // Throws the JS error for a KV_* code: made by the factory handed over by setErrorFactory, else an
  // Error with `code` and `argument` properties.
  [[noreturn]] void fail(Napi::Env env, const char* code, const std::string& argument, const std::string& message);

 private:
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value SetErrorFactory(const Napi::CallbackInfo& info);
  Napi::Value Append(const Napi::CallbackInfo& info);
  Napi::Value Decode(const Napi::CallbackInfo& info);
  Napi::Value Prefill(const Napi::CallbackInfo& info);
  Napi::Value Observe(const Napi::CallbackInfo& info);
  Napi::Value Evict(const Napi::CallbackInfo& info);

  cpu::Context context_;
  // An array of the names (Node-API 8 cannot reference a string directly).
  Napi::ObjectReference keys_;
  Napi::FunctionReference error_factory_;
};

}  // namespace sh::napi
