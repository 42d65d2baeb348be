// The NCCL communicator of tensor parallelism (runtime/cuda/nccl_comm.h) on
// the visible GPUs: checks an in-place sum all-reduce (fp32 and bf16) and a
// broadcast across every rank, then times the all-reduce at decode sizes
// (hidden 3072, the Llama-3.2-3B shape, x batch 1 and 64, bf16). Not a ctest
// test: the GPU machine's scripts run it (1 GPU: a single-rank check; 2+ GPUs:
// the real thing). Exit status 0 when every check passes.
//
//   nccl_smoke [num_gpus]      (default: all visible)
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/dtype.h"
#include "runtime/cuda/nccl_comm.h"

using cartserve::DType;
using cartserve::cuda::NcclComm;

namespace {

#define CHECK(cond, ...)                 \
  do {                                   \
    if (!(cond)) {                       \
      std::fprintf(stderr, __VA_ARGS__); \
      std::fprintf(stderr, "\n");        \
      return false;                      \
    }                                    \
  } while (0)

struct Rank {
  NcclComm* comm;
  cudaStream_t stream = nullptr;
  void* buf = nullptr;
};

bool all_reduce(std::vector<Rank>& ranks, size_t count, DType dtype) {
  CHECK(NcclComm::group_start().ok(), "group_start");
  for (Rank& r : ranks) {
    cudaSetDevice(r.comm->device());
    auto st = r.comm->all_reduce_sum(r.buf, count, dtype, r.stream);
    CHECK(st.ok(), "all_reduce: %s", st.to_string().c_str());
  }
  CHECK(NcclComm::group_end().ok(), "group_end");
  for (Rank& r : ranks) {
    cudaSetDevice(r.comm->device());
    CHECK(cudaStreamSynchronize(r.stream) == cudaSuccess, "sync");
  }
  return true;
}

// Rank r holds (r + 1) * (i % 7) at element i; the sum is n(n+1)/2 * (i % 7),
// exact in fp32 and bf16.
bool check_sum(std::vector<Rank>& ranks, size_t count, DType dtype) {
  const int n = static_cast<int>(ranks.size());
  const size_t es = cartserve::dtype_size(dtype);
  for (int k = 0; k < n; ++k) {
    std::vector<float> v(count);
    for (size_t i = 0; i < count; ++i)
      v[i] = static_cast<float>((k + 1) * static_cast<int>(i % 7));
    std::vector<uint8_t> bytes(count * es);
    cartserve::convert_from_f32(v.data(), dtype, bytes.data(), count);
    cudaSetDevice(ranks[static_cast<size_t>(k)].comm->device());
    CHECK(cudaMemcpy(ranks[static_cast<size_t>(k)].buf, bytes.data(), bytes.size(),
                     cudaMemcpyHostToDevice) == cudaSuccess,
          "upload");
  }
  if (!all_reduce(ranks, count, dtype)) return false;
  for (int k = 0; k < n; ++k) {
    std::vector<uint8_t> bytes(count * es);
    cudaSetDevice(ranks[static_cast<size_t>(k)].comm->device());
    CHECK(cudaMemcpy(bytes.data(), ranks[static_cast<size_t>(k)].buf, bytes.size(),
                     cudaMemcpyDeviceToHost) == cudaSuccess,
          "download");
    std::vector<float> v(count);
    cartserve::convert_to_f32(dtype, bytes.data(), v.data(), count);
    for (size_t i = 0; i < count; ++i) {
      const float want = static_cast<float>(n * (n + 1) / 2 * static_cast<int>(i % 7));
      CHECK(v[i] == want, "rank %d element %zu: %g, want %g (%s)", k, i, v[i], want,
            cartserve::dtype_name(dtype));
    }
  }
  std::printf("all-reduce %s x %zu over %d rank(s): ok\n", cartserve::dtype_name(dtype), count, n);
  return true;
}

bool check_broadcast(std::vector<Rank>& ranks, size_t bytes) {
  std::vector<uint8_t> src(bytes);
  for (size_t i = 0; i < bytes; ++i)
    src[i] = static_cast<uint8_t>(i * 13 + 5);
  cudaSetDevice(ranks[0].comm->device());
  CHECK(cudaMemcpy(ranks[0].buf, src.data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess, "up");
  CHECK(NcclComm::group_start().ok(), "group_start");
  for (Rank& r : ranks) {
    cudaSetDevice(r.comm->device());
    CHECK(r.comm->broadcast(r.buf, bytes, 0, r.stream).ok(), "broadcast");
  }
  CHECK(NcclComm::group_end().ok(), "group_end");
  for (Rank& r : ranks) {
    std::vector<uint8_t> got(bytes);
    cudaSetDevice(r.comm->device());
    CHECK(cudaStreamSynchronize(r.stream) == cudaSuccess, "sync");
    CHECK(cudaMemcpy(got.data(), r.buf, bytes, cudaMemcpyDeviceToHost) == cudaSuccess, "down");
    CHECK(got == src, "broadcast differs on rank %d", r.comm->rank());
  }
  std::printf("broadcast %zu bytes from rank 0: ok\n", bytes);
  return true;
}

bool time_all_reduce(std::vector<Rank>& ranks, size_t count) {
  for (int i = 0; i < 20; ++i)
    if (!all_reduce(ranks, count, DType::kBF16)) return false;
  const int iters = 200;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i)
    if (!all_reduce(ranks, count, DType::kBF16)) return false;
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
      iters;
  std::printf("all-reduce bf16 x %zu (%zu bytes): %.1f us per call incl. sync (%d iterations)\n",
              count, count * 2, us, iters);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int visible = 0;
  if (cudaGetDeviceCount(&visible) != cudaSuccess || visible == 0) {
    std::fprintf(stderr, "no CUDA GPU visible\n");
    return 1;
  }
  const int n = argc > 1 ? std::atoi(argv[1]) : visible;
  std::printf("NCCL %s, %d of %d GPU(s), NCCL_NVLS_ENABLE=%s\n", NcclComm::version().c_str(), n,
              visible, std::getenv("NCCL_NVLS_ENABLE") ? std::getenv("NCCL_NVLS_ENABLE") : "unset");
  std::vector<int> devices;
  for (int i = 0; i < n; ++i)
    devices.push_back(i);
  auto comms = NcclComm::create_all(devices);
  if (!comms.ok()) {
    std::fprintf(stderr, "%s\n", comms.status().to_string().c_str());
    return 1;
  }
  const size_t max_count = 3072 * 64;
  std::vector<Rank> ranks;
  for (auto& c : *comms) {
    Rank r;
    r.comm = c.get();
    cudaSetDevice(c->device());
    cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking);
    cudaMalloc(&r.buf, max_count * sizeof(float));
    ranks.push_back(r);
  }
  bool ok = check_sum(ranks, 3072, DType::kF32) && check_sum(ranks, max_count, DType::kBF16) &&
            check_sum(ranks, 1001, DType::kF32) && check_broadcast(ranks, 4096 + 3) &&
            time_all_reduce(ranks, 3072) && time_all_reduce(ranks, 3072 * 64);
  // NcclComm's destructors need every rank alive: destroy after the buffers.
  for (Rank& r : ranks) {
    cudaSetDevice(r.comm->device());
    cudaFree(r.buf);
    cudaStreamDestroy(r.stream);
  }
  comms->clear();
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
