// Helpers for the GPU tests: a skip when no GPU is usable, RAII device
// buffers and streams, bf16 <-> fp32 host conversion, seeded random data,
// error measures and NaN poisoning (every byte 0xFF: a NaN in fp32, fp16 and
// bf16, -1 in the integer types) to check that an op writes every element it
// owns and nothing else.
//
// Host <-> device copies here are fully synchronous (the device is idle
// before and after), so a test never races its own uploads and downloads.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace cartserve::gpu_test {

// A CUDA error in a test is thrown; gtest reports it as a failure.
inline void cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}
#define CS_CUDA_OK(expr) ::cartserve::gpu_test::cuda_ok((expr), #expr)

// Whether a CUDA device is present and usable (checked once).
inline bool gpu_available() {
  static const bool ok = [] {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();  // clear it so later calls do not report it
      return false;
    }
    return n > 0;
  }();
  return ok;
}

// First statement of every GPU test: skip cleanly on machines without one.
#define CS_REQUIRE_GPU()                                                           \
  do {                                                                             \
    if (!::cartserve::gpu_test::gpu_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

// Waits for all device work and surfaces asynchronous errors (kernel faults).
inline void device_sync() {
  CS_CUDA_OK(cudaDeviceSynchronize());
  CS_CUDA_OK(cudaGetLastError());
}

// A blocking stream (ordered after the legacy default stream's copies).
class Stream {
 public:
  Stream() { CS_CUDA_OK(cudaStreamCreate(&s_)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void sync() const {
    CS_CUDA_OK(cudaStreamSynchronize(s_));
    CS_CUDA_OK(cudaGetLastError());
  }

 private:
  cudaStream_t s_ = nullptr;
};

// n elements of T in device memory.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    CS_CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&p_), (n_ > 0 ? n_ : 1) * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return p_; }
  size_t size() const { return n_; }

  void upload(const std::vector<T>& host) {
    if (host.size() != n_) throw std::runtime_error("DeviceBuffer::upload: size mismatch");
    device_sync();
    CS_CUDA_OK(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
    device_sync();
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    device_sync();
    CS_CUDA_OK(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  // Every byte 0xFF (NaN for the float types).
  void poison() {
    device_sync();
    CS_CUDA_OK(cudaMemset(p_, 0xFF, n_ * sizeof(T)));
    device_sync();
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// ---- poison ----------------------------------------------------------------

constexpr uint16_t kPoison16 = 0xFFFFu;
constexpr uint32_t kPoison32 = 0xFFFFFFFFu;

inline bool is_poison(uint16_t v) {
  return v == kPoison16;
}
inline bool is_poison(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b == kPoison32;
}
inline float poison_f32() {
  float f;
  std::memcpy(&f, &kPoison32, sizeof(f));
  return f;
}

template <typename T>
size_t count_poison(const std::vector<T>& v) {
  size_t n = 0;
  for (const T& x : v)
    n += is_poison(x) ? 1 : 0;
  return n;
}

// ---- bf16 on the host (bits in uint16_t) -----------------------------------

inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    out[i] = f32_to_bf16(v[i]);
  return out;
}

inline std::vector<float> from_bf16(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    out[i] = bf16_to_f32(v[i]);
  return out;
}

// ---- seeded random data ----------------------------------------------------

// Seeds for the cases of one test: base, base + 16, base + 32, ...; a case
// may use seed .. seed + 15 for its several arrays, so no two cases share a
// stream. Printed with each case, so a failure can be replayed.
class Seeds {
 public:
  explicit Seeds(uint64_t base) : next_(base) {}
  uint64_t next() {
    const uint64_t s = next_;
    next_ += 16;
    return s;
  }

 private:
  uint64_t next_;
};

inline std::vector<float> randn(size_t n, uint64_t seed, float stddev = 1.f, float mean = 0.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(mean, stddev);
  std::vector<float> v(n);
  for (auto& x : v)
    x = d(rng);
  return v;
}

// bf16 bits of normal samples.
inline std::vector<uint16_t> randn_bf16(size_t n, uint64_t seed, float stddev = 1.f,
                                        float mean = 0.f) {
  return to_bf16(randn(n, seed, stddev, mean));
}

// Uniform integers in [lo, hi].
inline std::vector<int32_t> randint(size_t n, uint64_t seed, int32_t lo, int32_t hi) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> d(lo, hi);
  std::vector<int32_t> v(n);
  for (auto& x : v)
    x = d(rng);
  return v;
}

// ---- error measures --------------------------------------------------------

struct ErrStats {
  double rel = 0.0;      // ||got - ref||_2 / ||ref||_2
  double max_abs = 0.0;  // max |got - ref|
  size_t n_bad = 0;      // elements outside atol + rtol * |ref| (NaN included)
  size_t first_bad = 0;  // index of the first of them
  float bad_got = 0.f, bad_ref = 0.f;
};

inline ErrStats compare(const std::vector<float>& got, const std::vector<float>& ref, double rtol,
                        double atol) {
  ErrStats s;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    const double d = std::fabs(g - r);
    num += d * d;
    den += r * r;
    if (d > s.max_abs || std::isnan(d)) s.max_abs = d;
    if (!(d <= atol + rtol * std::fabs(r))) {  // NaN counts as bad
      if (s.n_bad == 0) {
        s.first_bad = i;
        s.bad_got = got[i];
        s.bad_ref = ref[i];
      }
      ++s.n_bad;
    }
  }
  s.rel = den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
  return s;
}

// One line per case: "[op] case: rel=... max_abs=... bad=...".
inline void report(const char* op, const std::string& what, const ErrStats& s) {
  std::printf("[%s] %s: rel=%.3e max_abs=%.3e bad=%zu\n", op, what.c_str(), s.rel, s.max_abs,
              s.n_bad);
}

// gtest assertion text for the first out-of-tolerance element.
inline std::string describe_bad(const ErrStats& s) {
  return "first bad element " + std::to_string(s.first_bad) + ": got " + std::to_string(s.bad_got) +
         ", want " + std::to_string(s.bad_ref);
}

// Index of the first mismatch of two equally sized vectors, or -1.
template <typename T>
long long first_mismatch(const std::vector<T>& a, const std::vector<T>& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return static_cast<long long>(i);
  }
  return a.size() == b.size() ? -1 : static_cast<long long>(std::min(a.size(), b.size()));
}

}  // namespace cartserve::gpu_test
