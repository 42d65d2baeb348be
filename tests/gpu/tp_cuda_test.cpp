// Tensor parallelism on GPUs (runtime/cuda/tp_cuda_backend.h).
//  - sum_bf16 and the one-device all-reduce: bit-exact against the host's
//    rank-ordered fp32 sum, over repeated calls from one thread per rank.
//  - The sharded CUDA forward on one GPU (every rank on the same device, the
//    one-device all-reduce): a random-weight model with 12 q heads of 64 over
//    3 KV heads, at TP = 2 (uneven: 1 + 2 KV heads) and TP = 4 (replicated):
//    the logits of every prefill row and of decode steps against TP = 1's
//    CudaBackend, and cartridge KV exported and loaded head by head.
//  - The same over NCCL when two GPUs are visible (else skipped).
//
// Tolerance: the ranks round their o_proj/down partials to bf16 before the
// sum (TP = 1 rounds the whole sum once), so TP = N differs from TP = 1 by
// bf16 rounding. The bound is calibrated in the same run: twice TP = 1's
// own distance from the CPU's fp32 forward of the same weights (what bf16
// activations cost), plus 1e-3; observed values are printed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <thread>

#include "backend_driver.h"
#include "gpu/backend_options.h"
#include "gpu/gpu_test_util.h"
#include "kernels/cuda_ops.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/device_comm.h"
#include "runtime/cuda/tp_cuda_backend.h"
#include "unit/tp/random_model.h"
#include "unit/tp/tp_check.h"

namespace cartserve {
namespace {

using gpu_test::DeviceBuffer;
using gpu_test::from_bf16;
using gpu_test::randn_bf16;

TEST(CudaTp, SumBf16MatchesRankOrderedSum) {
  CS_REQUIRE_GPU();
  for (const size_t count : {size_t{1}, size_t{13}, size_t{4096}, size_t{100003}}) {
    for (int n : {1, 2, 3, 8}) {
      std::vector<std::vector<uint16_t>> host;
      std::vector<std::unique_ptr<DeviceBuffer<uint16_t>>> dev;
      std::vector<const ops::cuda::bf16*> ptrs;
      for (int r = 0; r < n; ++r) {
        host.push_back(randn_bf16(count, 100 + r));
        dev.push_back(std::make_unique<DeviceBuffer<uint16_t>>(host.back()));
        ptrs.push_back(reinterpret_cast<const ops::cuda::bf16*>(dev.back()->get()));
      }
      DeviceBuffer<uint16_t> out(count);
      out.poison();
      ops::cuda::sum_bf16(ptrs.data(), n, reinterpret_cast<ops::cuda::bf16*>(out.get()),
                          static_cast<int64_t>(count), nullptr);
      const std::vector<uint16_t> got = out.download();
      size_t bad = 0;
      for (size_t i = 0; i < count; ++i) {
        float acc = bf16_to_f32(host[0][i]);
        for (int r = 1; r < n; ++r)
          acc += bf16_to_f32(host[static_cast<size_t>(r)][i]);
        bad += got[i] != f32_to_bf16(acc);
      }
      EXPECT_EQ(bad, 0u) << "count " << count << ", " << n << " inputs";
    }
  }
}

// Three ranks on one device, one thread each, five calls in a row with new
// data each time (the scratch buffer and events are reused across calls).
TEST(CudaTp, OneDeviceAllReduceIsTheRankOrderedSum) {
  CS_REQUIRE_GPU();
  constexpr int kRanks = 3, kCalls = 5;
  constexpr size_t kCount = 3 * 1024 + 8;
  auto comm = cuda::make_one_device_comm(kRanks, 0, kCount);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  std::vector<std::vector<std::vector<uint16_t>>> in(kCalls), out(kCalls);  // [call][rank]
  for (int c = 0; c < kCalls; ++c) {
    for (int r = 0; r < kRanks; ++r)
      in[static_cast<size_t>(c)].push_back(randn_bf16(kCount, 1000 * c + r));
    out[static_cast<size_t>(c)].resize(kRanks);
  }
  std::vector<std::thread> threads;
  std::vector<Status> status(kRanks);
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      gpu_test::Stream s;
      DeviceBuffer<uint16_t> buf(kCount);
      for (int c = 0; c < kCalls; ++c) {
        const auto& src = in[static_cast<size_t>(c)][static_cast<size_t>(r)];
        CS_CUDA_OK(
            cudaMemcpyAsync(buf.get(), src.data(), kCount * 2, cudaMemcpyHostToDevice, s.get()));
        Status st = (*comm)->all_reduce_sum(r, reinterpret_cast<__nv_bfloat16*>(buf.get()), kCount,
                                            s.get());
        if (!st.ok()) {
          status[static_cast<size_t>(r)] = st;
          (*comm)->abort();
          return;
        }
        auto& dst = out[static_cast<size_t>(c)][static_cast<size_t>(r)];
        dst.resize(kCount);
        CS_CUDA_OK(
            cudaMemcpyAsync(dst.data(), buf.get(), kCount * 2, cudaMemcpyDeviceToHost, s.get()));
        s.sync();
      }
    });
  }
  for (auto& t : threads)
    t.join();
  for (const Status& st : status)
    ASSERT_TRUE(st.ok()) << st.to_string();
  for (int c = 0; c < kCalls; ++c) {
    size_t bad = 0;
    for (size_t i = 0; i < kCount; ++i) {
      float acc = 0.f;
      for (int r = 0; r < kRanks; ++r)
        acc = r == 0 ? bf16_to_f32(in[static_cast<size_t>(c)][0][i])
                     : acc + bf16_to_f32(in[static_cast<size_t>(c)][static_cast<size_t>(r)][i]);
      const uint16_t want = f32_to_bf16(acc);
      for (int r = 0; r < kRanks; ++r)
        bad += out[static_cast<size_t>(c)][static_cast<size_t>(r)][i] != want;
    }
    EXPECT_EQ(bad, 0u) << "call " << c;
  }
}

