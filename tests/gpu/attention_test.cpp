// The CUDA paged attention kernels (kernels/cuda/attention_prefill.cu,
// attention_decode.cu, attention_cascade.cu) against their fp32 CPU twin,
// ops::cpu::paged_attention.
//
// Each case builds fresh random data: q, K and V ~ N(0, 1) rounded to bf16;
// the GPU gets the bf16 bits, the CPU twin the same bf16 values as fp32.
// The GPU pool is block-major with two layers (the kernels read layer 1);
// every slot no sequence owns (layer 0, block 0 = the target of the block
// tables' padding entries, spare blocks, the tails of partial last blocks)
// holds NaN bits, as do the k/v parts of the fused q rows, so a read of
// anything outside the contract turns the output into NaN. Block ids are
// shuffled; a "cartridge prefix" case has sequences whose tables start
// with the same blocks. The output buffer is poisoned (0xFFFF, a bf16 NaN)
// before each launch, with a guard region after it that must stay poisoned.
//
// Tolerance: relative L2 error ||out - ref|| / ||ref|| < 1e-2. The kernels
// accumulate in fp32 and round the output to bf16 (relative error up to
// 2^-9 per element, ~2e-3 in L2); the tensor-core path also rounds the
// softmax probabilities to bf16 before P V, which adds an error of the same
// order. A layout or masking bug gives errors of order 1.
//
// Without a usable CUDA device every test skips itself.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/cascade_split.h"
#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/ops.h"
#include "runtime/cascade_plan.h"

namespace cartserve::ops::cuda {
namespace {

// ---- helpers ---------------------------------------------------------------

// A CUDA error is thrown; gtest reports it as a failure of the test.
void cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}
#define ATTN_CUDA_OK(expr) cuda_ok((expr), #expr)

bool gpu_usable() {
  static const bool ok = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return ok;
}

// Every test of the fixture skips cleanly without a GPU (CI).
class PagedAttentionGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_usable()) GTEST_SKIP() << "no CUDA device";
    ATTN_CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  cudaStream_t stream_ = nullptr;
};

