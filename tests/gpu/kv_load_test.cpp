// KV loads into the CUDA backend's blocks from every kind of host memory:
// pageable (CPU staging copy), page-locked through a staging DMA, and
// page-locked read in place by the import kernel (CudaOptions::
// kv_load_direct). A 40-position KV (three blocks, the last partial) in bf16
// and fp32 is loaded into blocks {4, 5, 6} and exported back: bf16 comes back
// bit for bit, fp32 as its bf16 rounding, the same bits on every path.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "gpu/gpu_test_util.h"
#include "runtime/cuda/cuda_backend.h"
#include "unit/tp/random_model.h"

namespace cartserve {
namespace {

constexpr int32_t kTokens = 40;

struct HostTensors {
  std::vector<std::shared_ptr<void>> keep;  // [layers * 2] [kv heads, tokens, head_dim]
  HostKv kv;
};

// Host KV of `dtype` holding `values` ([layers * 2][elems] as fp32), in
// page-locked memory from the backend when `pinned`, else in plain memory.
HostTensors make_host(cuda::CudaBackend& b, DType dtype, bool pinned,
                      const std::vector<std::vector<float>>& values) {
  HostTensors h;
  h.kv.dtype = dtype;
  h.kv.num_tokens = kTokens;
  const size_t esz = dtype_size(dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    const size_t bytes = values[i].size() * esz;
    std::shared_ptr<void> p =
        pinned ? b.host_buffer(bytes) : std::shared_ptr<void>(new uint8_t[bytes], [](void* q) {
          delete[] static_cast<uint8_t*>(q);
        });
    EXPECT_TRUE(p != nullptr);
    if (!p) return h;
    for (size_t e = 0; e < values[i].size(); ++e) {
      if (dtype == DType::kBF16) {
        static_cast<uint16_t*>(p.get())[e] = f32_to_bf16(values[i][e]);
      } else {
        static_cast<float*>(p.get())[e] = values[i][e];
      }
    }
    (i % 2 ? h.kv.values : h.kv.keys).push_back(p.get());
    h.keep.push_back(std::move(p));
  }
  return h;
}

// Loads `src` into blocks {4, 5, 6}, exports them to pageable bf16; returns
// the exported bits, [layers * 2][elems].
std::vector<std::vector<uint16_t>> round_trip(cuda::CudaBackend& b, const HostKv& src,
                                              size_t elems) {
  const KvBlockList blocks = KvBlockList::whole({4, 5, 6});
  auto id = b.start_kv_load(src, blocks);
  EXPECT_TRUE(id.ok()) << id.status().to_string();
  if (id.ok()) {
    const Status st = b.wait_transfer(*id);
    EXPECT_TRUE(st.ok()) << st.to_string();
  }
  const size_t n = src.keys.size() * 2;
  std::vector<std::vector<uint16_t>> out(n, std::vector<uint16_t>(elems, 0xffff));
  HostKv dst;
  dst.dtype = DType::kBF16;
  dst.num_tokens = kTokens;
  for (size_t i = 0; i < n; ++i)
    (i % 2 ? dst.values : dst.keys).push_back(out[i].data());
  auto sid = b.start_kv_save(blocks, dst);
  EXPECT_TRUE(sid.ok()) << sid.status().to_string();
  if (sid.ok()) {
    const Status st = b.wait_transfer(*sid);
    EXPECT_TRUE(st.ok()) << st.to_string();
  }
  return out;
}

TEST(CudaKvLoad, PageableStagedAndDirectGiveTheSameBlocks) {
  CS_REQUIRE_GPU();
  auto m = testing::random_model(testing::gpu_test_spec());
  const ModelConfig& c = m->config;
  const size_t elems = static_cast<size_t>(c.num_kv_heads) * kTokens * c.head_dim;
  std::mt19937 rng(77);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<std::vector<float>> values(static_cast<size_t>(2 * c.num_layers),
                                         std::vector<float>(elems));
  for (auto& t : values)
    for (float& x : t)
      x = nd(rng);
  for (const DType dtype : {DType::kBF16, DType::kF32}) {
    // The expected bits: each value's bf16 rounding.
    std::vector<std::vector<uint16_t>> want(values.size(), std::vector<uint16_t>(elems));
    for (size_t i = 0; i < values.size(); ++i)
      for (size_t e = 0; e < elems; ++e)
        want[i][e] = f32_to_bf16(values[i][e]);
    for (const bool direct : {false, true}) {
      cuda::CudaOptions o;
      o.kv_cache_tokens = 256;
      o.max_num_batched_tokens = 64;
      o.max_num_seqs = 4;
      o.max_model_len = 128;
      o.kv_load_direct = direct;
      auto b = cuda::CudaBackend::create(*m, o);
      ASSERT_TRUE(b.ok()) << b.status().to_string();
      for (const bool pinned : {false, true}) {
        SCOPED_TRACE(std::string(dtype == DType::kBF16 ? "bf16" : "fp32") +
                     (pinned ? " pinned" : " pageable") + (direct ? " direct" : " staged"));
        const HostTensors h = make_host(**b, dtype, pinned, values);
        ASSERT_EQ(h.keep.size(), values.size());
        const auto got = round_trip(**b, h.kv, elems);
        for (size_t i = 0; i < got.size(); ++i)
          EXPECT_EQ(0, std::memcmp(got[i].data(), want[i].data(), elems * 2)) << "tensor " << i;
      }
    }
  }
}

}  // namespace
}  // namespace cartserve
