// The bf16 CUDA ops (kernels/cuda_ops.h) against their fp32 CPU twins
// (kernels/ops.h) on seeded random data: ragged row counts (1, 7, 300), the
// dimensions of SmolLM2-135M and Llama-3.2-3B plus odd sizes that take the
// scalar (non-vectorised) paths, several KV block sizes, partial last
// blocks, negative slots, bias on and off, positions up to 100000.
//
// Every output is poisoned first (NaN bits) and then checked element by
// element, so an element an op forgets to write, or one it writes outside
// its range, fails the test. Each case prints its relative error.
//
// Tolerances: inputs are bf16 (exact in fp32), so the fp32 twin computes the
// same function on the same values; a bf16 output is the fp32 result
// rounded once, which is within half an ulp, 2^-8 |r| (bf16 keeps 8
// significant bits), plus the fp32 differences between the two
// computations (summation order, sincosf/expf against libm: ~1e-6
// relative). Copies and conversions (embedding, gather_rows, KV movement)
// must match bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "gpu/gpu_test_util.h"
#include "kernels/cuda_ops.h"
#include "kernels/ops.h"
#include "runtime/cuda/gemm.h"

namespace cartserve {
namespace {

using gpu_test::compare;
using gpu_test::count_poison;
using gpu_test::describe_bad;
using gpu_test::DeviceBuffer;
using gpu_test::ErrStats;
using gpu_test::first_mismatch;
using gpu_test::from_bf16;
using gpu_test::is_poison;
using gpu_test::kPoison16;
using gpu_test::randint;
using gpu_test::randn;
using gpu_test::randn_bf16;
using gpu_test::report;
using gpu_test::Seeds;
using gpu_test::Stream;
namespace cuda = ops::cuda;
using Bf16 = cuda::bf16;

// Element-wise bound for a bf16 output r_gpu against the fp32 twin r:
// |r_gpu - r| <= kBf16Rtol * |r| + atol (half a bf16 ulp, 2^-8, plus slack
// for fp32 differences).
constexpr double kBf16Rtol = 1.0 / 256 + 1e-5;
// Norm-wise bound on ||gpu - ref|| / ||ref||: never above the element-wise
// 2^-8; over many elements the rounding errors average out (uniform in half
// an ulp, ulp/|r| in (2^-8, 2^-7]: rms at most 2^-7 / sqrt(12) ~ 2.3e-3).
double rel_norm_bound(size_t n_elems) {
  return n_elems >= 1024 ? 3e-3 : kBf16Rtol;
}

constexpr int kRowCounts[] = {1, 7, 300};
constexpr int kBlockSizes[] = {8, 16, 32};

struct ModelDims {
  const char* name;
  int hidden, n_heads, n_kv_heads, head_dim, ff;
  double rope_theta;
};
constexpr ModelDims kSmolLM2{"smollm2", 576, 9, 3, 64, 1536, 100000.0};
constexpr ModelDims kLlama3B{"llama3.2-3b", 3072, 24, 8, 128, 8192, 500000.0};
// Head dim 40: head_dim / 2 = 20 is not a multiple of 8 (the scalar path).
constexpr ModelDims kOdd{"odd", 100, 2, 1, 40, 100, 10000.0};

Bf16* bf(DeviceBuffer<uint16_t>& b) {
  return reinterpret_cast<Bf16*>(b.get());
}

std::string str(const char* k, long long v) {
  return std::string(k) + "=" + std::to_string(v);
}

// The block-major pool of cuda_ops.h:
// [num_blocks][num_layers][2 (K, V)][block_size][n_kv][head_dim].
struct PoolGeom {
  int num_layers, block_size, n_kv, head_dim;
  int64_t kv_dim() const { return static_cast<int64_t>(n_kv) * head_dim; }
  int64_t block_stride() const { return int64_t{num_layers} * 2 * block_size * kv_dim(); }
  int64_t k_base(int layer) const { return int64_t{layer} * 2 * block_size * kv_dim(); }
  int64_t v_base(int layer) const { return k_base(layer) + block_size * kv_dim(); }
  // Offset of slot s relative to a layer's K (or V) base.
  int64_t slot_off(int64_t s) const {
    return (s / block_size) * block_stride() + (s % block_size) * kv_dim();
  }
  cuda::KvLayer layer_view(DeviceBuffer<uint16_t>& pool, int layer) const {
    cuda::KvLayer kv;
    kv.k = bf(pool) + k_base(layer);
    kv.v = bf(pool) + v_base(layer);
    kv.block_stride = block_stride();
    kv.block_size = block_size;
    kv.num_kv_heads = n_kv;
    kv.head_dim = head_dim;
    return kv;
  }
};

std::vector<float> inv_freq_table(int head_dim, double theta) {
  std::vector<float> inv(static_cast<size_t>(head_dim / 2));
  for (int i = 0; i < head_dim / 2; ++i)
    inv[static_cast<size_t>(i)] = static_cast<float>(std::pow(theta, -2.0 * i / head_dim));
  return inv;
}

// 1 / sqrt(mean(x^2) + eps) of a row, in double (the twin of row_inv_rms).
float row_inv_rms_ref(const float* x, int dim, float eps) {
  double ss = 0;
  for (int i = 0; i < dim; ++i)
    ss += static_cast<double>(x[i]) * x[i];
  return static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
}

std::vector<int32_t> shuffled_iota(int n, uint64_t seed) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(v.begin(), v.end(), rng);
  return v;
}

// ---- embedding, gather_rows ---------------------------------------------

TEST(CudaOps, Embedding) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(1000);
  const int vocab = 1000;
  // 100 and 7: not multiples of 8 (scalar path).
  for (const int dim : {kSmolLM2.hidden, kLlama3B.hidden, 100, 7}) {
    for (const int n : kRowCounts) {
      const uint64_t seed = seeds.next();
      const std::string what = str("dim", dim) + " " + str("n", n) + " " + str("seed", seed);
      SCOPED_TRACE(what);
      const auto table = randn_bf16(static_cast<size_t>(vocab) * dim, seed);
      auto ids = randint(static_cast<size_t>(n), seed + 1, 0, vocab - 1);
      ids[0] = vocab - 1;
      if (n > 2) ids[2] = ids[1];  // a repeated id
      std::vector<float> ref(static_cast<size_t>(n) * dim);
      ops::cpu::embedding(from_bf16(table).data(), ids.data(), ref.data(), n, dim);

      DeviceBuffer<uint16_t> d_table(table);
      DeviceBuffer<int32_t> d_ids(ids);
      DeviceBuffer<float> d_x(ref.size());
      d_x.poison();
      cuda::embedding(bf(d_table), d_ids.get(), d_x.get(), n, dim, stream.get());
      stream.sync();
      const ErrStats e = compare(d_x.download(), ref, 0.0, 0.0);  // widening is exact
      report("embedding", what, e);
      EXPECT_EQ(e.n_bad, 0u) << describe_bad(e);
      // Into a bf16 residual stream: the table rows, bit for bit.
      DeviceBuffer<uint16_t> d_xb(ref.size());
      d_xb.poison();
      cuda::embedding(bf(d_table), d_ids.get(), bf(d_xb), n, dim, stream.get());
      stream.sync();
      std::vector<uint16_t> want(ref.size());
      for (int r = 0; r < n; ++r)
        std::copy_n(table.begin() + static_cast<ptrdiff_t>(ids[static_cast<size_t>(r)]) * dim, dim,
                    want.begin() + static_cast<ptrdiff_t>(r) * dim);
      EXPECT_EQ(first_mismatch(d_xb.download(), want), -1) << "bf16 rows differ";
    }
  }
}

