// Memory read bandwidth of this machine: the ceiling that decode attention over a cache larger than the
// last-level cache can approach. Sums a large buffer with 1..N threads and prints the best GB/s as JSON.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

static float sum_range(const float* p, size_t n) {
  // Eight independent accumulators so the loop is bound by loads, not by the add latency.
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) acc[j] += p[i + j];
  for (; i < n; i++) acc[0] += p[i];
  float s = 0;
  for (float a : acc) s += a;
  return s;
}

int main(int argc, char** argv) {
  const size_t bytes = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1024) << 20;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 5;
  const unsigned max_threads = std::max(1u, std::thread::hardware_concurrency());
  const size_t n = bytes / sizeof(float);
  std::vector<float> data(n);
  for (size_t i = 0; i < n; i++) data[i] = static_cast<float>(i & 1023);
  volatile float sink = 0;
  std::printf("{\"bytes\": %zu, \"threads\": {", bytes);
  for (unsigned threads = 1; threads <= max_threads; threads++) {
    double best = 0;
    for (int r = 0; r < repeats; r++) {
      std::vector<float> partial(threads);
      auto start = std::chrono::steady_clock::now();
      std::vector<std::thread> pool;
      for (unsigned t = 0; t < threads; t++) {
        pool.emplace_back([&, t] {
          size_t from = n * t / threads, to = n * (t + 1) / threads;
          partial[t] = sum_range(data.data() + from, to - from);
        });
      }
      for (auto& th : pool) th.join();
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      for (float p : partial) sink = sink + p;
      best = std::max(best, bytes / s / 1e9);
    }
    std::printf("%s\"%u\": %.2f", threads > 1 ? ", " : "", threads, best);
  }
  std::printf("}}\n");
  return 0;
}