cuda::CudaOptions gpu_options() {
  return gpu_test::small_backend_options();
}

using testing::max_abs_diff;

std::vector<float> run_logits(Backend& b, int vocab) {
  return testing::tp_run_logits(b, vocab);
}

std::unique_ptr<Backend> make_gpu(const Model& m, int tp, bool one_device) {
  if (tp == 1) {
    auto b = cuda::CudaBackend::create(m, gpu_options());
    EXPECT_TRUE(b.ok()) << b.status().to_string();
    return b.ok() ? std::unique_ptr<Backend>(std::move(b).value()) : nullptr;
  }
  auto b = cuda::TpCudaBackend::create(m, tp, gpu_options(), one_device);
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  return b.ok() ? std::unique_ptr<Backend>(std::move(b).value()) : nullptr;
}

// TP = 1 on the GPU and its distance from the CPU's fp32 forward.
struct Reference {
  std::vector<float> gpu;
  float bf16_cost = 0.f;
};

Reference reference(const Model& m) {
  Reference ref;
  auto cpu = CpuBackend::create(m, 16, KvBudget{0, 256});
  EXPECT_TRUE(cpu.ok());
  auto gpu = make_gpu(m, 1, false);
  if (!cpu.ok() || !gpu) return ref;
  ref.gpu = run_logits(*gpu, m.config.vocab_size);
  ref.bf16_cost = max_abs_diff(ref.gpu, run_logits(**cpu, m.config.vocab_size));
  return ref;
}

void expect_logits_like_single_rank(const Model& m, const std::vector<int>& sizes, bool one_device,
                                    const char* label) {
  const Reference ref = reference(m);
  ASSERT_EQ(ref.gpu.size(), static_cast<size_t>(42) * m.config.vocab_size);
  const float bound = 2.f * ref.bf16_cost + 1e-3f;
  for (int tp : sizes) {
    auto b = make_gpu(m, tp, one_device);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->kv_spec().num_kv_heads, 3);  // the engine sees the whole model's KV
    const float d = max_abs_diff(ref.gpu, run_logits(*b, m.config.vocab_size));
    std::printf(
        "[tp cuda] %s TP=%d: max|dlogit| vs TP=1 %.2e (bound %.2e; TP=1 vs CPU fp32 %.2e)\n", label,
        tp, d, bound, ref.bf16_cost);
    EXPECT_LE(d, bound) << label << " TP=" << tp;
  }
}

TEST(CudaTp, OneDeviceLogitsEqualSingleRank) {
  CS_REQUIRE_GPU();
  auto m = testing::random_model(testing::gpu_test_spec());
  expect_logits_like_single_rank(*m, {2, 4}, /*one_device=*/true, "one GPU");
}

TEST(CudaTp, NcclLogitsEqualSingleRank) {
  CS_REQUIRE_GPU();
  int count = 0;
  CS_CUDA_OK(cudaGetDeviceCount(&count));
  if (count < 2) GTEST_SKIP() << "one GPU visible (NCCL needs one per rank)";
  auto m = testing::random_model(testing::gpu_test_spec());
  expect_logits_like_single_rank(*m, count >= 4 ? std::vector<int>{2, 4} : std::vector<int>{2},
                                 /*one_device=*/false, "NCCL");
}