TEST(CudaOps, GatherRows) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(2000);
  for (const int dim : {kSmolLM2.hidden, kLlama3B.hidden, 100, 7}) {  // 7: not float4
    for (const int n : kRowCounts) {
      const uint64_t seed = seeds.next();
      const std::string what = str("dim", dim) + " " + str("n", n) + " " + str("seed", seed);
      SCOPED_TRACE(what);
      const int m = n + 3;  // rows of the residual stream
      const auto x = randn(static_cast<size_t>(m) * dim, seed);
      auto rows = randint(static_cast<size_t>(n), seed + 1, 0, m - 1);
      rows[0] = m - 1;
      std::vector<float> ref(static_cast<size_t>(n) * dim);
      ops::cpu::gather_rows(x.data(), rows.data(), ref.data(), n, dim);

      DeviceBuffer<float> d_x(x), d_out(ref.size());
      DeviceBuffer<int32_t> d_rows(rows);
      d_out.poison();
      cuda::gather_rows(d_x.get(), d_rows.get(), d_out.get(), n, dim, stream.get());
      stream.sync();
      const auto got = d_out.download();
      const ErrStats e = compare(got, ref, 0.0, 0.0);
      report("gather_rows", what, e);
      EXPECT_EQ(first_mismatch(got, ref), -1);
    }
  }
}

// ---- add_rms_norm --------------------------------------------------------

// One case; `in_place` passes the same buffer as delta and out.
void run_add_rms_norm(int n, int dim, bool with_delta, bool in_place, uint64_t seed,
                      Stream& stream) {
  const float eps = 1e-5f;
  const std::string what = str("dim", dim) + " " + str("n", n) + " " + str("delta", with_delta) +
                           (in_place ? " in_place" : "") + " " + str("seed", seed);
  SCOPED_TRACE(what);
  const size_t nd = static_cast<size_t>(n) * dim;
  const auto x = randn(nd, seed, 2.f);
  const auto delta = randn_bf16(nd, seed + 1);
  const auto w = randn_bf16(static_cast<size_t>(dim), seed + 2, 0.2f, 1.f);

  std::vector<float> x_ref = x, out_ref(nd);
  const auto delta_f = from_bf16(delta);
  ops::cpu::add_rms_norm(x_ref.data(), with_delta ? delta_f.data() : nullptr, from_bf16(w).data(),
                         out_ref.data(), n, dim, eps);

  DeviceBuffer<float> d_x(x);
  DeviceBuffer<uint16_t> d_delta(delta), d_w(w), d_out(nd);
  d_out.poison();
  Bf16* out = in_place ? bf(d_delta) : bf(d_out);
  cuda::add_rms_norm(d_x.get(), with_delta ? bf(d_delta) : nullptr, bf(d_w), out, n, dim, eps,
                     stream.get());
  stream.sync();

  // x += delta is one fp32 addition on both sides: bit-identical.
  const auto x_got = d_x.download();
  EXPECT_EQ(first_mismatch(x_got, x_ref), -1) << "residual stream differs";
  const auto out_got = in_place ? d_delta.download() : d_out.download();
  EXPECT_EQ(count_poison(out_got), 0u);
  const ErrStats e = compare(from_bf16(out_got), out_ref, kBf16Rtol, 1e-6);
  report("add_rms_norm", what, e);
  EXPECT_EQ(e.n_bad, 0u) << describe_bad(e);
  EXPECT_LT(e.rel, rel_norm_bound(nd));
}

TEST(CudaOps, AddRmsNorm) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(3000);
  // 100: scalar path; 5000: scalar path with several elements per thread.
  for (const int dim : {kSmolLM2.hidden, kLlama3B.hidden, 100, 5000}) {
    for (const int n : kRowCounts) {
      for (const bool with_delta : {false, true})
        run_add_rms_norm(n, dim, with_delta, false, seeds.next(), stream);
    }
  }
  run_add_rms_norm(7, kSmolLM2.hidden, true, true, seeds.next(), stream);
  run_add_rms_norm(7, 100, true, true, seeds.next(), stream);
}

// ---- rope_qkv_write ------------------------------------------------------

// scaled: each row first multiplied by inv_rms of a residual row [hidden]
// (the norm-folded forward's RowRmsScale); the twin scales the fp32 row by
// the same factor computed in double.
void run_rope_qkv(const ModelDims& m, int block_size, int n, bool with_bias, uint64_t seed,
                  Stream& stream, bool scaled = false) {
  const std::string what = std::string(m.name) + " " + str("bs", block_size) + " " + str("n", n) +
                           " " + str("bias", with_bias) + (scaled ? " scaled" : "") + " " +
                           str("seed", seed);
  SCOPED_TRACE(what);
  const int H = m.n_heads, KV = m.n_kv_heads, hd = m.head_dim;
  const int width = (H + 2 * KV) * hd;
  const size_t nw = static_cast<size_t>(n) * width;
  const auto qkv = randn_bf16(nw, seed);
  const auto bias = randn_bf16(static_cast<size_t>(width), seed + 1, 0.5f);
  auto positions = randint(static_cast<size_t>(n), seed + 2, 0, 100000);
  positions[0] = 100000;
  if (n > 1) positions[static_cast<size_t>(n) - 1] = 0;
  if (n > 2) positions[1] = 1 << 20;  // far past the fast sincosf range
  const auto inv = inv_freq_table(hd, m.rope_theta);

  // Layer 1 of a 2-layer pool; distinct slots in shuffled blocks; some rows
  // are padding (negative slot: rotated, not written).
  const PoolGeom g{2, block_size, KV, hd};
  const int layer = 1;
  const int num_blocks = (n + block_size - 1) / block_size + 2;
  const auto perm = shuffled_iota(num_blocks * block_size, seed + 3);
  std::vector<int32_t> slots(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    int32_t s = perm[static_cast<size_t>(r)];
    if (r % 5 == 3) s = -1;
    if (r % 11 == 10) s = -(r + 2);
    slots[static_cast<size_t>(r)] = s;
  }

  std::vector<float> ref = from_bf16(qkv);
  const auto resid = randn_bf16(static_cast<size_t>(n) * m.hidden, seed + 4, 3.f);
  const float eps = 1e-5f;
  if (scaled) {
    const auto rf = from_bf16(resid);
    for (int r = 0; r < n; ++r) {
      const float f = row_inv_rms_ref(rf.data() + static_cast<size_t>(r) * m.hidden, m.hidden, eps);
      for (int j = 0; j < width; ++j)
        ref[static_cast<size_t>(r) * width + static_cast<size_t>(j)] *= f;
    }
  }
  const auto bias_f = from_bf16(bias);
  ops::cpu::rope_qkv(ref.data(), with_bias ? bias_f.data() : nullptr, positions.data(),
                     ops::RopeTable{inv.data(), hd}, n, H, KV);

  DeviceBuffer<uint16_t> d_qkv(qkv), d_bias(bias), d_pool(num_blocks * g.block_stride());
  DeviceBuffer<uint16_t> d_resid(resid);
  DeviceBuffer<int32_t> d_pos(positions), d_slots(slots);
  DeviceBuffer<float> d_inv(inv);
  d_pool.poison();
  const cuda::RowRmsScale scale{scaled ? bf(d_resid) : nullptr, m.hidden, eps};
  cuda::rope_qkv_write(bf(d_qkv), with_bias ? bf(d_bias) : nullptr, d_pos.get(), d_inv.get(),
                       d_slots.get(), g.layer_view(d_pool, layer), n, H, stream.get(), scale);
  stream.sync();

  const auto got = d_qkv.download();
  EXPECT_EQ(count_poison(got), 0u);
  const ErrStats e = compare(from_bf16(got), ref, kBf16Rtol, 1e-5);
  report("rope_qkv_write", what, e);
  EXPECT_EQ(e.n_bad, 0u) << describe_bad(e);
  EXPECT_LT(e.rel, rel_norm_bound(nw));

  // The pool: each written row's k and v (the very bits left in qkv) at its
  // slot, poison everywhere else (other layer, padding rows, free slots).
  std::vector<uint16_t> want(d_pool.size(), kPoison16);
  const size_t kv_dim = static_cast<size_t>(g.kv_dim());
  for (int r = 0; r < n; ++r) {
    const int32_t s = slots[static_cast<size_t>(r)];
    if (s < 0) continue;
    const size_t row = static_cast<size_t>(r) * width;
    const size_t k_at = static_cast<size_t>(g.k_base(layer) + g.slot_off(s));
    const size_t v_at = static_cast<size_t>(g.v_base(layer) + g.slot_off(s));
    std::copy_n(got.begin() + static_cast<ptrdiff_t>(row + static_cast<size_t>(H) * hd), kv_dim,
                want.begin() + static_cast<ptrdiff_t>(k_at));
    std::copy_n(got.begin() + static_cast<ptrdiff_t>(row + static_cast<size_t>(H + KV) * hd),
                kv_dim, want.begin() + static_cast<ptrdiff_t>(v_at));
  }
  EXPECT_EQ(first_mismatch(d_pool.download(), want), -1) << "KV pool differs";
}

