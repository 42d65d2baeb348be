// ops::cuda::prefetch_l2 and CudaOptions::l2_prefetch_bytes: a prefetch is a
// hint, so it must change nothing. The op on ranges of every alignment
// leaves the buffer as it was and reports no launch error (and runs under
// compute-sanitizer in gpu_run.sh's sanitizer stage); the CUDA forward with
// prefetches between its linear layers (a cap smaller than some weights and
// one larger than all) gives bit-identical logits to the forward without,
// for prefill rows and for decode steps (captured graphs).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "gpu/backend_options.h"
#include "gpu/gpu_test_util.h"
#include "kernels/cuda_ops.h"
#include "runtime/cuda/cuda_backend.h"
#include "unit/tp/random_model.h"
#include "unit/tp/tp_check.h"

namespace cartserve {
namespace {

using gpu_test::DeviceBuffer;
using gpu_test::Stream;

TEST(CudaOps, PrefetchL2ChangesNothing) {
  CS_REQUIRE_GPU();
  Stream stream;
  constexpr size_t kBytes = (size_t{9} << 20) + 77;  // more pieces than one block's threads
  std::vector<uint8_t> host(kBytes);
  for (size_t i = 0; i < kBytes; ++i)
    host[i] = static_cast<uint8_t>(i * 131 + 7);
  DeviceBuffer<uint8_t> d(host);
  const uint8_t* p = d.get();
  // Aligned and unaligned starts and lengths, empty and sub-16-byte ranges.
  const std::pair<size_t, size_t> ranges[] = {
      {0, kBytes}, {1, kBytes - 1}, {3, 29}, {16, 16}, {5, 7}, {0, 0}, {4096, 65536 + 48}};
  for (const auto& [off, len] : ranges)
    ops::cuda::prefetch_l2(p + off, len, stream.get());
  ops::cuda::prefetch_l2(nullptr, 1024, stream.get());
  stream.sync();
  CS_CUDA_OK(cudaGetLastError());
  EXPECT_EQ(d.download(), host);
}

cuda::CudaOptions options(uint64_t prefetch_bytes) {
  cuda::CudaOptions o = gpu_test::small_backend_options();
  o.l2_prefetch_bytes = prefetch_bytes;
  return o;
}

std::vector<float> logits_with(const Model& m, uint64_t prefetch_bytes) {
  auto b = cuda::CudaBackend::create(m, options(prefetch_bytes));
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  if (!b.ok()) return {};
  return testing::tp_run_logits(**b, m.config.vocab_size);
}

TEST(CudaBackendPrefetch, SameLogitsWithAndWithoutL2Prefetch) {
  CS_REQUIRE_GPU();
  auto m = testing::random_model(testing::gpu_test_spec());
  const std::vector<float> off = logits_with(*m, 0);
  ASSERT_FALSE(off.empty());
  for (const uint64_t cap : {uint64_t{4096}, uint64_t{1} << 30}) {
    const std::vector<float> on = logits_with(*m, cap);
    ASSERT_EQ(on.size(), off.size());
    size_t differ = 0;
    for (size_t i = 0; i < on.size(); ++i)
      differ += std::memcmp(&on[i], &off[i], sizeof(float)) != 0;
    std::printf("[l2 prefetch] cap %llu bytes: %zu of %zu logits differ\n",
                static_cast<unsigned long long>(cap), differ, on.size());
    EXPECT_EQ(differ, 0u) << "cap " << cap;
  }
}

}  // namespace
}  // namespace cartserve
