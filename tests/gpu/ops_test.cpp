// CUDA ops against the CPU reference on random data (runs on the GPU machine).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/ops.h"

namespace cartserve {
namespace {

template <typename T>
struct DevBuf {
  explicit DevBuf(const std::vector<T>& h) : n(h.size()) {
    cudaMalloc(&p, n * sizeof(T));
    cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~DevBuf() { cudaFree(p); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
  T* p = nullptr;
  size_t n;
};

std::vector<float> randn(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v)
    x = d(rng);
  return v;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0.f;
  for (size_t i = 0; i < a.size(); ++i)
    m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

TEST(CudaOps, RmsNorm) {
  const int n = 7, dim = 576;
  auto x = randn(n * dim, 1), w = randn(dim, 2);
  std::vector<float> ref(x.size());
  ops::cpu::rms_norm(x.data(), w.data(), ref.data(), n, dim, 1e-5f);
  DevBuf<float> dx(x), dw(w), dout(std::vector<float>(x.size()));
  ops::cuda::rms_norm(dx.p, dw.p, dout.p, n, dim, 1e-5f);
  EXPECT_LT(max_abs_diff(ref, dout.get()), 1e-4f);
}

TEST(CudaOps, RopeSiluAddEmbedding) {
  const int n = 5, heads = 3, hd = 64;
  auto x = randn(n * heads * hd, 3);
  std::vector<int32_t> pos = {0, 1, 17, 300, 4095};
  std::vector<float> inv(hd / 2);
  for (int i = 0; i < hd / 2; ++i)
    inv[i] = std::pow(10000.f, -2.f * i / hd);
  std::vector<float> ref = x;
  ops::cpu::rope(ref.data(), pos.data(), {inv.data(), hd}, n, heads);
  DevBuf<float> dx(x), dinv(inv);
  DevBuf<int32_t> dpos(pos);
  ops::cuda::rope(dx.p, dpos.p, {dinv.p, hd}, n, heads);
  EXPECT_LT(max_abs_diff(ref, dx.get()), 2e-3f);  // sincosf vs libm at angles up to ~4k rad

  auto g = randn(1000, 4), u = randn(1000, 5);
  std::vector<float> sref(1000);
  ops::cpu::silu_mul(g.data(), u.data(), sref.data(), 1000);
  DevBuf<float> dg(g), du(u), ds(std::vector<float>(1000));
  ops::cuda::silu_mul(dg.p, du.p, ds.p, 1000);
  EXPECT_LT(max_abs_diff(sref, ds.get()), 1e-5f);

  auto table = randn(10 * 8, 6);
  std::vector<int32_t> ids = {3, 0, 9, 3};
  std::vector<float> eref(4 * 8);
  ops::cpu::embedding(table.data(), ids.data(), eref.data(), 4, 8);
  DevBuf<float> dt(table), de(std::vector<float>(32));
  DevBuf<int32_t> dids(ids);
  ops::cuda::embedding(dt.p, dids.p, de.p, 4, 8);
  EXPECT_EQ(eref, de.get());
}

TEST(CudaOps, PagedAttentionScatteredBlocks) {
  const int n_heads = 8, n_kv = 2, hd = 64, bs = 16, num_blocks = 12, kv_dim = n_kv * hd;
  auto kc = randn(static_cast<size_t>(num_blocks) * bs * kv_dim, 7);
  auto vc = randn(kc.size(), 8);
  std::vector<int32_t> t0 = {4, 9}, t1 = {2, 3};
  const int rows = 6 + 1;
  auto q = randn(static_cast<size_t>(rows) * n_heads * hd, 9);
  std::vector<ops::AttnSeq> host = {{0, 6, 30, t0.data(), 2}, {6, 1, 20, t1.data(), 2}};
  std::vector<float> ref(q.size());
  const float scale = 0.125f;
  ops::cpu::paged_attention(q.data(), kc.data(), vc.data(), host.data(), 2, ref.data(), n_heads,
                            n_kv, hd, bs, scale);
  DevBuf<float> dq(q), dk(kc), dv(vc), dout(std::vector<float>(q.size()));
  DevBuf<int32_t> dt0(t0), dt1(t1);
  std::vector<ops::AttnSeq> dev = {{0, 6, 30, dt0.p, 2}, {6, 1, 20, dt1.p, 2}};
  ops::cuda::paged_attention(dq.p, dk.p, dv.p, dev.data(), 2, dout.p, n_heads, n_kv, hd, bs, scale);
  EXPECT_LT(max_abs_diff(ref, dout.get()), 1e-4f);
}

}  // namespace
}  // namespace cartserve