TEST(CudaOps, RopeQkvWrite) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(4000);
  for (const ModelDims* m : {&kSmolLM2, &kLlama3B, &kOdd}) {
    for (const int bs : kBlockSizes) {
      for (const int n : kRowCounts) {
        for (const bool with_bias : {false, true})
          run_rope_qkv(*m, bs, n, with_bias, seeds.next(), stream);
      }
    }
  }
}

TEST(CudaOps, RopeQkvWriteScaledByResidualRms) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(4500);
  for (const ModelDims* m : {&kSmolLM2, &kLlama3B, &kOdd}) {  // kOdd: hidden 100, scalar rms
    for (const int n : kRowCounts) {
      for (const bool with_bias : {false, true})
        run_rope_qkv(*m, 16, n, with_bias, seeds.next(), stream, /*scaled=*/true);
    }
  }
}

// ---- gemv (small-row linear) ------------------------------------------------

// A linear-layer kernel's fp32 and bf16 outputs against the CPU twin's `want`
// ([n, out] fp32): launch(y, y_fp32) runs it into y. Returns the fp32 output.
template <typename Launch>
std::vector<float> check_linear(const char* name, const std::string& what,
                                const std::vector<float>& want, Stream& stream, Launch launch) {
  DeviceBuffer<float> y32(want.size());
  y32.poison();
  launch(static_cast<void*>(y32.get()), true);
  DeviceBuffer<uint16_t> y16(want.size());
  y16.poison();
  launch(static_cast<void*>(y16.get()), false);
  stream.sync();
  const auto got32 = y32.download();
  const auto got16 = y16.download();
  EXPECT_EQ(count_poison(got32), 0u);
  EXPECT_EQ(count_poison(got16), 0u);
  // fp32 out: only the summation order differs from the CPU twin.
  const ErrStats e32 = compare(got32, want, 1e-4, 1e-3);
  report((std::string(name) + " fp32").c_str(), what, e32);
  EXPECT_EQ(e32.n_bad, 0u) << describe_bad(e32);
  const ErrStats e16 = compare(from_bf16(got16), want, kBf16Rtol, 1e-3);
  report((std::string(name) + " bf16").c_str(), what, e16);
  EXPECT_EQ(e16.n_bad, 0u) << describe_bad(e16);
  EXPECT_LT(e16.rel, rel_norm_bound(want.size()));
  return got32;
}

// A linear layer's test problem: w [out, in] (scale 0.05) and x [rows, in]
// in bf16, and the CPU twin's fp32 y [rows, out].
struct LinearProblem {
  std::vector<uint16_t> w, x;
  std::vector<float> ref;
  LinearProblem(int in, int out, int rows, uint64_t seed)
      : w(randn_bf16(static_cast<size_t>(out) * in, seed, 0.05f)),
        x(randn_bf16(static_cast<size_t>(rows) * in, seed + 1)),
        ref(static_cast<size_t>(rows) * out) {
    ops::cpu::linear_bf16(from_bf16(x).data(), w.data(), nullptr, ref.data(), rows, in, out,
                          ops::cpu::LinearKernel::kPerRow);
  }
  // The first n rows of the reference.
  std::vector<float> want(int n, int out) const {
    return {ref.begin(), ref.begin() + static_cast<ptrdiff_t>(n) * out};
  }
};

TEST(CudaOps, GemvMatchesCpuLinear) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(5500);
  struct Dims {
    int in, out;
  };
  // The projections of both model shapes, an LM-head-like wide one, odd outs.
  const Dims dims[] = {{576, 960},    {1536, 576},  {3072, 5120}, {8192, 3072},
                       {3072, 20011}, {3072, 1001}, {8, 3}};
  for (const Dims d : dims) {
    const LinearProblem lp(d.in, d.out, cuda::kGemvMaxRows, seeds.next());
    DeviceBuffer<uint16_t> d_w(lp.w), d_x(lp.x);
    std::vector<float> all;  // every row at n = kGemvMaxRows: the bits each n must give
    // 1-2 rows: one weight row per warp; 3-8: two; 9-16: four.
    for (const int n : {cuda::kGemvMaxRows, 1, 2, 3, 5, 8, 9, 13}) {
      ASSERT_TRUE(cuda::gemv_supports(d_x.get(), d_w.get(), n, d.in));
      const std::vector<float> want = lp.want(n, d.out);
      const std::string what = str("in", d.in) + " " + str("out", d.out) + " " + str("n", n);
      SCOPED_TRACE(what);
      const auto got32 = check_linear("gemv", what, want, stream, [&](void* y, bool f32) {
        cuda::gemv(bf(d_x), bf(d_w), y, f32, n, d.in, d.out, stream.get());
      });
      // A row's bits do not depend on how many rows run with it.
      if (n == cuda::kGemvMaxRows) all = got32;
      EXPECT_EQ(0, std::memcmp(all.data(), got32.data(), got32.size() * sizeof(float)));
    }
  }
}

