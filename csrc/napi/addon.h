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
  Heads,
  Slots,
  Bases,
  Capacities,
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
#ifdef SCISSORHANDS_WITH_CUDA
  // The CUDA part (csrc/napi/cuda_calls.cc), built only into scissorhands_cuda.node.
  void DefineCuda(Napi::Object exports);
  Napi::Value CudaInfo(const Napi::CallbackInfo& info);
  Napi::Value CudaMalloc(const Napi::CallbackInfo& info);
  Napi::Value CudaFree(const Napi::CallbackInfo& info);
  Napi::Value CudaUpload(const Napi::CallbackInfo& info);
  Napi::Value CudaDownload(const Napi::CallbackInfo& info);
  Napi::Value CudaMemset(const Napi::CallbackInfo& info);
  Napi::Value CudaCopy(const Napi::CallbackInfo& info);
  Napi::Value CudaSynchronize(const Napi::CallbackInfo& info);
  Napi::Value CudaStreamCreate(const Napi::CallbackInfo& info);
  Napi::Value CudaStreamDestroy(const Napi::CallbackInfo& info);
  Napi::Value CudaEventCreate(const Napi::CallbackInfo& info);
  Napi::Value CudaEventRecord(const Napi::CallbackInfo& info);
  Napi::Value CudaEventElapsed(const Napi::CallbackInfo& info);
  Napi::Value CudaEventDestroy(const Napi::CallbackInfo& info);
  Napi::Value CudaStoreCreate(const Napi::CallbackInfo& info);
  Napi::Value CudaStoreDestroy(const Napi::CallbackInfo& info);
  Napi::Value CudaStoreInfo(const Napi::CallbackInfo& info);
  Napi::Value CudaAppend(const Napi::CallbackInfo& info);
  Napi::Value CudaDecode(const Napi::CallbackInfo& info);
  Napi::Value CudaAttend(const Napi::CallbackInfo& info);
  Napi::Value CudaPrefill(const Napi::CallbackInfo& info);
  Napi::Value CudaObserve(const Napi::CallbackInfo& info);
  Napi::Value CudaEvict(const Napi::CallbackInfo& info);
  Napi::Value CudaClear(const Napi::CallbackInfo& info);
  Napi::Value CudaAccountPacked(const Napi::CallbackInfo& info);
  Napi::Value CudaEvictHeads(const Napi::CallbackInfo& info);
  Napi::Value CudaRelayout(const Napi::CallbackInfo& info);
  Napi::Value CudaPoolScores(const Napi::CallbackInfo& info);
  Napi::Value CudaRestartState(const Napi::CallbackInfo& info);
  Napi::Value CudaReadBench(const Napi::CallbackInfo& info);
  Napi::Value CudaRebuildPackedIndex(const Napi::CallbackInfo& info);
  Napi::Value CudaPack(const Napi::CallbackInfo& info);
  Napi::Value CudaUnpack(const Napi::CallbackInfo& info);
  Napi::Value CudaGraphCaptureBegin(const Napi::CallbackInfo& info);
  Napi::Value CudaGraphCaptureEnd(const Napi::CallbackInfo& info);
  Napi::Value CudaGraphLaunch(const Napi::CallbackInfo& info);
  Napi::Value CudaGraphDestroy(const Napi::CallbackInfo& info);
#endif

  cpu::Context context_;
  // An array of the names (Node-API 8 cannot reference a string directly).
  Napi::ObjectReference keys_;
  Napi::FunctionReference error_factory_;
};

}  // namespace sh::napi
