// Per-environment kernel state: scratch memory and the one helper thread used to split big calls.
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <thread>

#include "internal.h"
#include "scissorhands/cpu.h"

namespace sh::cpu {

Workspace::~Workspace() { ::operator delete(data_, std::align_val_t{64}, std::nothrow); }

float* Workspace::floats(size_t n) {
  if (n <= size_) return data_;
  // Grow geometrically so a slowly lengthening cache reallocates only O(log n) times.
  size_t want = size_ + size_ / 2;
  if (want < n) want = n;
  if (want > (~static_cast<size_t>(0)) / sizeof(float)) return nullptr;
  void* fresh = ::operator new(want * sizeof(float), std::align_val_t{64}, std::nothrow);
  if (fresh == nullptr) return nullptr;
  ::operator delete(data_, std::align_val_t{64}, std::nothrow);
  data_ = static_cast<float*>(fresh);
  size_ = want;
  return data_;
}

// One persistent helper thread: run_pair hands it part 1 of a job and waits for it.
class Pool {
 public:
  Pool() : thread_([this] { loop(); }) {}
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }

  void run_pair(void (*fn)(void*, int), void* arg) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = fn;
      arg_ = arg;
      pending_ = true;
    }
    wake_.notify_one();
    fn(arg, 0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return !pending_; });
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return pending_ || stop_; });
      if (stop_) return;
      lock.unlock();
      fn_(arg_, 1);
      lock.lock();
      pending_ = false;
      done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  void (*fn_)(void*, int) = nullptr;
  void* arg_ = nullptr;
  bool pending_ = false;
  bool stop_ = false;
  std::thread thread_;
};

namespace {

// The best kernels this CPU runs; SCISSORHANDS_SIMD=avx2 or =scalar caps the choice (to test every
// path on one machine).
int simd_level() {
  __builtin_cpu_init();
  int level = 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    level = __builtin_cpu_supports("avx512f") ? 2 : 1;
  }
  const char* cap = std::getenv("SCISSORHANDS_SIMD");
  if (cap != nullptr && std::strcmp(cap, "scalar") == 0) return 0;
  if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && level > 1) return 1;
  return level;
}

}  // namespace

Context::Context() : level_(simd_level()) {}

Context::~Context() = default;

const char* Context::simd() const { return level_ == 2 ? "avx512" : level_ == 1 ? "avx2" : "scalar"; }

const Primitives& Context::primitives() const {
  return level_ == 2 ? avx512_primitives() : level_ == 1 ? avx2_primitives() : scalar_primitives();
}

bool Context::run_pair(void (*fn)(void*, int), void* arg) {
  if (!pool_) {
    if (pool_failed_) return false;
    try {
      pool_ = std::make_unique<Pool>();
    } catch (...) {
      // No thread (or no memory for one): callers fall back to running everything here.
      pool_failed_ = true;
      return false;
    }
  }
  pool_->run_pair(fn, arg);
  return true;
}

}  // namespace sh::cpu