// CARTSERVE_GEMM_FIXED: every decode run of 1..64 rows of a weight shape
// takes the one cuBLASLt configuration chosen for it (split-K forms
// included), so a row's bits do not depend on how many rows run with it.
// Gemm::accumulate: y += x @ w^T in place (cuBLASLt beta = 1) at decode and
// prefill row counts, with the default and the fixed decode configurations;
// against the twin's product p plus the old y in fp32. Bound: two bf16
// roundings, of the product and of the sum (cuBLASLt's epilogue may round
// the product to the output type before adding C, as HF's bf16 residual add
// does), |got - want| <= 2^-8 (|p| + |want|) + 1e-3 per element, and the rms
// of the error at most 3e-3 of the rms of |p| + |want|.
TEST(CudaOps, GemmAccumulateAddsIntoY) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(5650);
  DeviceBuffer<uint8_t> ws(32 << 20);
  for (const bool fixed : {false, true}) {
    auto gemm = ::cartserve::cuda::Gemm::create(ws.get(), 32 << 20, false, false, false, 0, fixed);
    ASSERT_TRUE(gemm.ok()) << gemm.status().message();
    ASSERT_TRUE((*gemm)->plain());
    for (const auto& [in, out] : {std::pair{3072, 3072}, {8192, 3072}, {576, 576}, {1536, 576}}) {
      for (const int n : {1, 7, 64, 300}) {
        const uint64_t seed = seeds.next();
        const std::string what = str("in", in) + " " + str("out", out) + " " + str("n", n) +
                                 str(" fixed", fixed) + " " + str("seed", seed);
        SCOPED_TRACE(what);
        const LinearProblem lp(in, out, n, seed);
        const auto y0 = randn_bf16(static_cast<size_t>(n) * out, seed + 7, 4.f);
        const std::vector<float> prod = lp.want(n, out);
        std::vector<float> want = prod;
        const auto y0f = from_bf16(y0);
        for (size_t i = 0; i < want.size(); ++i)
          want[i] += y0f[i];
        DeviceBuffer<uint16_t> d_w(lp.w), d_x(lp.x), d_y(y0);
        const Status st = (*gemm)->accumulate(bf(d_x), bf(d_w), bf(d_y), n, in, out, stream.get(),
                                              /*decode=*/n <= 64);
        ASSERT_TRUE(st.ok()) << st.message();
        stream.sync();
        const std::vector<float> got = from_bf16(d_y.download());
        report("gemm accumulate", what, compare(got, want, kBf16Rtol, 1e-3));
        size_t bad = 0;
        double err2 = 0, scale2 = 0;
        for (size_t i = 0; i < want.size(); ++i) {
          const double d = std::fabs(double{got[i]} - want[i]);
          const double mag = std::fabs(prod[i]) + std::fabs(want[i]);
          bad += !(d <= kBf16Rtol * mag + 1e-3);  // NaN counts as bad
          err2 += d * d;
          scale2 += mag * mag;
        }
        EXPECT_EQ(bad, 0u);
        EXPECT_LT(std::sqrt(err2 / scale2), 3e-3);
      }
    }
  }
  // A gemv path refuses (the backend then keeps the unfolded forward).
  auto gemv = ::cartserve::cuda::Gemm::create(ws.get(), 32 << 20, false, false, false, 4, false);
  ASSERT_TRUE(gemv.ok());
  EXPECT_FALSE((*gemv)->plain());
  DeviceBuffer<uint16_t> d(static_cast<size_t>(64));
  EXPECT_FALSE((*gemv)->accumulate(bf(d), bf(d), bf(d), 1, 8, 8, stream.get()).ok());
}

TEST(CudaOps, GemmFixedDecodeConfigIsBatchInvariant) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(5700);
  struct Dims {
    int in, out;
  };
  // The 3B shape's projections, SmolLM2's, an odd out.
  const Dims dims[] = {{3072, 5120}, {3072, 3072}, {3072, 16384}, {8192, 3072},
                       {576, 960},   {576, 576},   {1536, 576},   {3072, 1001}};
  constexpr int kMaxRows = ::cartserve::cuda::Gemm::kFixedMaxRows;
  DeviceBuffer<uint8_t> ws(32 << 20);
  auto gemm = ::cartserve::cuda::Gemm::create(ws.get(), 32 << 20, false, false, false, 0, true);
  ASSERT_TRUE(gemm.ok()) << gemm.status().message();
  for (const Dims d : dims) {
    const LinearProblem lp(d.in, d.out, kMaxRows, seeds.next());
    DeviceBuffer<uint16_t> d_w(lp.w), d_x(lp.x);
    std::vector<float> all;  // every row at n = kMaxRows: the bits each row must keep
    for (const int n : {kMaxRows, 1, 2, 3, 5, 8, 16, 17, 33, 63}) {
      const std::vector<float> want = lp.want(n, d.out);
      const std::string what = str("in", d.in) + " " + str("out", d.out) + " " + str("n", n);
      SCOPED_TRACE(what);
      const auto got32 = check_linear("gemm fixed", what, want, stream, [&](void* y, bool f32) {
        const Status st =
            (*gemm)->run(bf(d_x), bf(d_w), y, f32, n, d.in, d.out, stream.get(), true);
        EXPECT_TRUE(st.ok()) << st.message();
      });
      if (n == kMaxRows) all = got32;
      EXPECT_EQ(0, std::memcmp(all.data(), got32.data(), got32.size() * sizeof(float)));
    }
    const ::cartserve::cuda::Gemm::Choice c = (*gemm)->choice(1, d.in, d.out, true);
    std::printf("  gemm fixed in %d out %d: algo %d tile %u split-k %d\n", d.in, d.out, c.algo_id,
                c.tile, c.split_k);
  }
}

TEST(CudaOps, SkinnyGemmMatchesCpuLinearAndIsBatchInvariant) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(5600);
  struct Dims {
    int in, out;
  };
  // The projections of both model shapes, an LM-head-like wide one, odd outs,
  // an `in` of one k chunk (a single warp).
  const Dims dims[] = {{576, 960},    {1536, 576},  {3072, 5120}, {8192, 3072},
                       {3072, 20011}, {3072, 1001}, {32, 17}};
  constexpr int kMaxRows = 130;  // three 64-row groups, the last partial
  for (const Dims d : dims) {
    const LinearProblem lp(d.in, d.out, kMaxRows, seeds.next());
    DeviceBuffer<uint16_t> d_w(lp.w), d_x(lp.x);
    ASSERT_TRUE(cuda::skinny_gemm_supports(d_x.get(), d_w.get(), d.in));
    std::vector<float> all;  // every row at n = kMaxRows: the bits each row must keep
    for (const int n : {kMaxRows, 1, 2, 3, 5, 8, 9, 16, 17, 33, 64, 65}) {
      const std::vector<float> want = lp.want(n, d.out);
      const std::string what = str("in", d.in) + " " + str("out", d.out) + " " + str("n", n);
      SCOPED_TRACE(what);
      const auto got32 = check_linear("skinny", what, want, stream, [&](void* y, bool f32) {
        cuda::skinny_gemm(bf(d_x), bf(d_w), y, f32, n, d.in, d.out, stream.get());
      });
      // Rows [0, n) have the bits they have in the largest batch.
      if (n == kMaxRows) all = got32;
      EXPECT_EQ(0, std::memcmp(all.data(), got32.data(), got32.size() * sizeof(float)));
      // Every CTA shape (m-tiles per CTA) gives the same bits.
      for (const int mt : {1, 2, 4}) {
        DeviceBuffer<float> y(static_cast<size_t>(n) * d.out);
        cuda::skinny_gemm_shaped(bf(d_x), bf(d_w), y.get(), true, n, d.in, d.out, stream.get(),
                                 cuda::skinny_gemm_split(d.in), mt);
        stream.sync();
        const auto got = y.download();
        EXPECT_EQ(0, std::memcmp(all.data(), got.data(), got.size() * sizeof(float)))
            << "mt " << mt;
      }
    }
    // A single row taken from anywhere in the batch (another group, another
    // lane of its n-tile) alone gives its bits in the batch.
    for (const int r : {1, 7, 63, 64, 129}) {
      SCOPED_TRACE(str("row", r));
      DeviceBuffer<float> y(static_cast<size_t>(d.out));
      cuda::skinny_gemm(bf(d_x) + static_cast<size_t>(r) * d.in, bf(d_w), y.get(), true, 1, d.in,
                        d.out, stream.get());
      stream.sync();
      const auto got = y.download();
      EXPECT_EQ(0, std::memcmp(all.data() + static_cast<size_t>(r) * d.out, got.data(),
                               got.size() * sizeof(float)));
    }
  }
}

