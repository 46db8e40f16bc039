#include "addon.h"

#include "args.h"
#include "packed.h"

#ifndef SCISSORHANDS_VERSION
#error "SCISSORHANDS_VERSION must be defined by the build (binding.gyp reads it from package.json)"
#endif

namespace sh::napi {
namespace {

constexpr const char* kKeyNames[] = {
    "layer",  "dtype", "maxSequences", "kvHeads", "headDim", "capacity", "auxWords", "keys", "values", "positions",
    "scores", "aux",   "lengths",      "steps",   "kind",    "window",   "seed",     "gqa",  "observes",
    "heads",  "slots", "bases", "capacities",
};
static_assert(sizeof kKeyNames / sizeof kKeyNames[0] == static_cast<size_t>(Key::Count), "one name per Key");

}  // namespace

Addon::Addon(Napi::Env env, Napi::Object exports) {
  // Property names come back internalized from an object's key list, which spares V8 a string-table
  // lookup on every property read.
  Napi::Object named = Napi::Object::New(env);
  for (const char* name : kKeyNames) named.Set(name, true);
  keys_ = Napi::Persistent(static_cast<Napi::Object>(named.GetPropertyNames()));
  DefineAddon(exports, {
                           InstanceMethod("info", &Addon::Info, napi_enumerable),
                           InstanceMethod("setErrorFactory", &Addon::SetErrorFactory, napi_enumerable),
                           InstanceMethod("append", &Addon::Append, napi_enumerable),
                           InstanceMethod("decode", &Addon::Decode, napi_enumerable),
                           InstanceMethod("prefill", &Addon::Prefill, napi_enumerable),
                           InstanceMethod("observe", &Addon::Observe, napi_enumerable),
                           InstanceMethod("evict", &Addon::Evict, napi_enumerable),
                       });
  RegisterPacked(*this, env, exports);
#ifdef SCISSORHANDS_WITH_CUDA
  DefineCuda(exports);
#endif
}

napi_value Addon::key(Napi::Env env, Key which) const {
  napi_value name = nullptr;
  napi_get_element(env, keys_.Value(), static_cast<uint32_t>(which), &name);
  return name;
}

void Addon::fail(Napi::Env env, const char* code, const std::string& argument, const std::string& message) {
  const Napi::String js_code = Napi::String::New(env, code);
  const Napi::String js_argument = Napi::String::New(env, argument);
  if (!error_factory_.IsEmpty()) {
    const Napi::Value error = error_factory_.Call({js_code, Napi::String::New(env, message), js_argument});
    if (error.IsObject()) throw Napi::Error(env, error);
  }
  Napi::Error error = Napi::Error::New(env, argument.empty() ? message : argument + ": " + message);
  error.Set("code", js_code);
  error.Set("argument", js_argument);
  throw error;
}

Napi::Value Addon::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object result = Napi::Object::New(env);
  result.Set("version", Napi::String::New(env, SCISSORHANDS_VERSION));
  result.Set("napiVersion", Napi::Number::New(env, NAPI_VERSION));
  result.Set("simd", Napi::String::New(env, context_.simd()));
  result.Set("maxHeadDim", Napi::Number::New(env, kMaxHeadDim));
  result.Set("threads", Napi::Number::New(env, 2));
  return result;
}

Napi::Value Addon::SetErrorFactory(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) {
    Args(*this, info).fail(kArgument, "factory", "expected a function (code, message, argument) => Error");
  }
  error_factory_ = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

}  // namespace sh::napi

// The registration macro pastes the class name into an identifier, so it needs an unqualified one.
using ScissorhandsAddon = sh::napi::Addon;
NODE_API_ADDON(ScissorhandsAddon)