// Cartridge KV through the sharded transfers (as TpKvTransfer on the CPU):
// exported at TP = N (each KV head from the rank that owns it) like TP = 1's
// export, and TP = 1's export loaded at TP = N (each rank its heads)
// continues the sequence as at TP = 1.
TEST(CudaTp, OneDeviceKvExportAndLoadByHead) {
  CS_REQUIRE_GPU();
  auto m = testing::random_model(testing::gpu_test_spec());
  const ModelConfig& c = m->config;
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i)
    prompt.push_back((i * 7 + 1) % c.vocab_size);
  const int32_t T = static_cast<int32_t>(prompt.size());
  const size_t per_layer = static_cast<size_t>(c.num_kv_heads) * T * c.head_dim;
  using Kv = std::vector<std::vector<float>>;  // [layer] [kv heads, T, head_dim]
  auto host_of = [&](Kv& k, Kv& v) {
    HostKv host;
    host.dtype = DType::kF32;
    host.num_tokens = T;
    for (int l = 0; l < c.num_layers; ++l) {
      host.keys.push_back(k[static_cast<size_t>(l)].data());
      host.values.push_back(v[static_cast<size_t>(l)].data());
    }
    return host;
  };
  auto export_kv = [&](Backend& b, Kv& k, Kv& v) {
    testing::BackendDriver d(b);
    ASSERT_TRUE(d.append(prompt).ok());
    k.assign(static_cast<size_t>(c.num_layers), std::vector<float>(per_layer, -99.f));
    v = k;
    auto id = b.start_kv_save(KvBlockList::whole({1, 2, 3}), host_of(k, v));
    ASSERT_TRUE(id.ok()) << id.status().to_string();
    ASSERT_TRUE(b.wait_transfer(*id).ok());
  };
  auto continue_from = [&](Backend& b, Kv& k, Kv& v) {
    return testing::tp_continue_from(b, host_of(k, v));
  };
  auto kv_diff = [&](const Kv& a, const Kv& b) {
    float d = 0.f;
    for (size_t l = 0; l < a.size(); ++l)
      d = std::max(d, max_abs_diff(a[l], b[l]));
    return d;
  };
  auto cpu = CpuBackend::create(*m, 16, KvBudget{0, 256});
  ASSERT_TRUE(cpu.ok());
  Kv k0, v0;
  export_kv(**cpu, k0, v0);
  auto ref_b = make_gpu(*m, 1, false);
  ASSERT_TRUE(ref_b);
  Kv k1, v1;
  export_kv(*ref_b, k1, v1);
  const float kv_bound = 2.f * std::max(kv_diff(k0, k1), kv_diff(v0, v1)) + 1e-3f;
  const std::vector<float> ref = continue_from(*ref_b, k1, v1);
  const float logit_bound = 2.f * max_abs_diff(ref, continue_from(**cpu, k1, v1)) + 1e-3f;
  for (int tp : {2, 4}) {
    auto b = make_gpu(*m, tp, true);
    ASSERT_TRUE(b);
    Kv k, v;
    export_kv(*b, k, v);
    const float dk = std::max(kv_diff(k1, k), kv_diff(v1, v));  // -99 would show a missed head
    const float dl = max_abs_diff(ref, continue_from(*b, k1, v1));
    std::printf(
        "[tp cuda] TP=%d: exported KV max|d| %.2e (bound %.2e), continuation after load "
        "max|dlogit| %.2e (bound %.2e)\n",
        tp, dk, kv_bound, dl, logit_bound);
    EXPECT_LE(dk, kv_bound) << "TP=" << tp << " export";
    EXPECT_LE(dl, logit_bound) << "TP=" << tp << " load";
  }
}

TEST(CudaTp, RefusesWhatItCannotRun) {
  CS_REQUIRE_GPU();
  auto m = testing::random_model(testing::gpu_test_spec());
  EXPECT_FALSE(cuda::TpCudaBackend::create(*m, 3, gpu_options(), true).ok());  // not 1/2/4/8
  cuda::CudaOptions no_size = gpu_options();
  no_size.kv_cache_tokens = 0;
  EXPECT_FALSE(cuda::TpCudaBackend::create(*m, 2, no_size, true).ok());  // shared GPU, no size
  int count = 0;
  CS_CUDA_OK(cudaGetDeviceCount(&count));
  auto many = cuda::TpCudaBackend::create(*m, 8, gpu_options(), false);
  if (count < 8) {
    ASSERT_FALSE(many.ok());
    EXPECT_NE(many.status().message().find("needs 8 GPUs"), std::string::npos)
        << many.status().to_string();
  }
}

}  // namespace
}  // namespace cartserve