// The gate/up projection with SwiGLU in skinny_gemm's epilogue: the bits of
// skinny_gemm into a bf16 projection followed by silu_mul over it, at every
// batch size (whole and partial 64-row groups).
TEST(CudaOps, SkinnyGemmSwigluIsProjectionThenSiluMul) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(4600);
  struct Dims {
    int in, ff;
  };
  const Dims dims[] = {{576, 1536}, {3072, 8192}, {64, 24}};
  for (const Dims d : dims) {
    const uint64_t seed = seeds.next();
    const auto w = randn_bf16(static_cast<size_t>(2 * d.ff) * d.in, seed, 0.05f);
    const auto x = randn_bf16(static_cast<size_t>(130) * d.in, seed + 1);
    DeviceBuffer<uint16_t> d_w(w), d_x(x);
    for (const int n : {1, 3, 8, 17, 64, 130}) {
      SCOPED_TRACE(str("in", d.in) + " " + str("ff", d.ff) + " " + str("n", n));
      DeviceBuffer<uint16_t> gu(static_cast<size_t>(n) * 2 * d.ff),
          want(static_cast<size_t>(n) * d.ff), got(want.size());
      got.poison();
      cuda::skinny_gemm(bf(d_x), bf(d_w), gu.get(), false, n, d.in, 2 * d.ff, stream.get());
      cuda::silu_mul(bf(gu), bf(want), n, d.ff, stream.get(), 8);
      cuda::skinny_gemm_swiglu(bf(d_x), bf(d_w), bf(got), n, d.in, d.ff, stream.get());
      stream.sync();
      const auto g = got.download();
      EXPECT_EQ(count_poison(g), 0u);
      EXPECT_EQ(g, want.download());
    }
  }
}

// The gate/up projection with SwiGLU in gemv's epilogue: the bits of gemv into
// a bf16 projection followed by silu_mul over it, at every row count.
TEST(CudaOps, GemvSwigluIsProjectionThenSiluMul) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(4700);
  struct Dims {
    int in, ff;
  };
  const Dims dims[] = {{576, 1536}, {3072, 8192}, {64, 24}, {8, 8}};
  for (const Dims d : dims) {
    const uint64_t seed = seeds.next();
    const auto w = randn_bf16(static_cast<size_t>(2 * d.ff) * d.in, seed, 0.05f);
    const auto x = randn_bf16(static_cast<size_t>(cuda::kGemvMaxRows) * d.in, seed + 1);
    DeviceBuffer<uint16_t> d_w(w), d_x(x);
    for (int n = 1; n <= cuda::kGemvMaxRows; ++n) {
      SCOPED_TRACE(str("in", d.in) + " " + str("ff", d.ff) + " " + str("n", n));
      DeviceBuffer<uint16_t> gu(static_cast<size_t>(n) * 2 * d.ff),
          want(static_cast<size_t>(n) * d.ff), got(want.size());
      got.poison();
      cuda::gemv(bf(d_x), bf(d_w), gu.get(), false, n, d.in, 2 * d.ff, stream.get());
      cuda::silu_mul(bf(gu), bf(want), n, d.ff, stream.get(), 8);
      cuda::gemv_swiglu(bf(d_x), bf(d_w), bf(got), n, d.in, d.ff, stream.get());
      stream.sync();
      const auto g = got.download();
      EXPECT_EQ(count_poison(g), 0u);
      EXPECT_EQ(g, want.download());
    }
  }
}

// ---- silu_mul --------------------------------------------------------------

// A bf16 output (poisoned before the op) against its fp32 twin: every
// element written, within kBf16Rtol element-wise and rel_norm_bound
// norm-wise. Returns the output's bits.
std::vector<uint16_t> check_bf16_output(const char* op, const std::string& what,
                                        DeviceBuffer<uint16_t>& d_out,
                                        const std::vector<float>& ref) {
  const auto got = d_out.download();
  EXPECT_EQ(count_poison(got), 0u);
  const ErrStats e = compare(from_bf16(got), ref, kBf16Rtol, 1e-6);
  report(op, what, e);
  EXPECT_EQ(e.n_bad, 0u) << describe_bad(e);
  EXPECT_LT(e.rel, rel_norm_bound(ref.size()));
  return got;
}

// [n, 2 * ff] rows of [gate | up] in the backend's layout: gate and up
// features alternating in blocks of `block` (cuda::gate_up_offset).
std::vector<uint16_t> interleave_gate_up(const std::vector<uint16_t>& gate_up, int n, int ff,
                                         int block) {
  std::vector<uint16_t> inter(gate_up.size());
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < ff; ++j) {
      const size_t row = static_cast<size_t>(i) * 2 * ff;
      const auto o = static_cast<size_t>(cuda::gate_up_offset(j, block));
      inter[row + o] = gate_up[row + static_cast<size_t>(j)];
      inter[row + o + static_cast<size_t>(block)] = gate_up[row + static_cast<size_t>(ff + j)];
    }
  }
  return inter;
}

TEST(CudaOps, SiluMul) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(5000);
  for (const int ff : {kSmolLM2.ff, kLlama3B.ff, 100, 7}) {  // 100, 7: scalar path
    for (const int n : kRowCounts) {
      const uint64_t seed = seeds.next();
      const std::string what = str("ff", ff) + " " + str("n", n) + " " + str("seed", seed);
      SCOPED_TRACE(what);
      auto gate_up = randn_bf16(static_cast<size_t>(n) * 2 * ff, seed, 3.f);
      // Saturated gates: silu(-90) underflows to -0, silu(90) = 90.
      gate_up[0] = f32_to_bf16(-90.f);
      gate_up[1] = f32_to_bf16(90.f);
      gate_up[2] = f32_to_bf16(-20.f);
      std::vector<float> ref(static_cast<size_t>(n) * ff);
      ops::cpu::silu_mul_fused(from_bf16(gate_up).data(), ref.data(), n, ff);

      DeviceBuffer<uint16_t> d_gu(gate_up), d_out(ref.size());
      d_out.poison();
      cuda::silu_mul(bf(d_gu), bf(d_out), n, ff, stream.get());
      stream.sync();
      const auto got = check_bf16_output("silu_mul", what, d_out, ref);
      // The backend's layout (gate and up rows alternating in blocks): the
      // same outputs, bit for bit.
      const int block = cuda::gate_up_block(ff);
      DeviceBuffer<uint16_t> d_inter(interleave_gate_up(gate_up, n, ff, block)), d_out2(ref.size());
      cuda::silu_mul(bf(d_inter), bf(d_out2), n, ff, stream.get(), block);
      stream.sync();
      EXPECT_EQ(d_out2.download(), got) << "block " << block;
    }
  }
}