// n elements of T in device memory.
template <typename T>
class DevBuf {
 public:
  explicit DevBuf(size_t n) : n_(n) {
    ATTN_CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&p_), std::max<size_t>(n, 1) * sizeof(T)));
  }
  ~DevBuf() { cudaFree(p_); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;

  T* get() const { return p_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& h) {
    if (h.size() != n_) throw std::runtime_error("DevBuf::upload: size mismatch");
    ATTN_CUDA_OK(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    ATTN_CUDA_OK(cudaDeviceSynchronize());
    ATTN_CUDA_OK(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  // Every byte 0xFF: NaN for bf16 and fp32.
  void poison() {
    ATTN_CUDA_OK(cudaMemset(p_, 0xFF, n_ * sizeof(T)));
    ATTN_CUDA_OK(cudaDeviceSynchronize());
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

constexpr uint16_t kNaN16 = 0xFFFFu;  // bf16 NaN bits: the poison and the "not owned" marker

// ||out - ref|| / ||ref||, max |out - ref|, and the elements never written
// (still poison) or not finite.
struct Error {
  double rel = 0.0;
  double max_abs = 0.0;
  size_t unwritten = 0;
  size_t non_finite = 0;
};

Error compare(const std::vector<uint16_t>& out, const std::vector<float>& ref) {
  Error e;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (out[i] == kNaN16) {
      ++e.unwritten;
      continue;
    }
    const double v = bf16_to_f32(out[i]);
    if (!std::isfinite(v)) {
      ++e.non_finite;
      continue;
    }
    const double d = v - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
    e.max_abs = std::max(e.max_abs, std::fabs(d));
  }
  e.rel = std::sqrt(num / std::max(den, 1e-30));
  return e;
}

// ---- problems --------------------------------------------------------------

struct SeqSpec {
  int q_len;
  int ctx;  // KV positions, the queries' own included (>= q_len)
};

struct Case {
  std::string name;
  int head_dim;
  int n_heads;
  int n_kv_heads;
  int block_size;
  std::vector<SeqSpec> seqs;
  int shared_prefix_blocks = 0;  // seqs[1..shared_seqs)' tables start with seqs[0]'s first blocks
  int q_offset = 0;              // elements q is shifted by (1: unaligned, the fallback path)
  int shared_seqs = 2;
};

constexpr int kNumLayers = 2;
constexpr int kLayer = 1;        // the layer the kernels read
constexpr int kSpareBlocks = 3;  // unowned blocks (NaN) besides block 0
constexpr size_t kGuard = 256;   // poisoned elements after the output

struct Problem {
  Case c;
  int num_tokens = 0;
  int max_blocks = 0;
  int num_blocks = 0;
  int kv_dim = 0;
  int64_t q_row_stride = 0;
  float scale = 0.f;
  std::vector<int32_t> query_start, context_lens, block_table;
  std::vector<float> ref;  // [num_tokens, n_heads * head_dim]
  std::unique_ptr<DevBuf<uint16_t>> d_q, d_pool;
  std::unique_ptr<DevBuf<int32_t>> d_query_start, d_context_lens, d_block_table;
  KvLayer kv;
  AttnBatch batch;

  const bf16* q() const { return reinterpret_cast<const bf16*>(d_q->get()) + c.q_offset; }
  size_t out_elems() const { return static_cast<size_t>(num_tokens) * c.n_heads * c.head_dim; }
};

// compute_ref = false skips the CPU twin (throughput tests).
std::unique_ptr<Problem> make_problem(const Case& c, uint32_t seed, bool compute_ref = true) {
  auto p = std::make_unique<Problem>();
  p->c = c;
  const int D = c.head_dim;
  const int bs = c.block_size;
  const int n_seqs = static_cast<int>(c.seqs.size());
  p->kv_dim = c.n_kv_heads * D;
  p->scale = 1.f / std::sqrt(static_cast<float>(D));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal_dist(0.f, 1.f);
  uint64_t lcg = seed;
  // N(0, 1) samples; for throughput runs (no reference) a cheap uniform in [-2, 2).
  auto normal = [&](std::mt19937& r) {
    if (compute_ref) return normal_dist(r);
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(lcg >> 40) * (4.f / 16777216.f) - 2.f;
  };

  // Block tables: shuffled ids 1.., block 0 reserved (the padding entries' target).
  std::vector<int> n_blocks(n_seqs);
  int distinct = 0, max_nb = 0;
  for (int s = 0; s < n_seqs; ++s) {
    const SeqSpec& q = c.seqs[s];
    if (q.q_len < 1 || q.ctx < q.q_len) throw std::runtime_error("bad case: ctx < q_len");
    n_blocks[s] = (q.ctx + bs - 1) / bs;
    distinct += n_blocks[s];
    max_nb = std::max(max_nb, n_blocks[s]);
  }
  const int shared = c.shared_prefix_blocks;
  if (shared > 0) {
    // A cartridge prefix: full blocks before the sharing sequences' queries.
    if (c.shared_seqs < 2 || c.shared_seqs > n_seqs)
      throw std::runtime_error("bad case: shared prefix");
    for (int s = 0; s < c.shared_seqs; ++s) {
      if (shared * bs > c.seqs[s].ctx - c.seqs[s].q_len)
        throw std::runtime_error("bad case: shared prefix");
    }
    distinct -= shared * (c.shared_seqs - 1);
  }
  p->num_blocks = 1 + distinct + kSpareBlocks;
  p->max_blocks = max_nb + 2;  // at least two padding entries per row
  std::vector<int32_t> ids(p->num_blocks - 1);
  std::iota(ids.begin(), ids.end(), 1);
  std::shuffle(ids.begin(), ids.end(), rng);
  p->block_table.assign(static_cast<size_t>(n_seqs) * p->max_blocks, 0);
  size_t next_id = 0;
  for (int s = 0; s < n_seqs; ++s) {
    for (int b = 0; b < n_blocks[s]; ++b) {
      int32_t id;
      if (s >= 1 && s < c.shared_seqs && b < shared) {
        id = p->block_table[b];  // seqs[0]'s block b
      } else {
        id = ids[next_id++];
      }
      p->block_table[static_cast<size_t>(s) * p->max_blocks + b] = id;
    }
  }

  p->query_start.assign(n_seqs + 1, 0);
  p->context_lens.resize(n_seqs);
  int max_q = 0, max_ctx = 0;
  for (int s = 0; s < n_seqs; ++s) {
    p->query_start[s + 1] = p->query_start[s] + c.seqs[s].q_len;
    p->context_lens[s] = c.seqs[s].ctx;
    max_q = std::max(max_q, c.seqs[s].q_len);
    max_ctx = std::max(max_ctx, c.seqs[s].ctx);
  }
  p->num_tokens = p->query_start[n_seqs];

  // KV: random bf16 at the owned slots of layer kLayer, NaN everywhere else.
  // pool [num_blocks][kNumLayers][2][bs][kv_dim]; CPU caches [num_blocks * bs, kv_dim].
  const size_t kv_dim = static_cast<size_t>(p->kv_dim);
  const size_t block_stride = static_cast<size_t>(kNumLayers) * 2 * bs * kv_dim;
  const size_t n_slots = static_cast<size_t>(p->num_blocks) * bs;
  std::vector<uint16_t> pool(static_cast<size_t>(p->num_blocks) * block_stride, kNaN16);
  std::vector<float> k_cpu(n_slots * kv_dim, std::nanf("")), v_cpu(n_slots * kv_dim, std::nanf(""));
  std::vector<char> owned(n_slots, 0);
  for (int s = 0; s < n_seqs; ++s) {
    for (int pos = 0; pos < c.seqs[s].ctx; ++pos) {
      const int32_t b = p->block_table[static_cast<size_t>(s) * p->max_blocks + pos / bs];
      owned[static_cast<size_t>(b) * bs + pos % bs] = 1;
    }
  }
  for (size_t slot = 0; slot < n_slots; ++slot) {
    if (!owned[slot]) continue;
    const size_t b = slot / bs, o = slot % bs;
    uint16_t* k =
        pool.data() + b * block_stride + static_cast<size_t>(kLayer) * 2 * bs * kv_dim + o * kv_dim;
    uint16_t* v = k + static_cast<size_t>(bs) * kv_dim;
    for (size_t i = 0; i < kv_dim; ++i) {
      k[i] = f32_to_bf16(normal(rng));
      v[i] = f32_to_bf16(normal(rng));
      k_cpu[slot * kv_dim + i] = bf16_to_f32(k[i]);
      v_cpu[slot * kv_dim + i] = bf16_to_f32(v[i]);
    }
  }

  // q as the q part of fused qkv rows (the k and v parts NaN).
  p->q_row_stride = static_cast<int64_t>(c.n_heads + 2 * c.n_kv_heads) * D;
  const size_t q_cols = static_cast<size_t>(c.n_heads) * D;
  std::vector<uint16_t> q_host(static_cast<size_t>(p->num_tokens) * p->q_row_stride + c.q_offset,
                               kNaN16);
  std::vector<float> q_cpu(static_cast<size_t>(p->num_tokens) * q_cols);
  for (int t = 0; t < p->num_tokens; ++t) {
    for (size_t i = 0; i < q_cols; ++i) {
      const uint16_t h = f32_to_bf16(normal(rng));
      q_host[c.q_offset + static_cast<size_t>(t) * p->q_row_stride + i] = h;
      q_cpu[static_cast<size_t>(t) * q_cols + i] = bf16_to_f32(h);
    }
  }

  // The CPU twin.
  std::vector<AttnSeq> seqs(n_seqs);
  for (int s = 0; s < n_seqs; ++s) {
    seqs[s].q_start = p->query_start[s];
    seqs[s].q_len = c.seqs[s].q_len;
    seqs[s].kv_len = c.seqs[s].ctx;
    seqs[s].block_table = p->block_table.data() + static_cast<size_t>(s) * p->max_blocks;
    seqs[s].n_blocks = n_blocks[s];
  }
  p->ref.assign(p->out_elems(), 0.f);
  if (compute_ref)
    cpu::paged_attention(q_cpu.data(), k_cpu.data(), v_cpu.data(), seqs.data(), n_seqs,
                         p->ref.data(), c.n_heads, c.n_kv_heads, D, bs, p->scale);

  // Device copies.
  p->d_q = std::make_unique<DevBuf<uint16_t>>(q_host.size());
  p->d_q->upload(q_host);
  p->d_pool = std::make_unique<DevBuf<uint16_t>>(pool.size());
  p->d_pool->upload(pool);
  p->d_query_start = std::make_unique<DevBuf<int32_t>>(p->query_start.size());
  p->d_query_start->upload(p->query_start);
  p->d_context_lens = std::make_unique<DevBuf<int32_t>>(p->context_lens.size());
  p->d_context_lens->upload(p->context_lens);
  p->d_block_table = std::make_unique<DevBuf<int32_t>>(p->block_table.size());
  p->d_block_table->upload(p->block_table);

  bf16* base = reinterpret_cast<bf16*>(p->d_pool->get());
  p->kv.k = base + static_cast<size_t>(kLayer) * 2 * bs * kv_dim;
  p->kv.v = p->kv.k + static_cast<size_t>(bs) * kv_dim;
  p->kv.block_stride = static_cast<int64_t>(block_stride);
  p->kv.block_size = bs;
  p->kv.num_kv_heads = c.n_kv_heads;
  p->kv.head_dim = D;

  p->batch.query_start = p->d_query_start->get();
  p->batch.context_lens = p->d_context_lens->get();
  p->batch.block_table = p->d_block_table->get();
  p->batch.num_seqs = n_seqs;
  p->batch.max_blocks = p->max_blocks;
  p->batch.num_tokens = p->num_tokens;
  p->batch.max_query_len = max_q;
  p->batch.max_context_len = max_ctx;
  ATTN_CUDA_OK(cudaDeviceSynchronize());
  return p;
}

// ---- running ---------------------------------------------------------------

// kDecodeFused: the decode op with merge counters (the merge in the split
// kernel's last CTA).
enum class Impl { kPrefill, kPrefillSimple, kDecode, kDecodeFused };

const char* impl_name(Impl i) {
  switch (i) {
    case Impl::kPrefill:
      return "prefill";
    case Impl::kPrefillSimple:
      return "prefill_simple";
    case Impl::kDecode:
      return "decode";
    case Impl::kDecodeFused:
      return "decode_fused";
  }
  return "?";
}

constexpr int kMaxSplits = 64;

// The fused merge's counters, shared by every run of the test binary (zeroed
// once): a run that left one non-zero would make a later run skip its merge,
// whose output then stays poison (NaN), which check() reports.
unsigned* merge_counters() {
  static DevBuf<unsigned>* c = [] {
    auto* b = new DevBuf<unsigned>(decode_merge_counters(4096, 128));
    ATTN_CUDA_OK(cudaMemset(b->get(), 0, b->size() * sizeof(unsigned)));
    return b;
  }();
  return c->get();
}

// Enqueues one attention op on `st` writing `out` (num_splits <= 1: the
// unsplit prefill kernel).
void launch(const Problem& p, Impl impl, int num_splits, bf16* out, void* workspace,
            cudaStream_t st, PrefillTile tile = {}) {
  switch (impl) {
    case Impl::kPrefill:
      paged_attention_prefill(p.q(), p.q_row_stride, p.kv, p.batch, out, p.c.n_heads, p.scale,
                              std::max(num_splits, 1), workspace, st, nullptr, tile);
      break;
    case Impl::kPrefillSimple:
      paged_attention_prefill_simple(p.q(), p.q_row_stride, p.kv, p.batch, out, p.c.n_heads,
                                     p.scale, st);
      break;
    case Impl::kDecode:
    case Impl::kDecodeFused:
      paged_attention_decode(p.q(), p.q_row_stride, p.kv, p.batch, out, p.c.n_heads, p.scale,
                             num_splits, workspace, st, nullptr,
                             impl == Impl::kDecodeFused ? merge_counters() : nullptr);
      break;
  }
}

// The first n bf16 of `out` (n + kGuard elements), after checking that the
// guard after them is still poison.
std::vector<uint16_t> output_bits(const DevBuf<uint16_t>& out, size_t n) {
  std::vector<uint16_t> h = out.download();
  size_t guard_hit = 0;
  for (size_t i = n; i < n + kGuard; ++i)
    guard_hit += h[i] != kNaN16 ? 1 : 0;
  EXPECT_EQ(guard_hit, 0u) << "written past the output";
  h.resize(n);
  return h;
}

// Runs one op on a poisoned output (and workspace); returns the output's
// bf16 bits, after checking the guard after it is untouched.
std::vector<uint16_t> run(const Problem& p, Impl impl, int num_splits, cudaStream_t st,
                          PrefillTile tile = {}) {
  const size_t n = p.out_elems();
  DevBuf<uint16_t> out(n + kGuard);
  out.poison();
  DevBuf<uint8_t> ws(
      decode_workspace_bytes(p.batch.num_tokens, p.c.n_heads, p.c.head_dim, kMaxSplits));
  ws.poison();  // a merge reading a split that was not written gets NaN
  launch(p, impl, num_splits, reinterpret_cast<bf16*>(out.get()), ws.get(), st, tile);
  ATTN_CUDA_OK(cudaGetLastError());
  ATTN_CUDA_OK(cudaStreamSynchronize(st));
  return output_bits(out, n);
}

int device_sms() {
  int dev = 0, sms = 0;
  ATTN_CUDA_OK(cudaGetDevice(&dev));
  ATTN_CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

// Runs and checks one (problem, implementation, split count); returns the bits.
std::vector<uint16_t> check(const Problem& p, Impl impl, int num_splits, cudaStream_t st,
                            PrefillTile tile = {}) {
  const std::string tile_name =
      tile.rows == 0 ? ""
                     : " tile=" + std::to_string(tile.rows) + "x" + std::to_string(tile.bn) +
                           (tile.warp_rows == 32 ? "/32" : "") + (tile.wgmma ? "/wgmma" : "");
  SCOPED_TRACE(p.c.name + " " + impl_name(impl) + " splits=" + std::to_string(num_splits) +
               tile_name);
  const std::vector<uint16_t> out = run(p, impl, num_splits, st, tile);
  const Error e = compare(out, p.ref);
  std::printf("[ attn     ] %-34s %-15s splits=%-3d rel=%.3e max_abs=%.3e%s\n", p.c.name.c_str(),
              impl_name(impl), impl == Impl::kPrefillSimple ? 0 : num_splits, e.rel, e.max_abs,
              tile_name.c_str());
  std::fflush(stdout);
  EXPECT_EQ(e.unwritten, 0u) << "output elements never written";
  EXPECT_EQ(e.non_finite, 0u) << "non-finite outputs (a read outside the owned KV/q?)";
  EXPECT_LT(e.rel, 1e-2);  // bf16 output rounding dominates (see the top comment)
  return out;
}

// The prefill kernel unsplit, split (a few counts and the automatic one, which
// is what the backend uses) and the CUDA-core kernel.
void check_prefill_paths(const Case& c, uint32_t seed, cudaStream_t st) {
  const auto p = make_problem(c, seed);
  const int auto_splits =
      prefill_num_splits(p->batch.num_tokens, p->batch.num_seqs, c.n_heads, c.n_kv_heads,
                         p->batch.max_context_len, kMaxSplits, device_sms(), c.head_dim);
  for (int splits : {1, 2, 5, 16, auto_splits})
    check(*p, Impl::kPrefill, splits, st);
  check(*p, Impl::kPrefillSimple, 0, st);
  // Every CTA shape; 64 and 128 rows per CTA, 16 or 32 rows per warp, give
  // the same bits at the same keys per tile.
  std::vector<PrefillTile> tiles = {{64, 64}, {128, 64}, {128, 64, 32}};
  if (c.head_dim == 128) {
    tiles.insert(tiles.begin(),
                 {PrefillTile{64, 32}, PrefillTile{128, 32}, PrefillTile{128, 32, 32}});
  }
  for (int splits : {1, auto_splits}) {
    std::vector<uint16_t> at64;
    for (const PrefillTile t : tiles) {
      const std::vector<uint16_t> bits = check(*p, Impl::kPrefill, splits, st, t);
      if (t.rows == 64) at64 = bits;
      if (t.rows == 128) {
        EXPECT_EQ(bits, at64) << "rows per CTA changed the bits";
      }
    }
  }
  // The wgmma kernel (Hopper; head_dim 128): against the reference at every
  // split count, and the same bits run twice.
  if (c.head_dim == 128) {
    const PrefillTile wg{128, 64, 16, true};
    for (int splits : {1, 2, 5, 16, auto_splits}) {
      const std::vector<uint16_t> bits = check(*p, Impl::kPrefill, splits, st, wg);
      EXPECT_EQ(run(*p, Impl::kPrefill, splits, st, wg), bits) << "wgmma: not deterministic";
    }
  }
}

std::vector<SeqSpec> decode_seqs(const std::vector<int>& ctxs) {
  std::vector<SeqSpec> v;
  for (int ctx : ctxs)
    v.push_back({1, ctx});
  return v;
}

// Shared-prefix decode: cascade_prefix_attention over `plan`'s items (on
// grid_ctas CTAs per KV head), then paged_attention_decode over the rest of
// each sequence's keys, merging. Poisoned output and workspaces, as run().
std::vector<uint16_t> run_cascade(const Problem& p, const CascadePlan& plan, int num_splits,
                                  int grid_ctas, cudaStream_t st, bool fused = false) {
  const size_t n = p.out_elems();
  DevBuf<uint16_t> out(n + kGuard);
  out.poison();
  DevBuf<uint8_t> ws(
      decode_workspace_bytes(p.batch.num_tokens, p.c.n_heads, p.c.head_dim, kMaxSplits));
  ws.poison();
  DevBuf<uint8_t> cws(cascade_workspace_bytes(p.batch.num_seqs, p.c.n_heads, p.c.head_dim));
  cws.poison();  // a merge reading a prefix partial that was not written gets NaN
  std::vector<int32_t> count = {plan.num_items(), 0, 0, 0};
  DevBuf<int32_t> d_count(4), d_items(std::max<size_t>(plan.items.size(), 4)),
      d_members(std::max<size_t>(plan.members.size(), 1)), d_prefix(plan.prefix_len.size());
  d_count.upload(count);
  std::vector<int32_t> items = plan.items, members = plan.members;
  items.resize(d_items.size(), 0);
  members.resize(d_members.size(), 0);
  d_items.upload(items);
  d_members.upload(members);
  d_prefix.upload(plan.prefix_len);
  const CascadeWork work{d_count.get(), d_items.get(), d_members.get()};
  const PrefixPartials parts{d_prefix.get(), cws.get()};
  cascade_prefix_attention(p.q(), p.q_row_stride, p.kv, p.batch, work, grid_ctas, p.c.n_heads,
                           p.scale, parts, st);
  paged_attention_decode(p.q(), p.q_row_stride, p.kv, p.batch, reinterpret_cast<bf16*>(out.get()),
                         p.c.n_heads, p.scale, num_splits, ws.get(), st, &parts,
                         fused ? merge_counters() : nullptr);
  ATTN_CUDA_OK(cudaGetLastError());
  ATTN_CUDA_OK(cudaStreamSynchronize(st));
  return output_bits(out, n);
}

// ---- tests -----------------------------------------------------------------

TEST_F(PagedAttentionGpu, PrefillRaggedBatches) {
  // name, head_dim, n_heads, n_kv_heads, block_size, {q_len, ctx}...
  const std::vector<Case> cases = {
      {"g1_d128_bs16", 128, 8, 8, 16, {{37, 37}, {64, 100}, {1, 50}, {130, 300}, {5, 5}, {17, 33}}},
      {"g4_d128_bs32", 128, 16, 4, 32, {{100, 100}, {1, 1}, {33, 97}, {64, 64}, {250, 1000}}},
      {"g3_d64_bs8", 64, 12, 4, 8, {{21, 21}, {22, 40}, {1, 7}, {63, 200}, {300, 300}}},
      {"g8_d64_bs16", 64, 16, 2, 16, {{9, 9}, {8, 200}, {100, 130}, {1, 1000}}},
      {"g8_d128_bs8", 128, 32, 4, 8, {{7, 7}, {16, 16}, {17, 300}, {1, 3}}},
      {"g1_d64_bs32", 64, 4, 4, 32, {{65, 65}, {128, 129}, {2, 2}}},
      {"g16_d128_bs16", 128, 32, 2, 16, {{5, 5}, {40, 80}}},
      {"g4_d128_bs16_long", 128, 16, 4, 16, {{512, 1500}, {300, 300}, {1, 2000}}},
      // q shifted by one element: not 16-byte aligned, the CUDA-core fallback.
      {"g4_d64_bs16_unaligned_q", 64, 8, 2, 16, {{30, 40}, {1, 9}}, 0, 1},
  };
  uint32_t seed = 1000;
  for (const Case& c : cases)
    check_prefill_paths(c, seed++, stream_);
}

TEST_F(PagedAttentionGpu, PrefillSharedCartridgePrefix) {
  const std::vector<Case> cases = {
      // 10 blocks (160 positions) shared by seqs 0 and 1, before both of their queries.
      {"prefix_g4_d128_bs16", 128, 16, 4, 16, {{40, 200}, {70, 230}, {1, 161}}, 10},
      {"prefix_g3_d64_bs32", 64, 12, 4, 32, {{1, 129}, {1, 300}, {64, 64}}, 4},
      {"prefix_g8_d128_bs8", 128, 8, 1, 8, {{30, 94}, {5, 69}}, 8},
      // The TTFT shape of the 3B benchmark: a 64-token question after a
      // 2048-position prefix (split-KV prefill), then two questions sharing it.
      {"ttft_g3_d128_bs16", 128, 24, 8, 16, {{64, 2112}}},
      {"prefix_ttft2_g3_d128_bs16", 128, 24, 8, 16, {{64, 2112}, {17, 2065}}, 128},
  };
  uint32_t seed = 2000;
  for (const Case& c : cases)
    check_prefill_paths(c, seed++, stream_);
}

TEST_F(PagedAttentionGpu, DecodeSplits) {
  const std::vector<Case> cases = {
      {"dec_g4_d128_bs16", 128, 32, 8, 16, decode_seqs({1, 17, 300, 3000, 1024, 63, 64, 65})},
      {"dec_g8_d64_bs32", 64, 16, 2, 32, decode_seqs({3000, 1, 777, 2048})},
      {"dec_g1_d128_bs8", 128, 8, 8, 8, decode_seqs({129, 3000, 5})},
      {"dec_g3_d64_bs16", 64, 12, 4, 16, decode_seqs({500, 1, 3001})},
      {"dec_g8_d128_bs16", 128, 64, 8, 16, decode_seqs({3000, 2500, 100})},
      {"dec_g16_d128_bs32", 128, 32, 2, 32, decode_seqs({1000, 3})},
      // 100 blocks (1600 positions) shared by seqs 0 and 1.
      {"dec_prefix_g4_d128_bs16", 128, 16, 4, 16, decode_seqs({1700, 1800, 2}), 100},
      {"dec_g4_d64_bs16_unaligned_q", 64, 8, 2, 16, decode_seqs({300, 2}), 0, 1},
  };
  const int sms = device_sms();
  uint32_t seed = 3000;
  for (const Case& c : cases) {
    const auto p = make_problem(c, seed++);
    const int auto_splits = decode_num_splits(p->batch.num_seqs, c.n_kv_heads,
                                              p->batch.max_context_len, kMaxSplits, sms);
    for (int splits : {1, 2, 3, 7, 16, auto_splits}) {
      const std::vector<uint16_t> two_kernels = check(*p, Impl::kDecode, splits, stream_);
      // The merge in the last split's CTA: the same bits, run after run.
      for (int rep = 0; rep < 2; ++rep)
        EXPECT_TRUE(check(*p, Impl::kDecodeFused, splits, stream_) == two_kernels)
            << "fused merge, splits=" << splits;
    }
    // A decode batch is also a valid prefill batch.
    check(*p, Impl::kPrefill, 0, stream_);
    check(*p, Impl::kPrefillSimple, 0, stream_);
  }
}

// Shared-prefix (cascade) decode against the CPU twin, and batch invariance:
// each sequence's output bits are the same when its tile holds only itself
// and whatever the grid.
TEST_F(PagedAttentionGpu, DecodeSharedPrefixCascade) {
  struct Shape {
    const char* name;
    int d, heads, kv_heads, bs, prefix_blocks;
  };
  const Shape shapes[] = {
      {"cascade_g3_d128_bs16", 128, 24, 8, 16, 128},  // the 3B shape, a 2048-position cartridge
      {"cascade_g3_d64_bs16", 64, 9, 3, 16, 40},      // SmolLM2, 640 positions (5 splits)
      {"cascade_g4_d128_bs32", 128, 16, 4, 32, 9},    // 288 positions (128 + 128 + 32)
      {"cascade_g1_d64_bs16", 64, 4, 4, 16, 300},     // 4800 positions (15 splits of 320)
      {"cascade_g8_d128_bs8", 128, 64, 8, 8, 70},     // 560 positions
  };
  const int sms = device_sms();
  uint32_t seed = 3500;
  for (const Shape& sh : shapes) {
    // 30 decode rows: 0..25 share the prefix (two tiles at group 3), 26 has a
    // prefix of its own blocks (a group of one), 27..29 none.
    const int prefix = sh.prefix_blocks * sh.bs;
    std::vector<int> ctxs;
    for (int s = 0; s < 30; ++s)
      ctxs.push_back(s < 27 ? prefix + 1 + (s * 37) % 150 : 1 + s * 41);
    Case c{sh.name, sh.d, sh.heads, sh.kv_heads, sh.bs, decode_seqs(ctxs), sh.prefix_blocks};
    c.shared_seqs = 26;
    SCOPED_TRACE(c.name);
    const auto p = make_problem(c, seed++);
    std::vector<int32_t> shared(30, 0);
    for (int s = 0; s < 27; ++s)
      shared[static_cast<size_t>(s)] = prefix;
    const int group = sh.heads / sh.kv_heads;
    CascadePlan plan;
    plan_cascade(shared, p->query_start, p->context_lens, p->block_table, p->max_blocks, sh.bs,
                 group, 256, plan);
    ASSERT_EQ(plan.members.size(), 27u);
    const int splits = decode_num_splits(p->batch.num_seqs, sh.kv_heads, p->batch.max_context_len,
                                         kMaxSplits, sms);
    const std::vector<uint16_t> out = run_cascade(*p, plan, splits, 7, stream_);
    const Error e = compare(out, p->ref);
    std::printf("[ attn     ] %-34s %-15s splits=%-3d rel=%.3e max_abs=%.3e (%d items)\n",
                c.name.c_str(), "cascade", splits, e.rel, e.max_abs, plan.num_items());
    EXPECT_EQ(e.unwritten, 0u);
    EXPECT_EQ(e.non_finite, 0u);
    EXPECT_LT(e.rel, 1e-2);
    // Each member alone in its tile, one CTA per KV head; then a wide grid.
    CascadePlan solo = plan;
    solo.items.clear();
    for (size_t i = 0; i < plan.members.size(); ++i) {
      const int32_t P = plan.prefix_len[static_cast<size_t>(plan.members[i])];
      for (int32_t z = 0; z < cascade_num_splits(P); ++z)
        solo.items.insert(solo.items.end(), {static_cast<int32_t>(i), 1, z, P});
    }
    EXPECT_TRUE(run_cascade(*p, solo, splits, 1, stream_) == out) << "a tile's mates changed bits";
    EXPECT_TRUE(run_cascade(*p, plan, splits, 1000, stream_) == out) << "the grid changed bits";
    // The merge in the decode split kernel's last CTA: the same bits, twice.
    for (int rep = 0; rep < 2; ++rep)
      EXPECT_TRUE(run_cascade(*p, plan, splits, 7, stream_, true) == out) << "fused merge";
    // The sequences without a prefix get exactly the plain decode's bits.
    const std::vector<uint16_t> plain = run(*p, Impl::kDecode, splits, stream_);
    const size_t row = static_cast<size_t>(sh.heads) * sh.d;
    EXPECT_TRUE(std::equal(out.begin() + 27 * row, out.end(), plain.begin() + 27 * row));
  }
}

TEST_F(PagedAttentionGpu, Deterministic) {
  {
    const auto p = make_problem(
        {"det_dec_g8_d128_bs16", 128, 64, 8, 16, decode_seqs({3000, 2500, 100, 1})}, 4000);
    for (int splits : {1, 7}) {
      const std::vector<uint16_t> a = run(*p, Impl::kDecode, splits, stream_);
      const std::vector<uint16_t> b = run(*p, Impl::kDecode, splits, stream_);
      EXPECT_TRUE(a == b) << "decode, splits=" << splits << ": two runs differ";
    }
  }
  {
    const auto p = make_problem(
        {"det_prefill_g4_d128_bs32", 128, 16, 4, 32, {{100, 100}, {1, 1}, {250, 1000}}}, 4001);
    for (auto [impl, splits] : {std::pair{Impl::kPrefill, 1}, std::pair{Impl::kPrefill, 3},
                                std::pair{Impl::kPrefillSimple, 0}}) {
      const std::vector<uint16_t> a = run(*p, impl, splits, stream_);
      const std::vector<uint16_t> b = run(*p, impl, splits, stream_);
      EXPECT_TRUE(a == b) << impl_name(impl) << " splits=" << splits << ": two runs differ";
    }
  }
}

// Both ops captured into a CUDA graph (global capture mode: any unsafe call
// inside an op fails the capture) and replayed give the eager bits.
TEST_F(PagedAttentionGpu, GraphCapture) {
  const std::vector<Case> cases = {
      {"graph_g4_d128_bs16", 128, 32, 8, 16, decode_seqs({1, 300, 3000, 65})},
      // GQA 8 (8 heads per decode CTA).
      {"graph_g8_d128_bs16", 128, 64, 8, 16, decode_seqs({2000, 7, 700})},
  };
  uint32_t seed = 5000;
  for (const Case& c : cases) {
    const auto p = make_problem(c, seed++);
    for (Impl impl : {Impl::kDecode, Impl::kDecodeFused, Impl::kPrefill}) {
      SCOPED_TRACE(c.name + " " + impl_name(impl));
      const int splits = 5;
      const std::vector<uint16_t> eager = run(*p, impl, splits, stream_);
      DevBuf<uint16_t> out(p->out_elems());
      out.poison();
      DevBuf<uint8_t> ws(
          decode_workspace_bytes(p->batch.num_tokens, p->c.n_heads, p->c.head_dim, kMaxSplits));
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      ATTN_CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
      launch(*p, impl, splits, reinterpret_cast<bf16*>(out.get()), ws.get(), stream_);
      ATTN_CUDA_OK(cudaStreamEndCapture(stream_, &graph));
      ATTN_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
      for (int replay = 0; replay < 2; ++replay) {  // (the fused merge's counters reset)
        out.poison();
        ATTN_CUDA_OK(cudaGraphLaunch(exec, stream_));
        ATTN_CUDA_OK(cudaStreamSynchronize(stream_));
        EXPECT_TRUE(out.download() == eager) << "graph replay " << replay << " differs";
      }
      ATTN_CUDA_OK(cudaGraphExecDestroy(exec));
      ATTN_CUDA_OK(cudaGraphDestroy(graph));
      check(*p, impl, splits, stream_);  // and the result is right
    }
  }
}

// Throughput (opt-in: --gtest_also_run_disabled_tests). Decode: KV bytes
// read per second; prefill: causal attention FLOP/s (4 * head_dim per
// visible (query, key, head)). Prints only; no assertion on speed.
float time_ms(const Problem& p, Impl impl, int num_splits, cudaStream_t st) {
  DevBuf<uint16_t> out(p.out_elems());
  DevBuf<uint8_t> ws(
      decode_workspace_bytes(p.batch.num_tokens, p.c.n_heads, p.c.head_dim, kMaxSplits));
  cudaEvent_t a, b;
  ATTN_CUDA_OK(cudaEventCreate(&a));
  ATTN_CUDA_OK(cudaEventCreate(&b));
  auto* o = reinterpret_cast<bf16*>(out.get());
  for (int i = 0; i < 3; ++i)
    launch(p, impl, num_splits, o, ws.get(), st);
  constexpr int kIters = 20;
  ATTN_CUDA_OK(cudaEventRecord(a, st));
  for (int i = 0; i < kIters; ++i)
    launch(p, impl, num_splits, o, ws.get(), st);
  ATTN_CUDA_OK(cudaEventRecord(b, st));
  ATTN_CUDA_OK(cudaEventSynchronize(b));
  float ms = 0.f;
  ATTN_CUDA_OK(cudaEventElapsedTime(&ms, a, b));
  ATTN_CUDA_OK(cudaEventDestroy(a));
  ATTN_CUDA_OK(cudaEventDestroy(b));
  return ms / kIters;
}

TEST_F(PagedAttentionGpu, DISABLED_Throughput) {
  const int sms = device_sms();
  struct DecodeShape {
    int n_seqs, ctx, n_heads, n_kv, head_dim;
  };
  for (const DecodeShape& d :
       {DecodeShape{1, 32768, 32, 8, 128}, DecodeShape{8, 4096, 32, 8, 128},
        DecodeShape{64, 4096, 32, 8, 128}, DecodeShape{64, 4096, 64, 8, 128},
        DecodeShape{16, 4096, 32, 32, 128}, DecodeShape{64, 4096, 16, 2, 64}}) {
    const auto p = make_problem({"perf_decode", d.head_dim, d.n_heads, d.n_kv, 16,
                                 decode_seqs(std::vector<int>(d.n_seqs, d.ctx))},
                                6000, /*compute_ref=*/false);
    const int splits = decode_num_splits(d.n_seqs, d.n_kv, d.ctx, kMaxSplits, sms);
    const double bytes = 2.0 * 2.0 * d.n_seqs * static_cast<double>(d.ctx) * p->kv_dim;
    for (Impl impl : {Impl::kDecode, Impl::kPrefill}) {
      const float ms = time_ms(*p, impl, splits, stream_);
      std::printf(
          "[ perf     ] decode seqs=%-3d ctx=%-6d heads=%d/%d d=%d %-8s splits=%-3d "
          "%8.3f ms %7.1f GB/s (KV)\n",
          d.n_seqs, d.ctx, d.n_heads, d.n_kv, d.head_dim, impl_name(impl), splits, ms,
          bytes / (ms * 1e-3) / 1e9);
    }
  }
  struct PrefillShape {
    int q_len, ctx, n_heads, n_kv, head_dim;
  };
  for (const PrefillShape& f :
       {PrefillShape{4096, 4096, 32, 8, 128}, PrefillShape{2048, 6144, 32, 8, 128},
        PrefillShape{4096, 4096, 16, 16, 64}}) {
    const auto p =
        make_problem({"perf_prefill", f.head_dim, f.n_heads, f.n_kv, 16, {{f.q_len, f.ctx}}}, 6001,
                     /*compute_ref=*/false);
    double visible = 0.0;  // (query, key) pairs
    for (int j = 0; j < f.q_len; ++j)
      visible += f.ctx - f.q_len + j + 1;
    const double flops = 4.0 * f.head_dim * f.n_heads * visible;
    for (Impl impl : {Impl::kPrefill, Impl::kPrefillSimple}) {
      const float ms = time_ms(*p, impl, 0, stream_);
      std::printf(
          "[ perf     ] prefill q=%-5d ctx=%-5d heads=%d/%d d=%d %-15s %9.3f ms %7.1f "
          "TFLOP/s\n",
          f.q_len, f.ctx, f.n_heads, f.n_kv, f.head_dim, impl_name(impl), ms,
          flops / (ms * 1e-3) / 1e12);
    }
  }
  std::fflush(stdout);
}

// Host-only: the split heuristic and the workspace size (no GPU needed).
TEST(PagedAttentionDecodeHost, NumSplitsAndWorkspace) {
  // Few sequences, long context: enough splits for ~2 waves (2 CTAs per SM), capped.
  EXPECT_EQ(decode_num_splits(1, 8, 32768, 64, 132), 64);
  EXPECT_EQ(decode_num_splits(1, 8, 32768, 16, 132), 16);
  EXPECT_EQ(decode_num_splits(8, 8, 32768, 64, 132), 9);
  // Short context: each split keeps at least one 64-position chunk.
  EXPECT_EQ(decode_num_splits(1, 8, 600, 64, 132), 10);
  EXPECT_EQ(decode_num_splits(1, 8, 513, 32, 132), 9);
  EXPECT_EQ(decode_num_splits(1, 8, 1, 64, 132), 1);
  // A batch that already fills the GPU: one split.
  EXPECT_EQ(decode_num_splits(128, 8, 32768, 64, 132), 1);
  EXPECT_EQ(decode_num_splits(64, 8, 32768, 64, 132), 1);  // 512 CTAs: a wave of 264 already
  EXPECT_EQ(decode_num_splits(32, 8, 32768, 64, 132), 3);  // 256 CTAs: toward two waves
  EXPECT_EQ(decode_num_splits(4, 8, 32768, 1, 132), 1);
  EXPECT_EQ(decode_workspace_bytes(4, 32, 128, 16), size_t{4} * 32 * 16 * 130 * sizeof(float));
  // Prefill: as many splits as fit one wave (2 CTAs of the mma.sync kernel
  // per SM, one of the wgmma kernel), each keeping at least 256 keys.
  const PrefillTile mma{64, 32}, wg{128, 64, 16, true};
  EXPECT_EQ(prefill_num_splits(64, 1, 24, 8, 2112, 32, 132, 128, mma), 8);  // 8 x 32 CTAs <= 264
  EXPECT_EQ(prefill_num_splits(64, 1, 24, 8, 2112, 32, 132, 128, wg), 8);   // 8 x 16 CTAs <= 132
  EXPECT_EQ(prefill_num_splits(64, 1, 24, 8, 2112, 32, 114, 128, wg), 7);   // fewer SMs
  EXPECT_EQ(prefill_num_splits(64, 1, 24, 8, 2112, 4, 132, 128, mma), 4);   // workspace cap
  EXPECT_EQ(prefill_num_splits(64, 1, 24, 8, 300, 32, 132, 128, mma), 2);   // short context
  EXPECT_EQ(prefill_num_splits(8192, 1, 24, 8, 8192, 32, 132, 128, wg), 1);
  EXPECT_EQ(prefill_num_splits(64, 1, 24, 8, 2112, 1, 132, 128, mma), 1);
  EXPECT_EQ(prefill_num_splits(256, 1, 24, 8, 4096, 32, 132, 128, wg), 2);  // 56 CTAs: 2 fit
  // Every split of a sequence is non-empty up to n_active, and they cover ctx.
  for (int ctx : {1, 63, 64, 65, 1000, 3000}) {
    for (int splits : {1, 2, 3, 7, 16, 64}) {
      const int len = decode_split_len(ctx, splits);
      EXPECT_EQ(len % kDecodeChunk, 0);
      const int active = (ctx + len - 1) / len;
      EXPECT_LE(active, splits);
      EXPECT_GE(static_cast<long long>(active) * len, ctx);
      // Split prefill: a row whose last visible key is lim merges exactly the
      // splits that start at or before lim, and they hold all its keys.
      for (int lim : {0, 1, ctx / 2, ctx - 1}) {
        const int n = split_active(lim, len, splits);
        EXPECT_GE(n, 1);
        EXPECT_LE((n - 1) * len, lim);
        EXPECT_TRUE(n == splits || n * len > lim);
        EXPECT_GE(static_cast<long long>(n) * len, std::min(lim + 1, ctx));
      }
    }
  }
}

}  // namespace
}  // namespace cartserve::ops::cuda
