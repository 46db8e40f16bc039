// The CUDA runtime calls csrc/napi needs, behind plain C++ signatures (see api.h).
#include "common.cuh"

namespace sh::cuda {
namespace {

int code(cudaError_t e) {
  if (e != cudaSuccess) cudaGetLastError();
  return static_cast<int>(e);
}

}  // namespace

int device_malloc(void** ptr, size_t bytes) { return code(cudaMalloc(ptr, bytes)); }
int device_free(void* ptr) { return code(cudaFree(ptr)); }

int copy_to_device(void* dst, const void* src, size_t bytes, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s);
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  return code(e);
}

int copy_to_host(void* dst, const void* src, size_t bytes, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s);
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  return code(e);
}

int copy_async(void* dst, const void* src, size_t bytes, void* stream) {
  return code(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream)));
}

int memset_async(void* dst, int value, size_t bytes, void* stream) {
  return code(cudaMemsetAsync(dst, value, bytes, static_cast<cudaStream_t>(stream)));
}

int synchronize(void* stream) { return code(cudaStreamSynchronize(static_cast<cudaStream_t>(stream))); }

int stream_create(void** stream) {
  cudaStream_t s = nullptr;
  const cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  *stream = s;
  return code(e);
}

int stream_destroy(void* stream) { return code(cudaStreamDestroy(static_cast<cudaStream_t>(stream))); }

int event_create(void** event) {
  cudaEvent_t ev = nullptr;
  const cudaError_t e = cudaEventCreate(&ev);
  *event = ev;
  return code(e);
}

int event_record(void* event, void* stream) {
  return code(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)));
}

int event_elapsed(float* ms, void* start, void* end) {
  cudaError_t e = cudaEventSynchronize(static_cast<cudaEvent_t>(end));
  if (e == cudaSuccess) e = cudaEventElapsedTime(ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end));
  return code(e);
}

int event_destroy(void* event) { return code(cudaEventDestroy(static_cast<cudaEvent_t>(event))); }

// Global mode: any call that may synchronise or allocate, from any thread, fails the capture, which is what
// the graph test wants to prove about the decode path.
int graph_capture_begin(void* stream) {
  return code(cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeGlobal));
}

int graph_capture_end(void* stream, void** exec) {
  cudaGraph_t graph = nullptr;
  cudaError_t e = cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &graph);
  cudaGraphExec_t instance = nullptr;
  if (e == cudaSuccess) e = cudaGraphInstantiate(&instance, graph, 0);
  if (graph != nullptr) cudaGraphDestroy(graph);
  *exec = instance;
  return code(e);
}

int graph_launch(void* exec, void* stream) {
  return code(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), static_cast<cudaStream_t>(stream)));
}

int graph_destroy(void* exec) { return code(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec))); }

}  // namespace sh::cuda