// silu(g * r) * (u * r), r = inv_rms of a residual row [hidden] (the
// norm-folded forward): against the twin on rows scaled in fp32, the
// interleaved layout bit for bit, and a row's bits alone as among 300 rows
// (where each thread takes four chunks).
TEST(CudaOps, SiluMulScaledByResidualRms) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(5500);
  const float eps = 1e-5f;
  for (const ModelDims* m : {&kSmolLM2, &kLlama3B, &kOdd}) {
    for (const int n : kRowCounts) {
      const int ff = m->ff;
      const uint64_t seed = seeds.next();
      const std::string what = std::string(m->name) + " " + str("n", n) + " " + str("seed", seed);
      SCOPED_TRACE(what);
      const auto gate_up = randn_bf16(static_cast<size_t>(n) * 2 * ff, seed, 30.f);
      const auto resid = randn_bf16(static_cast<size_t>(n) * m->hidden, seed + 1, 10.f);
      std::vector<float> scaled = from_bf16(gate_up);
      const auto rf = from_bf16(resid);
      for (int i = 0; i < n; ++i) {
        const float f =
            row_inv_rms_ref(rf.data() + static_cast<size_t>(i) * m->hidden, m->hidden, eps);
        for (int j = 0; j < 2 * ff; ++j)
          scaled[static_cast<size_t>(i) * 2 * ff + static_cast<size_t>(j)] *= f;
      }
      std::vector<float> ref(static_cast<size_t>(n) * ff);
      ops::cpu::silu_mul_fused(scaled.data(), ref.data(), n, ff);

      DeviceBuffer<uint16_t> d_gu(gate_up), d_resid(resid), d_out(ref.size());
      d_out.poison();
      const cuda::RowRmsScale scale{bf(d_resid), m->hidden, eps};
      cuda::silu_mul_scaled(bf(d_gu), bf(d_out), n, ff, scale, stream.get());
      stream.sync();
      const auto got = check_bf16_output("silu_mul_scaled", what, d_out, ref);
      const int block = cuda::gate_up_block(ff);
      DeviceBuffer<uint16_t> d_inter(interleave_gate_up(gate_up, n, ff, block)), d_out2(ref.size());
      cuda::silu_mul_scaled(bf(d_inter), bf(d_out2), n, ff, scale, stream.get(), block);
      stream.sync();
      EXPECT_EQ(d_out2.download(), got) << "block " << block;
      if (n > 7) {  // the first 7 rows alone (one chunk per thread): the same bits
        DeviceBuffer<uint16_t> d_out3(static_cast<size_t>(7) * ff);
        cuda::silu_mul_scaled(bf(d_gu), bf(d_out3), 7, ff, scale, stream.get());
        stream.sync();
        EXPECT_EQ(d_out3.download(),
                  std::vector<uint16_t>(got.begin(), got.begin() + static_cast<ptrdiff_t>(7) * ff));
      }
    }
  }
}

// ---- KV import / export ----------------------------------------------------

DType dtype_of(cuda::KvElem e) {
  switch (e) {
    case cuda::KvElem::kF32:
      return DType::kF32;
    case cuda::KvElem::kF16:
      return DType::kF16;
    case cuda::KvElem::kBF16:
      return DType::kBF16;
  }
  return DType::kF32;
}

std::vector<uint8_t> encode(const std::vector<float>& v, DType t) {
  std::vector<uint8_t> out(v.size() * dtype_size(t));
  convert_from_f32(v.data(), t, out.data(), v.size());
  return out;
}

std::vector<float> decode(const std::vector<uint8_t>& bytes, DType t) {
  std::vector<float> out(bytes.size() / dtype_size(t));
  convert_to_f32(t, bytes.data(), out.data(), out.size());
  return out;
}

// [first, last) cut into pieces of 1 .. max(1, (last - first) / 3) tokens.
std::vector<std::pair<int, int>> random_chunks(int first, int last, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::pair<int, int>> out;  // (first, count)
  const int max_len = std::max(1, (last - first) / 3);
  for (int p = first; p < last;) {
    const int len = std::min(last - p, std::uniform_int_distribution<int>(1, max_len)(rng));
    out.emplace_back(p, len);
    p += len;
  }
  return out;
}

struct KvDims {
  const char* name;
  int n_kv, head_dim, tokens;  // tokens: not a multiple of any block size
};

void run_kv_round_trip(const KvDims& c, cuda::KvElem elem, int block_size, uint64_t seed,
                       Stream& stream) {
  const DType dt = dtype_of(elem);
  const std::string what = std::string(c.name) + " " + dtype_name(dt) + " " +
                           str("bs", block_size) + " " + str("T", c.tokens) + " " +
                           str("seed", seed);
  SCOPED_TRACE(what);
  const int T = c.tokens;
  const PoolGeom g{3, block_size, c.n_kv, c.head_dim};
  const int layer = 1;
  const int nb = (T + block_size - 1) / block_size;
  const int num_blocks = nb + 3;
  auto blocks = shuffled_iota(num_blocks, seed);
  blocks.resize(static_cast<size_t>(nb));
  const size_t file_elems = static_cast<size_t>(c.n_kv) * T * c.head_dim;

  // The cartridge's K and V in file layout [n_kv, T, head_dim], with a few
  // extreme values (bf16/fp16 overflow and subnormal edges).
  std::vector<float> kv_vals[2] = {randn(file_elems, seed + 1), randn(file_elems, seed + 2)};
  const std::vector<float> specials =
      dt == DType::kF16 ? std::vector<float>{65504.f, -65504.f, 5.96046448e-8f, 0.f, -0.f}
                        : std::vector<float>{1e30f, -1e-30f, 3e38f, 0.f, -0.f};
  for (size_t i = 0; i < specials.size() && i < file_elems; ++i)
    kv_vals[0][i] = specials[i];
  const std::vector<uint8_t> file[2] = {encode(kv_vals[0], dt), encode(kv_vals[1], dt)};

  DeviceBuffer<uint16_t> d_pool(num_blocks * g.block_stride());
  DeviceBuffer<int32_t> d_blocks(blocks);
  DeviceBuffer<uint8_t> d_file[2] = {DeviceBuffer<uint8_t>(file[0]),
                                     DeviceBuffer<uint8_t>(file[1])};
  const cuda::KvLayer view = g.layer_view(d_pool, layer);
  d_pool.poison();
  const auto chunks_in = random_chunks(0, T, seed + 3);
  for (const auto& [first, count] : chunks_in) {
    cuda::kv_import(d_file[0].get(), elem, T, first, count, d_blocks.get(), view.k, view,
                    stream.get());
    cuda::kv_import(d_file[1].get(), elem, T, first, count, d_blocks.get(), view.v, view,
                    stream.get());
  }
  stream.sync();
  const auto pool = d_pool.download();

  // Expected pool: bf16 of each file value at its slot, poison elsewhere
  // (other layers, the free tail of the last block, unused blocks).
  std::vector<uint16_t> want(pool.size(), kPoison16);
  std::vector<float> cpu_pool(pool.size(), gpu_test::poison_f32());
  for (int kind = 0; kind < 2; ++kind) {
    const auto vals = decode(file[kind], dt);
    const int64_t base = kind == 0 ? g.k_base(layer) : g.v_base(layer);
    for (int h = 0; h < c.n_kv; ++h) {
      for (int p = 0; p < T; ++p) {
        const int64_t slot =
            int64_t{blocks[static_cast<size_t>(p / block_size)]} * block_size + p % block_size;
        for (int d = 0; d < c.head_dim; ++d) {
          const size_t f = (static_cast<size_t>(h) * T + p) * c.head_dim + d;
          want[static_cast<size_t>(base + g.slot_off(slot) + int64_t{h} * c.head_dim + d)] =
              f32_to_bf16(vals[f]);
        }
      }
    }
    // The CPU twin, same chunks, into an fp32 pool of the same layout.
    for (const auto& [first, count] : chunks_in) {
      ops::cpu::kv_import(file[kind].data(), dt, T, first, count, blocks.data(),
                          cpu_pool.data() + base, g.block_stride(), block_size, c.n_kv, c.head_dim);
    }
  }
  const long long bad_pool = first_mismatch(pool, want);
  EXPECT_EQ(bad_pool, -1) << "pool after import differs";
  size_t twin_bad = 0;
  for (size_t i = 0; i < pool.size(); ++i) {
    const bool ok =
        is_poison(pool[i]) ? gpu_test::is_poison(cpu_pool[i]) : f32_to_bf16(cpu_pool[i]) == pool[i];
    twin_bad += ok ? 0 : 1;
  }
  EXPECT_EQ(twin_bad, 0u) << "GPU pool != bf16(CPU twin's fp32 pool)";
  std::printf("[kv_import] %s: chunks=%zu pool_mismatch=%lld twin_mismatch=%zu\n", what.c_str(),
              chunks_in.size(), bad_pool, twin_bad);

  // Export: every range but a gap [g0, g1), check the gap is untouched,
  // then the gap; the result is the pool's values converted to the file type.
  const int g0 = T / 3, g1 = std::min(T, g0 + std::max(1, T / 4));
  const auto pool_f = from_bf16(pool);
  for (int kind = 0; kind < 2; ++kind) {
    const int64_t base = kind == 0 ? g.k_base(layer) : g.v_base(layer);
    const Bf16* src = kind == 0 ? view.k : view.v;
    std::vector<float> want_f(file_elems);
    for (int h = 0; h < c.n_kv; ++h) {
      for (int p = 0; p < T; ++p) {
        const int64_t slot =
            int64_t{blocks[static_cast<size_t>(p / block_size)]} * block_size + p % block_size;
        for (int d = 0; d < c.head_dim; ++d) {
          want_f[(static_cast<size_t>(h) * T + p) * c.head_dim + d] =
              pool_f[static_cast<size_t>(base + g.slot_off(slot) + int64_t{h} * c.head_dim + d)];
        }
      }
    }
    const auto want_bytes = encode(want_f, dt);
    if (dt == DType::kBF16) {
      EXPECT_EQ(first_mismatch(want_bytes, file[kind]), -1) << "bf16 round trip not exact";
    }

    DeviceBuffer<uint8_t> d_out(want_bytes.size());
    d_out.poison();
    std::vector<std::pair<int, int>> chunks_out = random_chunks(0, g0, seed + 4 + kind);
    for (const auto& ch : random_chunks(g1, T, seed + 6 + kind))
      chunks_out.push_back(ch);
    for (const auto& [first, count] : chunks_out)
      cuda::kv_export(src, view, d_blocks.get(), T, first, count, d_out.get(), elem, stream.get());
    stream.sync();
    auto got = d_out.download();
    const size_t es = dtype_size(dt);
    size_t gap_bad = 0, rest_bad = 0;
    for (int h = 0; h < c.n_kv; ++h) {
      for (int p = 0; p < T; ++p) {
        for (size_t b = 0; b < static_cast<size_t>(c.head_dim) * es; ++b) {
          const size_t i = (static_cast<size_t>(h) * T + p) * c.head_dim * es + b;
          if (p >= g0 && p < g1) {
            gap_bad += got[i] == 0xFF ? 0 : 1;
          } else {
            rest_bad += got[i] == want_bytes[i] ? 0 : 1;
          }
        }
      }
    }
    EXPECT_EQ(gap_bad, 0u) << "export wrote outside its range";
    EXPECT_EQ(rest_bad, 0u) << "partial export differs";
    if (g1 > g0) {
      cuda::kv_export(src, view, d_blocks.get(), T, g0, g1 - g0, d_out.get(), elem, stream.get());
    }
    stream.sync();
    got = d_out.download();
    const long long bad_export = first_mismatch(got, want_bytes);
    EXPECT_EQ(bad_export, -1) << "export differs";

    // The CPU twin exporting the same (bf16-valued) pool gives the same bytes.
    std::vector<uint8_t> cpu_out(want_bytes.size(), 0xFF);
    ops::cpu::kv_export(pool_f.data() + base, g.block_stride(), block_size, c.n_kv, c.head_dim,
                        blocks.data(), T, 0, T, cpu_out.data(), dt);
    const long long bad_twin = first_mismatch(got, cpu_out);
    EXPECT_EQ(bad_twin, -1) << "CPU twin export differs";
    std::printf("[kv_export] %s %s: chunks=%zu gap=[%d,%d) mismatch=%lld twin_mismatch=%lld\n",
                what.c_str(), kind == 0 ? "K" : "V", chunks_out.size() + 1, g0, g1, bad_export,
                bad_twin);
  }
}

TEST(CudaOps, KvImportExportRoundTrip) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(6000);
  // head_dim 12: not a multiple of 8 (scalar path).
  const KvDims cases[] = {{"smollm2", 3, 64, 77}, {"llama3.2-3b", 8, 128, 45}, {"odd", 2, 12, 29}};
  for (const KvDims& c : cases) {
    for (const auto elem : {cuda::KvElem::kF32, cuda::KvElem::kF16, cuda::KvElem::kBF16}) {
      for (const int bs : kBlockSizes)
        run_kv_round_trip(c, elem, bs, seeds.next(), stream);
    }
  }
}

// ---- copy_block_prefixes -------------------------------------------------

TEST(CudaOps, CopyBlockPrefixes) {
  CS_REQUIRE_GPU();
  Stream stream;
  Seeds seeds(7000);
  // kv_dim 12: not a multiple of 8 (scalar path).
  for (const int kv_dim :
       {kSmolLM2.n_kv_heads * kSmolLM2.head_dim, kLlama3B.n_kv_heads * kLlama3B.head_dim, 12}) {
    for (const int bs : kBlockSizes) {
      for (const int n : {1, 7}) {
        const uint64_t seed = seeds.next();
        const std::string what = str("kv_dim", kv_dim) + " " + str("bs", bs) + " " + str("n", n) +
                                 " " + str("seed", seed);
        SCOPED_TRACE(what);
        const int num_layers = 3, num_blocks = 20;
        const size_t block_elems = static_cast<size_t>(num_layers) * 2 * bs * kv_dim;
        const auto pool = randn_bf16(num_blocks * block_elems, seed);
        const auto perm = shuffled_iota(num_blocks, seed + 1);
        const std::vector<int32_t> src(perm.begin(), perm.begin() + n);
        const std::vector<int32_t> dst(perm.begin() + n, perm.begin() + 2 * n);
        auto num_slots = randint(static_cast<size_t>(n), seed + 2, 0, bs);
        num_slots[0] = bs;  // a whole block
        if (n > 1) num_slots[1] = 0;
        if (n > 2) num_slots[2] = 1;

        std::vector<uint16_t> want = pool;
        for (int i = 0; i < n; ++i) {
          for (int part = 0; part < num_layers * 2; ++part) {
            const size_t off = static_cast<size_t>(part) * bs * kv_dim;
            const size_t len = static_cast<size_t>(num_slots[static_cast<size_t>(i)]) * kv_dim;
            std::copy_n(pool.begin() +
                            static_cast<ptrdiff_t>(src[static_cast<size_t>(i)] * block_elems + off),
                        len,
                        want.begin() + static_cast<ptrdiff_t>(
                                           dst[static_cast<size_t>(i)] * block_elems + off));
          }
        }

        DeviceBuffer<uint16_t> d_pool(pool);
        DeviceBuffer<int32_t> d_src(src), d_dst(dst), d_ns(num_slots);
        cuda::copy_block_prefixes(bf(d_pool), d_src.get(), d_dst.get(), d_ns.get(), n, num_layers,
                                  bs, kv_dim, stream.get());
        stream.sync();
        const long long bad = first_mismatch(d_pool.download(), want);
        std::printf("[copy_block_prefixes] %s: mismatch=%lld\n", what.c_str(), bad);
        EXPECT_EQ(bad, -1);
      }
    }
  }
}

// ---- CUDA graph capture ----------------------------------------------------

// Every op of this file captured into one CUDA graph (which fails on any
// allocation, synchronisation or memcpy inside an op) and replayed: the
// results equal an eager run bit for bit (also a determinism check).
TEST(CudaOps, GraphCaptureMatchesEager) {
  CS_REQUIRE_GPU();
  const ModelDims& m = kSmolLM2;
  const int n = 7, bs = 16, vocab = 500, T = 21;
  const int H = m.n_heads, KV = m.n_kv_heads, hd = m.head_dim;
  const int width = (H + 2 * KV) * hd;
  const PoolGeom g{2, bs, KV, hd};
  const int num_blocks = 6;
  const uint64_t seed = 8000;

  // Inputs (host).
  const auto table = randn_bf16(static_cast<size_t>(vocab) * m.hidden, seed);
  const auto ids = randint(n, seed + 1, 0, vocab - 1);
  const auto delta = randn_bf16(static_cast<size_t>(n) * m.hidden, seed + 2);
  const auto w = randn_bf16(static_cast<size_t>(m.hidden), seed + 3, 0.2f, 1.f);
  const auto qkv = randn_bf16(static_cast<size_t>(n) * width, seed + 4);
  const auto bias = randn_bf16(static_cast<size_t>(width), seed + 5);
  const auto positions = randint(n, seed + 6, 0, 100000);
  const std::vector<int32_t> slots = {5, 17, -1, 40, 41, 2, 80};
  const auto inv = inv_freq_table(hd, m.rope_theta);
  const auto gate_up = randn_bf16(static_cast<size_t>(n) * 2 * m.ff, seed + 7, 3.f);
  const std::vector<int32_t> rows = {6, 0, 3};
  const auto kfile = randn_bf16(static_cast<size_t>(KV) * T * hd, seed + 8);
  const std::vector<int32_t> blocks = {4, 1};  // T = 21 tokens: 1.3 blocks of 16
  const std::vector<int32_t> cp_src = {1}, cp_dst = {3}, cp_slots = {5};

  struct Run {
    DeviceBuffer<uint16_t> table, delta, w, norm_out, qkv, bias, pool, gate_up, mlp_out, kfile,
        kout;
    DeviceBuffer<int32_t> ids, positions, slots, rows, blocks, cp_src, cp_dst, cp_slots;
    DeviceBuffer<float> x, inv, gathered;
  };
  auto make_run = [&] {
    return std::unique_ptr<Run>(
        new Run{DeviceBuffer<uint16_t>(table),
                DeviceBuffer<uint16_t>(delta),
                DeviceBuffer<uint16_t>(w),
                DeviceBuffer<uint16_t>(static_cast<size_t>(n) * m.hidden),
                DeviceBuffer<uint16_t>(qkv),
                DeviceBuffer<uint16_t>(bias),
                DeviceBuffer<uint16_t>(static_cast<size_t>(num_blocks * g.block_stride())),
                DeviceBuffer<uint16_t>(gate_up),
                DeviceBuffer<uint16_t>(static_cast<size_t>(n) * m.ff),
                DeviceBuffer<uint16_t>(kfile),
                DeviceBuffer<uint16_t>(kfile.size()),
                DeviceBuffer<int32_t>(ids),
                DeviceBuffer<int32_t>(positions),
                DeviceBuffer<int32_t>(slots),
                DeviceBuffer<int32_t>(rows),
                DeviceBuffer<int32_t>(blocks),
                DeviceBuffer<int32_t>(cp_src),
                DeviceBuffer<int32_t>(cp_dst),
                DeviceBuffer<int32_t>(cp_slots),
                DeviceBuffer<float>(static_cast<size_t>(n) * m.hidden),
                DeviceBuffer<float>(inv),
                DeviceBuffer<float>(rows.size() * static_cast<size_t>(m.hidden))});
  };
  auto prepare = [](Run& r) {
    r.norm_out.poison();
    r.pool.poison();
    r.mlp_out.poison();
    r.kout.poison();
    r.x.poison();
    r.gathered.poison();
  };
  auto launch_all = [&](Run& r, cudaStream_t s) {
    const cuda::KvLayer view = g.layer_view(r.pool, 1);
    cuda::embedding(bf(r.table), r.ids.get(), r.x.get(), n, m.hidden, s);
    cuda::add_rms_norm(r.x.get(), bf(r.delta), bf(r.w), bf(r.norm_out), n, m.hidden, 1e-5f, s);
    cuda::rope_qkv_write(bf(r.qkv), bf(r.bias), r.positions.get(), r.inv.get(), r.slots.get(), view,
                         n, H, s);
    cuda::silu_mul(bf(r.gate_up), bf(r.mlp_out), n, m.ff, s);
    cuda::gather_rows(r.x.get(), r.rows.get(), r.gathered.get(), static_cast<int>(rows.size()),
                      m.hidden, s);
    cuda::kv_import(r.kfile.get(), cuda::KvElem::kBF16, T, 0, T, r.blocks.get(), view.k, view, s);
    cuda::copy_block_prefixes(bf(r.pool), r.cp_src.get(), r.cp_dst.get(), r.cp_slots.get(), 1,
                              g.num_layers, bs, static_cast<int>(g.kv_dim()), s);
    cuda::kv_export(view.k, view, r.blocks.get(), T, 0, T, r.kout.get(), cuda::KvElem::kBF16, s);
  };

  Stream stream;
  auto eager = make_run();
  prepare(*eager);
  launch_all(*eager, stream.get());
  stream.sync();

  auto graphed = make_run();
  prepare(*graphed);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CS_CUDA_OK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeGlobal));
  launch_all(*graphed, stream.get());
  CS_CUDA_OK(cudaStreamEndCapture(stream.get(), &graph));
  CS_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CS_CUDA_OK(cudaGraphLaunch(exec, stream.get()));
  stream.sync();
  CS_CUDA_OK(cudaGraphExecDestroy(exec));
  CS_CUDA_OK(cudaGraphDestroy(graph));

  EXPECT_EQ(first_mismatch(graphed->x.download(), eager->x.download()), -1) << "x";
  EXPECT_EQ(first_mismatch(graphed->norm_out.download(), eager->norm_out.download()), -1);
  EXPECT_EQ(first_mismatch(graphed->qkv.download(), eager->qkv.download()), -1) << "qkv";
  EXPECT_EQ(first_mismatch(graphed->pool.download(), eager->pool.download()), -1) << "pool";
  EXPECT_EQ(first_mismatch(graphed->mlp_out.download(), eager->mlp_out.download()), -1);
  EXPECT_EQ(first_mismatch(graphed->gathered.download(), eager->gathered.download()), -1);
  const auto kout = graphed->kout.download();
  EXPECT_EQ(first_mismatch(kout, eager->kout.download()), -1) << "kout";
  EXPECT_EQ(first_mismatch(kout, kfile), -1) << "bf16 import/export round trip";
  std::printf("[graph] captured 8 ops, replay equals eager\n");
}

}  // namespace
}  // namespace cartserve
