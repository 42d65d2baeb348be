#include "runtime/cuda/cuda_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/env.h"
#include "core/logging.h"
#include "core/progress.h"
#include "kernels/cascade_split.h"
#include "kernels/cuda_ops.h"
#include "kernels/persistent_timeline.h"
#include "kernels/sampling_ops.h"
#include "runtime/cuda/cuda_status.h"
#include "runtime/cuda/device_sampling.h"

namespace cartserve::cuda {

namespace ops = ::cartserve::ops::cuda;

namespace {

constexpr uint64_t kAlign = 256;
constexpr int kMaxSplits = 32;                 // split-KV decode
constexpr uint64_t kGemmWorkspace = 32 << 20;  // cuBLASLt
constexpr int kMaxEdits = 1 << 20;             // penalty / mask edits of one step
constexpr uint64_t kStageBytes = 32 << 20;     // per transfer staging buffer (x2)
constexpr uint64_t kReserve = 512ull << 20;    // CUDA context, cuBLAS, fragmentation

// Carves one allocation into aligned pieces (measure with base == nullptr).
class Arena {
 public:
  explicit Arena(uint8_t* base) : base_(base) {}
  template <typename T>
  T* take(uint64_t count) {
    T* p = reinterpret_cast<T*>(base_ ? base_ + used_ : nullptr);
    used_ += (count * sizeof(T) + kAlign - 1) / kAlign * kAlign;
    return p;
  }
  uint64_t used() const { return used_; }

 private:
  uint8_t* base_;
  uint64_t used_ = 0;
};

ops::KvElem kv_elem(DType d) {
  return d == DType::kF32   ? ops::KvElem::kF32
         : d == DType::kF16 ? ops::KvElem::kF16
                            : ops::KvElem::kBF16;
}

}  // namespace

// Persistent buffers: one device allocation for the step's activations and
// workspaces, one pinned host allocation for what crosses the bus, the KV
// pool apart.
struct CudaBackend::Buffers {
  // Limits the buffers were sized for.
  int32_t max_tokens = 0, max_seqs = 0, max_rows = 0, max_blocks = 0;
  uint64_t in_ints = 0;  // capacity of the int32 input area

  void* device = nullptr;  // everything below that is on the device
  void* host = nullptr;    // pinned
  void* kv = nullptr;      // the pool, [num_blocks][layers][2][B][kv_dim] bf16

  float* x = nullptr;          // [T, hidden] residual stream
  bf16* xn = nullptr;          // [T, hidden] normed
  bf16* qkv = nullptr;         // [T, q_dim + 2 kv_dim]
  bf16* attn = nullptr;        // [T, q_dim]
  bf16* delta = nullptr;       // [T, hidden] sublayer output
  bf16* gu = nullptr;          // [T, 2 ff]
  bf16* act = nullptr;         // [T, ff]
  float* x_rows = nullptr;     // [R, hidden] rows that get logits
  bf16* xn_rows = nullptr;     // [R, hidden]
  float* logits = nullptr;     // [R, vocab]
  void* attn_ws = nullptr;     // split-KV decode partials
  void* cascade_ws = nullptr;  // shared-prefix attention partials
  void* gemm_ws = nullptr;     // [kGemmWorkspace]
  // [max_seqs, heads], zeroed at allocation: decode attention's fused merge.
  unsigned* merge_counters = nullptr;
  // The persistent decode kernel's (CudaOptions::persistent_decode; empty
  // otherwise): per-layer weights, split partials, barrier and merge counters.
  ops::PersistentLayer* persist_layers = nullptr;  // [layers]
  void* persist_ws = nullptr;
  unsigned* persist_counters = nullptr;
  unsigned long long* persist_timeline = nullptr;  // (CudaOptions::persistent_timeline)
  void* sample_ws = nullptr;
  int32_t* d_in = nullptr;                   // [in_ints] the step's int arrays
  ops::SampleRowParams* d_params = nullptr;  // [R]
  ops::TokenEdit* d_edits = nullptr;         // [kMaxEdits]
  int32_t* d_token = nullptr;                // [R]
  float* d_logprob = nullptr;                // [R]
  int32_t* d_rank = nullptr;                 // [R]
  int32_t* d_top_ids = nullptr;              // [R, 20]
  float* d_top_lp = nullptr;                 // [R, 20]
  int32_t* d_table = nullptr;                // [max_blocks] a transfer's blocks
  void* d_stage[2] = {nullptr, nullptr};     // [kStageBytes] transfer staging

  int32_t* h_in = nullptr;
  ops::SampleRowParams* h_params = nullptr;
  ops::TokenEdit* h_edits = nullptr;
  int32_t* h_token = nullptr;
  float* h_logprob = nullptr;
  int32_t* h_rank = nullptr;
  int32_t* h_top_ids = nullptr;
  float* h_top_lp = nullptr;
  void* h_stage[2] = {nullptr, nullptr};
  cudaEvent_t staged[2] = {nullptr, nullptr};  // a staging buffer's last use is done

  ~Buffers() {
    for (cudaEvent_t e : staged) {
      if (e) cudaEventDestroy(e);
    }
    if (kv) cudaFree(kv);
    if (device) cudaFree(device);
    if (host) cudaFreeHost(host);
  }
};

Result<std::unique_ptr<CudaBackend>> CudaBackend::create(const Model& model,
                                                         const CudaOptions& opts) {
  const ModelConfig& c = model.config;
  if (c.qk_norm) {
    // NOTE: the device forward pass has no per-head q/k RMSNorm yet; running
    // without it would give wrong logits and wrong cartridge keys.
    return make_error(ErrorCode::kUnsupported,
                      "the CUDA backend does not support {} models yet (per-head q/k RMSNorm); "
                      "use --device cpu",
                      model_arch_name(c.arch));
  }
  if (c.head_dim != 64 && c.head_dim != 128) {
    return make_error(ErrorCode::kUnsupported,
                      "the CUDA backend supports head_dim 64 and 128; this model has {}",
                      c.head_dim);
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    return make_error(ErrorCode::kUnavailable, "--device cuda: no CUDA GPU is visible");
  }
  CS_CUDA(cudaSetDevice(opts.device));
  // (a tensor-parallel rank's backend gets its all-reduce after this: the
  // TP backend turns fold_norms off)
  auto weights = DeviceWeights::upload(model, opts.fold_norms && Gemm::plain_by_default());
  if (!weights.ok()) return weights.status();
  std::unique_ptr<CudaBackend> b(new CudaBackend(model, opts, std::move(weights).value()));
  cudaDeviceProp prop{};
  CS_CUDA(cudaGetDeviceProperties(&prop, opts.device));
  b->name_ = fmt::format("cuda:{} {}", opts.device, prop.name);
  b->num_sms_ = prop.multiProcessorCount;
  CS_CUDA(cudaStreamCreateWithFlags(&b->compute_, cudaStreamNonBlocking));
  CS_CUDA(cudaStreamCreateWithFlags(&b->copy_, cudaStreamNonBlocking));
  CS_CUDA(cudaStreamCreateWithFlags(&b->side_, cudaStreamNonBlocking));
  CS_CUDA(cudaEventCreateWithFlags(&b->fork_, cudaEventDisableTiming));
  CS_CUDA(cudaEventCreateWithFlags(&b->join_, cudaEventDisableTiming));
  CS_CUDA(cudaStreamCreateWithFlags(&b->prefetch_, cudaStreamNonBlocking));
  CS_CUDA(cudaEventCreateWithFlags(&b->prefetch_fork_, cudaEventDisableTiming));
  CS_CUDA(cudaEventCreateWithFlags(&b->prefetch_join_, cudaEventDisableTiming));
  if (opts.persistent_decode) {
    int coop = 0;
    CS_CUDA(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, opts.device));
    b->persistent_ctas_ = opts.persistent_ctas > 0
                              ? std::min(opts.persistent_ctas, prop.multiProcessorCount)
                              : prop.multiProcessorCount;
    const bool fits =
        ops::persistent_decode_supported(c.hidden_size, c.intermediate_size, c.num_heads,
                                         c.num_kv_heads, c.head_dim, b->persistent_ctas_);
    b->persistent_ = b->weights_.folded_norms && fits && coop != 0;
    if (!b->persistent_) {
      LOG_WARN("persistent decode is off: {}",
               !b->weights_.folded_norms ? "it needs the norm-folded forward (TP 1, cuBLASLt GEMMs)"
               : !fits ? "this model's shapes or the CTA count do not fit the kernel"
                       : "this device has no cooperative launches");
    }
  }

  KvSpec& spec = b->spec_;
  spec.dtype = DType::kBF16;
  spec.block_size = opts.block_size;
  spec.num_layers = c.num_layers;
  spec.num_kv_heads = c.num_kv_heads;
  spec.head_dim = c.head_dim;
  CS_RETURN_IF_ERROR(b->allocate(0));  // the step buffers first: the pool takes the rest
  size_t free = 0, total = 0;
  CS_CUDA(cudaMemGetInfo(&free, &total));
  uint64_t kv_bytes = 0;
  if (opts.kv_cache_tokens > 0 || opts.kv_cache_bytes > 0) {
    const KvBudget budget{opts.kv_cache_bytes, opts.kv_cache_tokens};
    kv_bytes = static_cast<uint64_t>(budget.num_blocks(spec)) * spec.bytes_per_block();
  } else {
    const double limit = opts.gpu_memory_utilization * static_cast<double>(total);
    const double used = static_cast<double>(total - free);
    const double left = limit - used - static_cast<double>(kReserve);
    if (left < 2.0 * static_cast<double>(spec.bytes_per_block())) {
      return make_error(ErrorCode::kResourceExhausted,
                        "out of GPU memory at start-up: {} of {} in use after the weights ({}) "
                        "and the step buffers, --gpu-memory-utilization {} allows {}; raise "
                        "--gpu-memory-utilization or lower --max-num-batched-tokens / "
                        "--max-num-seqs",
                        format_bytes(static_cast<uint64_t>(used)), format_bytes(total),
                        format_bytes(b->weights_.nbytes()), opts.gpu_memory_utilization,
                        format_bytes(static_cast<uint64_t>(limit)));
    }
    kv_bytes = static_cast<uint64_t>(left);
  }
  CS_RETURN_IF_ERROR(b->allocate(kv_bytes));
  // (layer 0's view: every layer has the same alignment)
  b->cascade_ok_ =
      opts.cascade_min_prefix > 0 &&
      ops::cascade_supported(b->buf_->qkv, c.q_dim() + 2 * c.kv_dim(), b->kv_layer(0), c.num_heads);
  CS_ASSIGN_OR_RETURN(b->gemm_, Gemm::create(b->buf_->gemm_ws, kGemmWorkspace));
  b->transfers_ = std::make_unique<TransferQueue>();
  LOG_INFO("CUDA backend on {}: weights {}, KV cache {} blocks x {} = {} tokens ({} bf16)",
           b->name_, format_bytes(b->weights_.nbytes()), spec.num_blocks - 1, spec.block_size,
           spec.num_tokens(), format_bytes(spec.total_bytes()));
  return b;
}

CudaBackend::CudaBackend(const Model& model, const CudaOptions& opts, DeviceWeights weights)
    : model_(model), opts_(opts), weights_(std::move(weights)) {}

CudaBackend::~CudaBackend() {
  transfers_.reset();  // finishes its jobs (they use the copy stream and staging)
  if (compute_) cudaStreamSynchronize(compute_);
  for (auto& [key, exec] : graphs_)
    cudaGraphExecDestroy(exec);
  buf_.reset();
  gemm_.reset();
  if (compute_) cudaStreamDestroy(compute_);
  if (copy_) cudaStreamDestroy(copy_);
  if (side_) cudaStreamDestroy(side_);
  if (fork_) cudaEventDestroy(fork_);
  if (join_) cudaEventDestroy(join_);
  if (prefetch_) cudaStreamDestroy(prefetch_);
  if (prefetch_fork_) cudaEventDestroy(prefetch_fork_);
  if (prefetch_join_) cudaEventDestroy(prefetch_join_);
}

Status CudaBackend::allocate(uint64_t kv_bytes) {
  const ModelConfig& c = model_.config;
  if (!buf_) {
    buf_ = std::make_unique<Buffers>();
    Buffers& b = *buf_;
    b.max_tokens = opts_.max_num_batched_tokens;
    b.max_seqs = opts_.max_num_seqs;
    b.max_rows = std::max(opts_.max_num_seqs, 64);
    b.max_blocks = (opts_.max_model_len + opts_.block_size - 1) / opts_.block_size + 1;
    const uint64_t T = static_cast<uint64_t>(b.max_tokens), S = static_cast<uint64_t>(b.max_seqs),
                   R = static_cast<uint64_t>(b.max_rows), MB = static_cast<uint64_t>(b.max_blocks);
    // + the shared-prefix work list: alignment, count, items, prefix lengths, members.
    const uint64_t cascade_ints = 3 + 4 + 4 * S * ::cartserve::ops::kMaxCascadeSplits + 2 * S;
    b.in_ints = 3 * T + (S + 1) + S + S * MB + R + 3 * S + 2 * R + cascade_ints;
    const uint64_t H = static_cast<uint64_t>(c.hidden_size), Q = static_cast<uint64_t>(c.q_dim()),
                   KVD = static_cast<uint64_t>(c.kv_dim()),
                   FF = static_cast<uint64_t>(c.intermediate_size),
                   V = static_cast<uint64_t>(c.vocab_size);
    const size_t attn_ws =
        ops::decode_workspace_bytes(b.max_seqs, c.num_heads, c.head_dim, kMaxSplits);
    const size_t merge_counters = ops::decode_merge_counters(b.max_seqs, c.num_heads);
    const bool persist = persistent_;
    const size_t sample_ws = ops::sample_workspace_bytes(b.max_rows, c.vocab_size, kMaxEdits);
    constexpr uint64_t kTop = ops::kMaxTopLogprobs;
    auto carve_device = [&](Arena& a) {
      b.x = a.take<float>(T * H);
      b.xn = a.take<bf16>(T * H);
      b.qkv = a.take<bf16>(T * (Q + 2 * KVD));
      b.attn = a.take<bf16>(T * Q);
      b.delta = a.take<bf16>(T * H);
      b.gu = a.take<bf16>(T * 2 * FF);
      b.act = a.take<bf16>(T * FF);
      b.x_rows = a.take<float>(R * H);
      b.xn_rows = a.take<bf16>(R * H);
      b.logits = a.take<float>(R * V);
      b.attn_ws = a.take<uint8_t>(attn_ws);
      b.merge_counters = a.take<unsigned>(merge_counters);
      b.persist_layers = a.take<ops::PersistentLayer>(persist ? c.num_layers : 0);
      b.persist_ws = a.take<uint8_t>(
          persist ? ops::persistent_decode_workspace_bytes(c.num_heads, c.head_dim) : 0);
      b.persist_counters =
          a.take<unsigned>(persist ? ops::persistent_decode_counters(c.num_kv_heads) : 0);
      b.persist_timeline = a.take<unsigned long long>(
          persist && opts_.persistent_timeline
              ? ::cartserve::ops::persistent_timeline_stamps(c.num_layers, persistent_ctas_)
              : 0);
      b.cascade_ws = a.take<uint8_t>(ops::cascade_workspace_bytes(
          opts_.cascade_min_prefix > 0 ? b.max_seqs : 0, c.num_heads, c.head_dim));
      b.gemm_ws = a.take<uint8_t>(kGemmWorkspace);
      b.sample_ws = a.take<uint8_t>(sample_ws);
      b.d_in = a.take<int32_t>(b.in_ints);
      b.d_params = a.take<ops::SampleRowParams>(R);
      b.d_edits = a.take<ops::TokenEdit>(kMaxEdits);
      b.d_token = a.take<int32_t>(R);
      b.d_logprob = a.take<float>(R);
      b.d_rank = a.take<int32_t>(R);
      b.d_top_ids = a.take<int32_t>(R * kTop);
      b.d_top_lp = a.take<float>(R * kTop);
      b.d_table = a.take<int32_t>(MB);
      b.d_stage[0] = a.take<uint8_t>(kStageBytes);
      b.d_stage[1] = a.take<uint8_t>(kStageBytes);
    };
    auto carve_host = [&](Arena& a) {
      b.h_in = a.take<int32_t>(b.in_ints);
      b.h_params = a.take<ops::SampleRowParams>(R);
      b.h_edits = a.take<ops::TokenEdit>(kMaxEdits);
      b.h_token = a.take<int32_t>(R);
      b.h_logprob = a.take<float>(R);
      b.h_rank = a.take<int32_t>(R);
      b.h_top_ids = a.take<int32_t>(R * kTop);
      b.h_top_lp = a.take<float>(R * kTop);
      b.h_stage[0] = a.take<uint8_t>(kStageBytes);
      b.h_stage[1] = a.take<uint8_t>(kStageBytes);
    };
    Arena md(nullptr), mh(nullptr);
    carve_device(md);
    carve_host(mh);
    Status st = cuda_status(cudaMalloc(&b.device, md.used()), "cudaMalloc (step buffers)");
    if (!st.ok()) {
      return make_error(st.code(),
                        "cannot allocate {} of GPU memory for the step buffers ({}); lower "
                        "--max-num-batched-tokens or --max-num-seqs",
                        format_bytes(md.used()), st.message());
    }
    CS_CUDA(cudaHostAlloc(&b.host, mh.used(), cudaHostAllocDefault));
    Arena ad(static_cast<uint8_t*>(b.device)), ah(static_cast<uint8_t*>(b.host));
    carve_device(ad);
    carve_host(ah);
    CS_CUDA(cudaMemset(b.merge_counters, 0, sizeof(unsigned) * merge_counters));
    if (persist) {
      std::vector<ops::PersistentLayer> layers;
      for (const DeviceLayer& w : weights_.layers)
        layers.push_back({w.wqkv, w.bqkv, w.wo, w.wgu, w.wdown});
      CS_CUDA(cudaMemcpy(b.persist_layers, layers.data(),
                         sizeof(ops::PersistentLayer) * layers.size(), cudaMemcpyHostToDevice));
    }
    CS_CUDA(cudaMemset(b.sample_ws, 0, sample_ws));  // the sampler's row counters
    for (cudaEvent_t& e : b.staged)
      CS_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return {};
  }
  const uint64_t blocks = kv_bytes / spec_.bytes_per_block();
  if (blocks < 2) {
    return make_error(ErrorCode::kResourceExhausted,
                      "the KV cache gets {} of GPU memory, less than 2 blocks of {}; raise "
                      "--gpu-memory-utilization",
                      format_bytes(kv_bytes), format_bytes(spec_.bytes_per_block()));
  }
  spec_.num_blocks = static_cast<int32_t>(std::min<uint64_t>(blocks, 1u << 30));
  Status st = cuda_status(cudaMalloc(&buf_->kv, spec_.total_bytes()), "cudaMalloc (KV cache)");
  if (!st.ok()) {
    return make_error(st.code(),
                      "cannot allocate {} of GPU memory for the KV cache ({}); lower "
                      "--gpu-memory-utilization",
                      format_bytes(spec_.total_bytes()), st.message());
  }
  // The null block is read by padding rows of decode graphs: finite zeros.
  CS_CUDA(cudaMemset(buf_->kv, 0, spec_.bytes_per_block()));
  return {};
}

// ---------------------------------------------------------------- steps

Status CudaBackend::forward(const StepInput& in) {
  Buffers& b = *buf_;
  const int32_t n = in.num_tokens(), seqs = in.num_seqs();
  const auto n_copies = static_cast<int32_t>(in.block_copies.size());
  if (n > b.max_tokens || seqs > b.max_seqs || in.max_blocks > b.max_blocks ||
      n_copies > b.max_seqs) {
    return make_error(ErrorCode::kInvalidArgument,
                      "step of {} tokens, {} sequences and {} blocks per sequence exceeds the CUDA "
                      "backend's buffers ({}, {}, {})",
                      n, seqs, in.max_blocks, b.max_tokens, b.max_seqs, b.max_blocks);
  }
  // A sequence's rows are decode rows unless marked as prompt (as on the CPU).
  auto is_decode = [&](int32_t seq) {
    return in.prompt_rows.empty() ? in.query_start[static_cast<size_t>(seq) + 1] -
                                            in.query_start[static_cast<size_t>(seq)] ==
                                        1
                                  : in.prompt_rows[static_cast<size_t>(seq)] == 0;
  };
  int32_t decode_rows = 0;
  for (int32_t q = 0; q < seqs; ++q)
    decode_rows += is_decode(q) ? 1 : 0;
  // Decode rows of a batch-invariant kernel run apart from the prompt rows.
  const bool split = gemm_->invariant_decode(decode_rows);
  // Decode graphs run every row as a decode row: a 1-row prompt chunk must
  // then take the eager path (cuBLASLt) as it would in any other step.
  bool graph = opts_.cuda_graphs && in.max_query_len == 1 && n_copies == 0;
  if (split && decode_rows < seqs) graph = false;
  if (graph) return forward_decode(in);
  // One upload of every int array.
  int32_t* h = b.h_in;
  size_t o = 0;
  auto put = [&](const int32_t* src, size_t count) {
    std::memcpy(h + o, src, count * sizeof(int32_t));
    const size_t at = o;
    o += count;
    return b.d_in + at;
  };
  Shape sh;
  sh.persistent = persistent_step(in);
  sh.ids = put(in.token_ids.data(), static_cast<size_t>(n));
  sh.pos = put(in.positions.data(), static_cast<size_t>(n));
  sh.slots = put(in.slot_mapping.data(), static_cast<size_t>(n));
  sh.batch.query_start = put(in.query_start.data(), in.query_start.size());
  sh.batch.context_lens = put(in.context_lens.data(), in.context_lens.size());
  sh.batch.block_table = put(in.block_table.data(), in.block_table.size());
  std::vector<int32_t> copies(3 * static_cast<size_t>(n_copies));
  for (int32_t i = 0; i < n_copies; ++i) {
    copies[static_cast<size_t>(i)] = in.block_copies[static_cast<size_t>(i)].src_block;
    copies[static_cast<size_t>(n_copies + i)] = in.block_copies[static_cast<size_t>(i)].dst_block;
    copies[static_cast<size_t>(2 * n_copies + i)] =
        in.block_copies[static_cast<size_t>(i)].num_slots;
  }
  const int32_t* d_copies = put(copies.data(), copies.size());
  if (plan_step_cascade(in)) {
    o = (o + 3) / 4 * 4;  // the items are read as int4
    o += put_cascade(h + o, b.d_in + o, seqs, cascade_plan_.num_items(), sh);
  }
  CS_CUDA(cudaMemcpyAsync(b.d_in, h, o * sizeof(int32_t), cudaMemcpyHostToDevice, compute_));
  if (n_copies > 0) {
    ops::copy_block_prefixes(static_cast<bf16*>(b.kv), d_copies, d_copies + n_copies,
                             d_copies + 2 * n_copies, n_copies, spec_.num_layers, spec_.block_size,
                             spec_.kv_dim(), compute_);
  }
  // One run of every row unless decode rows take Gemm's batch-invariant path.
  if (!split) sh.runs = {{0, n, false}};
  for (int32_t q = 0; q < seqs && split; ++q) {
    const int32_t first = in.query_start[static_cast<size_t>(q)];
    const int32_t count = in.query_start[static_cast<size_t>(q) + 1] - first;
    const bool dec = is_decode(q);
    if (!sh.runs.empty() && sh.runs.back().decode == dec) {
      sh.runs.back().count += count;
    } else {
      sh.runs.push_back({first, count, dec});
    }
  }
  sh.batch.num_seqs = seqs;
  sh.batch.max_blocks = in.max_blocks;
  sh.batch.num_tokens = n;
  sh.batch.max_query_len = in.max_query_len;
  sh.batch.max_context_len = in.max_context_len;
  sh.decode = in.max_query_len == 1;
  if (sh.decode) {
    sh.splits = ops::decode_num_splits(seqs, model_.config.num_kv_heads, in.max_context_len,
                                       kMaxSplits, num_sms_);
  } else {
    // The workspace holds max_seqs x kMaxSplits (row, head) partials.
    const int cap = static_cast<int>(
        std::min<int64_t>(kMaxSplits, int64_t{b.max_seqs} * kMaxSplits / std::max(n, 1)));
    sh.splits =
        ops::prefill_num_splits(n, seqs, model_.config.num_heads, model_.config.num_kv_heads,
                                in.max_context_len, cap, num_sms_, model_.config.head_dim);
    sh.decode_splits = ops::decode_num_splits(seqs, model_.config.num_kv_heads, in.max_context_len,
                                              kMaxSplits, num_sms_);
  }
  CS_RETURN_IF_ERROR(layers(sh));
  return last_error("the forward pass");
}

// NOTE: decode steps replay CUDA graphs. A graph is captured per (sequences,
// blocks per sequence) bucket over fixed input addresses; a step is padded up
// to its bucket with sequences of one token at position 0 whose K/V write is
// skipped (slot -1) and whose table holds only the null block, so the real
// rows compute exactly what an eager step computes. A bucket runs eagerly the
// first time (cuBLASLt picks its algorithms outside a capture) and is captured
// the second time.
Status CudaBackend::forward_decode(const StepInput& in) {
  Buffers& b = *buf_;
  const int32_t seqs = in.num_seqs();
  int32_t bs = 1;  // sequences: 1, 2, 4, 8, 16, then multiples of 16
  while (bs < seqs)
    bs = bs < 16 ? 2 * bs : bs + 16;
  bs = std::min(bs, b.max_seqs);
  int32_t bb = 8;  // blocks per sequence: powers of two
  while (bb < in.max_blocks)
    bb *= 2;
  bb = std::min(bb, b.max_blocks);
  // Fixed layout for this bucket: ids | pos | slots | query_start | context | table.
  int32_t* h = b.h_in;
  const size_t S = static_cast<size_t>(bs);
  int32_t* ids = h;
  int32_t* pos = ids + S;
  int32_t* slots = pos + S;
  int32_t* qs = slots + S;
  int32_t* ctx = qs + S + 1;
  int32_t* table = ctx + S;
  for (int32_t s = 0; s < bs; ++s) {
    const bool real = s < seqs;
    ids[s] = real ? in.token_ids[static_cast<size_t>(s)] : 0;
    pos[s] = real ? in.positions[static_cast<size_t>(s)] : 0;
    slots[s] = real ? in.slot_mapping[static_cast<size_t>(s)] : -1;
    qs[s] = s;
    ctx[s] = real ? in.context_lens[static_cast<size_t>(s)] : 1;
    int32_t* row = table + static_cast<size_t>(s) * bb;
    std::fill(row, row + bb, 0);  // the null block
    if (real) {
      std::copy_n(in.block_table.begin() + static_cast<ptrdiff_t>(s) * in.max_blocks, in.max_blocks,
                  row);
    }
  }
  qs[bs] = bs;
  size_t count = static_cast<size_t>(table - h) + S * static_cast<size_t>(bb);
  Shape sh;
  sh.persistent = persistent_step(in);
  const bool cascade = plan_step_cascade(in);
  if (cascade) {  // room for the bucket's most items: a fixed layout
    count = (count + 3) / 4 * 4;
    count +=
        put_cascade(h + count, b.d_in + count, bs, bs * ::cartserve::ops::kMaxCascadeSplits, sh);
  }
  CS_CUDA(cudaMemcpyAsync(b.d_in, h, count * sizeof(int32_t), cudaMemcpyHostToDevice, compute_));
  sh.ids = b.d_in;
  sh.pos = b.d_in + (pos - h);
  sh.slots = b.d_in + (slots - h);
  sh.batch.query_start = b.d_in + (qs - h);
  sh.batch.context_lens = b.d_in + (ctx - h);
  sh.batch.block_table = b.d_in + (table - h);
  sh.batch.num_seqs = bs;
  sh.batch.max_blocks = bb;
  sh.batch.num_tokens = bs;
  sh.batch.max_query_len = 1;
  sh.batch.max_context_len = bb * spec_.block_size;
  sh.decode = true;
  sh.runs = {{0, bs, true}};  // padding rows too: they are never read
  sh.splits = ops::decode_num_splits(bs, model_.config.num_kv_heads, sh.batch.max_context_len,
                                     kMaxSplits, num_sms_);
  const GraphKey key{bs, bb, cascade};
  if (auto it = graphs_.find(key); it != graphs_.end()) {
    CS_CUDA(cudaGraphLaunch(it->second, compute_));
    return last_error("a decode graph");
  }
  if (graph_seen_.insert(key).second) {  // first time: eagerly
    CS_RETURN_IF_ERROR(layers(sh));
    return last_error("the forward pass");
  }
  cudaGraph_t graph = nullptr;
  CS_CUDA(cudaStreamBeginCapture(compute_, cudaStreamCaptureModeThreadLocal));
  const Status st = layers(sh);
  const cudaError_t end = cudaStreamEndCapture(compute_, &graph);
  CS_RETURN_IF_ERROR(st);
  CS_CUDA(end);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  CS_CUDA(inst);
  graphs_.emplace(key, exec);
  CS_CUDA(cudaGraphLaunch(exec, compute_));
  return last_error("a decode graph");
}

ops::KvLayer CudaBackend::kv_layer(int32_t l) const {
  const int32_t B = spec_.block_size, KVD = spec_.kv_dim();
  ops::KvLayer kv;
  kv.k = static_cast<bf16*>(buf_->kv) + static_cast<size_t>(l) * 2 * B * KVD;
  kv.v = kv.k + static_cast<size_t>(B) * KVD;
  kv.block_stride = static_cast<int64_t>(spec_.num_layers) * 2 * B * KVD;
  kv.block_size = B;
  kv.num_kv_heads = spec_.num_kv_heads;
  kv.head_dim = spec_.head_dim;
  return kv;
}

bool CudaBackend::plan_step_cascade(const StepInput& in) {
  if (!cascade_ok_ || in.shared_prefix.empty()) return false;
  // The persistent kernel attends over the whole context itself (a
  // cartridge's prefix included).
  if (persistent_step(in)) return false;
  const ModelConfig& c = model_.config;
  plan_cascade(in.shared_prefix, in.query_start, in.context_lens, in.block_table, in.max_blocks,
               spec_.block_size, c.num_heads / c.num_kv_heads, opts_.cascade_min_prefix,
               cascade_plan_);
  return !cascade_plan_.empty();
}

size_t CudaBackend::put_cascade(int32_t* h, const int32_t* d, int32_t num_seqs, int32_t cap_items,
                                Shape& sh) const {
  const CascadePlan& p = cascade_plan_;
  const auto S = static_cast<size_t>(num_seqs);
  const auto cap = static_cast<size_t>(cap_items);
  // count [4] | items [cap, 4] | prefix_len [S] | members [<= S]
  h[0] = p.num_items();
  h[1] = h[2] = h[3] = 0;
  std::copy(p.items.begin(), p.items.end(), h + 4);
  int32_t* prefix = h + 4 + 4 * cap;
  std::fill(prefix, prefix + S, 0);  // padding sequences: no prefix
  std::copy(p.prefix_len.begin(), p.prefix_len.end(), prefix);
  int32_t* members = prefix + S;
  std::copy(p.members.begin(), p.members.end(), members);
  sh.cascade.num_items = d;
  sh.cascade.items = d + 4;
  sh.cascade.members = d + (members - h);
  sh.prefix_len = d + (prefix - h);
  // CTAs per KV head: about 4 per SM in all (two waves of the ~160-register
  // kernel); any count gives the same bits.
  const int cap_ctas = std::max(1, 4 * num_sms_ / std::max(1, spec_.num_kv_heads));
  sh.cascade_ctas = std::max(1, std::min(cap_items, cap_ctas));
  return 4 + 4 * cap + 2 * S;
}

Status CudaBackend::layers(const Shape& sh) {
  Buffers& b = *buf_;
  const ModelConfig& c = model_.config;
  const int32_t L = spec_.num_layers, KVD = spec_.kv_dim();
  const int n = sh.batch.num_tokens;
  const int H = c.hidden_size, Q = c.q_dim(), QKV = c.q_dim() + 2 * KVD, FF = c.intermediate_size;
  const float eps = c.rms_norm_eps;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  // Norm-folded (CudaOptions::fold_norms): the residual stream is bf16 in
  // b.x's memory; wqkv and wgu carry the norm weights, RoPE and SwiGLU apply
  // inv_rms of the residual rows (rs), the o and down projections add into
  // the residual. Else: the fp32 residual, add_rms_norm into b.xn, and the
  // projections' outputs in b.delta.
  const bool fold = weights_.folded_norms;
  bf16* xb = reinterpret_cast<bf16*>(b.x);  // [T, hidden] bf16 (fold only)
  const ops::RowRmsScale rs{fold ? xb : nullptr, H, eps};
  const bf16* gemm_in = fold ? xb : b.xn;  // the input of the QKV and gate/up projections
  // y[n, out] = x[n, in] @ w^T (bf16), or y += that (acc), run by run.
  auto linear = [&](const bf16* x, const bf16* w, bf16* y, int in_dim, int out_dim,
                    bool acc = false) -> Status {
    for (const Shape::Run& r : sh.runs) {
      const bf16* xr = x + static_cast<int64_t>(r.first) * in_dim;
      bf16* yr = y + static_cast<int64_t>(r.first) * out_dim;
      CS_RETURN_IF_ERROR(
          acc ? gemm_->accumulate(xr, w, yr, r.count, in_dim, out_dim, compute_, r.decode)
              : gemm_->run(xr, w, yr, false, r.count, in_dim, out_dim, compute_, r.decode));
    }
    return {};
  };
  // The residual update from a projection of `x` (o or down).
  auto residual = [&](const bf16* x, const bf16* w, int in_dim) -> Status {
    if (fold) return linear(x, w, xb, in_dim, H, true);
    CS_RETURN_IF_ERROR(linear(x, w, b.delta, in_dim, H));
    if (all_reduce_) CS_RETURN_IF_ERROR(all_reduce_(b.delta, static_cast<size_t>(n) * H, compute_));
    return {};
  };
  // The next linear layer's weights (w: [out, in] bf16) into L2, from when
  // the work queued on compute_ so far completes (CudaOptions::l2_prefetch_bytes).
  const uint64_t pf_cap = opts_.l2_prefetch_bytes;
  auto prefetch = [&](const bf16* w, int64_t in_dim, int64_t out_dim) -> Status {
    if (pf_cap == 0) return {};
    CS_CUDA(cudaEventRecord(prefetch_fork_, compute_));
    CS_CUDA(cudaStreamWaitEvent(prefetch_, prefetch_fork_, 0));
    const uint64_t bytes = static_cast<uint64_t>(in_dim) * static_cast<uint64_t>(out_dim) * 2;
    ops::prefetch_l2(w, std::min(pf_cap, bytes), prefetch_);
    return {};
  };
  if (fold) {
    ops::embedding(weights_.embed, sh.ids, xb, n, H, compute_);
    if (sh.persistent && persistent_) {  // (persistent_: off after a refused launch)
      ops::PersistentDecode p;
      p.layers = b.persist_layers;
      p.num_layers = L;
      p.hidden = H;
      p.ff = FF;
      p.n_heads = c.num_heads;
      p.kv = kv_layer(0);
      p.kv_layer_stride = kv_layer(1 % L).k - p.kv.k;
      p.batch = sh.batch;
      p.positions = sh.pos;
      p.slot_mapping = sh.slots;
      p.inv_freq = weights_.inv_freq;
      p.eps = eps;
      p.scale = scale;
      p.x = xb;
      p.qkv = b.qkv;
      p.attn = b.attn;
      p.act = b.act;
      p.workspace = b.persist_ws;
      p.counters = b.persist_counters;
      p.prefetch_bytes = opts_.persistent_prefetch_bytes;
      p.timeline = opts_.persistent_timeline ? b.persist_timeline : nullptr;
      if (ops::decode_layers_persistent(p, n, persistent_ctas_, compute_)) return {};
      LOG_WARN("persistent decode is off: its cooperative launch was refused");
      persistent_ = false;  // this step and the next ones take the per-op kernels
      // Graphs captured with the kernel are captured again without it (an
      // executable graph still in flight is freed when it completes).
      for (auto& [key, exec] : graphs_)
        cudaGraphExecDestroy(exec);
      graphs_.clear();
      graph_seen_.clear();
    }
  } else {
    ops::embedding(weights_.embed, sh.ids, b.x, n, H, compute_);
  }
  for (int32_t l = 0; l < L; ++l) {
    const DeviceLayer& w = weights_.layers[static_cast<size_t>(l)];
    const ops::KvLayer kv = kv_layer(l);
    if (!fold) {
      ops::add_rms_norm(b.x, l == 0 ? nullptr : b.delta, w.attn_norm, b.xn, n, H, eps, compute_);
    }
    CS_RETURN_IF_ERROR(linear(gemm_in, w.wqkv, b.qkv, H, QKV));
    CS_RETURN_IF_ERROR(prefetch(w.wo, Q, H));  // during RoPE and attention
    ops::rope_qkv_write(b.qkv, w.bqkv, sh.pos, weights_.inv_freq, sh.slots, kv, n, c.num_heads,
                        compute_, rs);
    // Sequences with a shared prefix (one row each): the prefix by the
    // cascade kernel, the rest by the decode kernel, which merges both; in a
    // mixed step the prefill kernel takes every other sequence.
    const bool prefixed = sh.cascade.items != nullptr;
    // With the side stream, the prefix kernel runs beside the kernels below.
    const bool side = opts_.cascade_side_stream;
    const ops::PrefixPartials parts{sh.prefix_len, b.cascade_ws, !sh.decode,
                                    side ? join_ : nullptr};
    if (prefixed) {
      if (side) {
        CS_CUDA(cudaEventRecord(fork_, compute_));
        CS_CUDA(cudaStreamWaitEvent(side_, fork_, 0));
      }
      ops::cascade_prefix_attention(b.qkv, QKV, kv, sh.batch, sh.cascade, sh.cascade_ctas,
                                    c.num_heads, scale, parts, side ? side_ : compute_);
      if (side) CS_CUDA(cudaEventRecord(join_, side_));
    }
    if (!sh.decode) {
      ops::paged_attention_prefill(b.qkv, QKV, kv, sh.batch, b.attn, c.num_heads, scale, sh.splits,
                                   b.attn_ws, compute_, prefixed ? sh.prefix_len : nullptr);
    }
    if (sh.decode || prefixed) {
      ops::paged_attention_decode(b.qkv, QKV, kv, sh.batch, b.attn, c.num_heads, scale,
                                  sh.decode ? sh.splits : sh.decode_splits, b.attn_ws, compute_,
                                  prefixed ? &parts : nullptr, b.merge_counters);
    }
    CS_RETURN_IF_ERROR(residual(b.attn, w.wo, Q));
    CS_RETURN_IF_ERROR(prefetch(w.wgu, H, 2 * FF));  // during the norm
    if (!fold) ops::add_rms_norm(b.x, b.delta, w.ffn_norm, b.xn, n, H, eps, compute_);
    for (const Shape::Run& r : sh.runs) {
      const int64_t row = r.first;
      const ops::RowRmsScale rr{fold ? xb + row * H : nullptr, H, eps};
      CS_RETURN_IF_ERROR(gemm_->run_swiglu(gemm_in + row * H, w.wgu, b.gu + row * 2 * FF,
                                           b.act + row * FF, r.count, H, FF, compute_, r.decode,
                                           rr));
    }
    CS_RETURN_IF_ERROR(residual(b.act, w.wdown, FF));
    if (l + 1 < L) {  // during the norm
      CS_RETURN_IF_ERROR(prefetch(weights_.layers[static_cast<size_t>(l) + 1].wqkv, H, QKV));
    }
  }
  if (pf_cap > 0) {  // the branch rejoins compute_ (a captured graph must end joined)
    CS_CUDA(cudaEventRecord(prefetch_join_, prefetch_));
    CS_CUDA(cudaStreamWaitEvent(compute_, prefetch_join_, 0));
  }
  // The last residual add (its normed output is recomputed per logit row);
  // folded, the down projection made it.
  if (!fold) ops::add_rms_norm(b.x, b.delta, weights_.final_norm, b.xn, n, H, eps, compute_);
  return {};
}

Status CudaBackend::head(const int32_t* d_rows, int n) {
  Buffers& b = *buf_;
  const ModelConfig& c = model_.config;
  if (n == 0) return {};
  if (weights_.folded_norms) {  // rows of the bf16 residual, widened (a row gather)
    ops::embedding(reinterpret_cast<const bf16*>(b.x), d_rows, b.x_rows, n, c.hidden_size,
                   compute_);
  } else {
    ops::gather_rows(b.x, d_rows, b.x_rows, n, c.hidden_size, compute_);
  }
  ops::add_rms_norm(b.x_rows, nullptr, weights_.final_norm, b.xn_rows, n, c.hidden_size,
                    c.rms_norm_eps, compute_);
  // Sampled rows: their logits must not depend on the other rows of the step.
  return gemm_->run(b.xn_rows, weights_.lm_head, b.logits, true, n, c.hidden_size, c.vocab_size,
                    compute_, true);
}

Status CudaBackend::head_rows(const int32_t* rows, int n, const int32_t* targets) {
  Buffers& b = *buf_;
  int32_t* h_rows = b.h_in + b.in_ints - 2 * static_cast<uint64_t>(b.max_rows);
  int32_t* d_rows = b.d_in + b.in_ints - 2 * static_cast<uint64_t>(b.max_rows);
  std::memcpy(h_rows, rows, sizeof(int32_t) * n);
  if (targets) std::memcpy(h_rows + b.max_rows, targets, sizeof(int32_t) * n);
  CS_CUDA(cudaMemcpyAsync(d_rows, h_rows, sizeof(int32_t) * 2 * b.max_rows, cudaMemcpyHostToDevice,
                          compute_));
  return head(d_rows, n);
}

Status CudaBackend::sample(const StepInput& in, StepOutput& out) {
  Buffers& b = *buf_;
  const int32_t vocab = model_.config.vocab_size;
  const auto n = static_cast<int32_t>(in.samples.size());
  out.samples.assign(static_cast<size_t>(n), SampleResult{});
  if (n == 0) return {};
  if (n > b.max_rows) {
    return make_error(ErrorCode::kInvalidArgument, "{} rows to sample, more than the {} buffered",
                      n, b.max_rows);
  }
  std::vector<int32_t> rows;
  for (const SampleRow& r : in.samples)
    rows.push_back(r.row);
  CS_RETURN_IF_ERROR(head_rows(rows.data(), n, nullptr));
  std::vector<ops::TokenEdit> edits;
  bool any_logprobs = false, any_top = false, any_draw = false;
  for (int32_t i = 0; i < n; ++i) {
    const SampleRow& r = in.samples[static_cast<size_t>(i)];
    ops::SampleRowParams& p = b.h_params[i];
    p = device_sample_row(r, vocab, edits);
    any_logprobs = any_logprobs || p.num_logprobs >= 0;
    any_top = any_top || p.num_logprobs > 0;
    any_draw = any_draw || p.temperature >= SamplingParams::kGreedyEpsilon;
  }
  if (edits.size() > static_cast<size_t>(kMaxEdits)) {
    return make_error(ErrorCode::kResourceExhausted,
                      "the step's penalties touch {} tokens, more than the sampler's {}",
                      edits.size(), kMaxEdits);
  }
  std::copy(edits.begin(), edits.end(), b.h_edits);
  CS_CUDA(cudaMemcpyAsync(b.d_params, b.h_params, sizeof(ops::SampleRowParams) * n,
                          cudaMemcpyHostToDevice, compute_));
  if (!edits.empty()) {
    CS_CUDA(cudaMemcpyAsync(b.d_edits, b.h_edits, sizeof(ops::TokenEdit) * edits.size(),
                            cudaMemcpyHostToDevice, compute_));
  }
  ops::sample(b.logits, vocab, b.d_params, n, edits.empty() ? nullptr : b.d_edits, b.sample_ws,
              kMaxEdits, b.d_token, any_logprobs ? b.d_logprob : nullptr,
              any_logprobs ? b.d_rank : nullptr, any_top ? b.d_top_ids : nullptr,
              any_top ? b.d_top_lp : nullptr, any_draw, compute_);
  constexpr int kTop = ops::kMaxTopLogprobs;
  CS_CUDA(
      cudaMemcpyAsync(b.h_token, b.d_token, sizeof(int32_t) * n, cudaMemcpyDeviceToHost, compute_));
  if (any_logprobs) {
    CS_CUDA(cudaMemcpyAsync(b.h_logprob, b.d_logprob, sizeof(float) * n, cudaMemcpyDeviceToHost,
                            compute_));
    CS_CUDA(
        cudaMemcpyAsync(b.h_rank, b.d_rank, sizeof(int32_t) * n, cudaMemcpyDeviceToHost, compute_));
  }
  if (any_top) {
    CS_CUDA(cudaMemcpyAsync(b.h_top_ids, b.d_top_ids, sizeof(int32_t) * n * kTop,
                            cudaMemcpyDeviceToHost, compute_));
    CS_CUDA(cudaMemcpyAsync(b.h_top_lp, b.d_top_lp, sizeof(float) * n * kTop,
                            cudaMemcpyDeviceToHost, compute_));
  }
  CS_CUDA(cudaStreamSynchronize(compute_));
  CS_RETURN_IF_ERROR(last_error("sampling"));
  for (int32_t i = 0; i < n; ++i) {
    SampleResult& res = out.samples[static_cast<size_t>(i)];
    res.token = b.h_token[i];
    if (res.token < 0) {
      return make_error(ErrorCode::kInternal, "logits row {} holds NaN or +inf", i);
    }
    const int32_t k = b.h_params[i].num_logprobs;
    if (k < 0) continue;
    res.logprob = b.h_logprob[i];
    res.rank = b.h_rank[i];
    for (int32_t j = 0; j < k; ++j)
      res.top_logprobs.push_back({b.h_top_ids[i * kTop + j], b.h_top_lp[i * kTop + j]});
  }
  return {};
}

Status CudaBackend::prompt_logprobs(const StepInput& in, StepOutput& out) {
  Buffers& b = *buf_;
  const int32_t vocab = model_.config.vocab_size;
  constexpr int kTop = ops::kMaxTopLogprobs;
  out.prompt_logprobs.assign(in.prompt_logprobs.size(), {});
  const int32_t* d_targets = b.d_in + b.in_ints - static_cast<uint64_t>(b.max_rows);
  for (size_t k = 0; k < in.prompt_logprobs.size(); ++k) {
    const PromptLogprobRows& p = in.prompt_logprobs[k];
    const int top_n = std::clamp(p.top_n, 0, kTop);
    for (size_t done = 0; done < p.targets.size();) {
      const int c = static_cast<int>(
          std::min<size_t>(static_cast<size_t>(b.max_rows), p.targets.size() - done));
      std::vector<int32_t> rows(static_cast<size_t>(c));
      for (int i = 0; i < c; ++i)
        rows[static_cast<size_t>(i)] = p.first_row + static_cast<int32_t>(done) + i;
      CS_RETURN_IF_ERROR(head_rows(rows.data(), c, p.targets.data() + done));
      ops::token_logprobs(b.logits, vocab, c, d_targets, top_n, b.d_logprob, b.d_rank,
                          top_n > 0 ? b.d_top_ids : nullptr, top_n > 0 ? b.d_top_lp : nullptr,
                          compute_);
      CS_CUDA(cudaMemcpyAsync(b.h_logprob, b.d_logprob, sizeof(float) * c, cudaMemcpyDeviceToHost,
                              compute_));
      if (top_n > 0) {
        CS_CUDA(cudaMemcpyAsync(b.h_top_ids, b.d_top_ids, sizeof(int32_t) * c * kTop,
                                cudaMemcpyDeviceToHost, compute_));
        CS_CUDA(cudaMemcpyAsync(b.h_top_lp, b.d_top_lp, sizeof(float) * c * kTop,
                                cudaMemcpyDeviceToHost, compute_));
      }
      CS_CUDA(cudaStreamSynchronize(compute_));
      for (int i = 0; i < c; ++i) {
        PromptLogprob pl;
        pl.token = p.targets[done + static_cast<size_t>(i)];
        pl.logprob = b.h_logprob[i];
        for (int j = 0; j < top_n; ++j)
          pl.top.push_back({b.h_top_ids[i * kTop + j], b.h_top_lp[i * kTop + j]});
        out.prompt_logprobs[k].push_back(std::move(pl));
      }
      done += static_cast<size_t>(c);
    }
  }
  return last_error("prompt logprobs");
}

Status CudaBackend::forward_only(const StepInput& in) {
  CS_CUDA(cudaSetDevice(opts_.device));
  CS_RETURN_IF_ERROR(forward(in));
  // The pinned input area is rewritten by the next step.
  CS_CUDA(cudaStreamSynchronize(compute_));
  return last_error("the forward pass");
}

Status CudaBackend::execute(const StepInput& in, StepOutput& out) {
  CS_CUDA(cudaSetDevice(opts_.device));
  std::vector<int32_t> rows;
  logit_rows(in, /*prompt_rows=*/true, rows);
  CS_RETURN_IF_ERROR(
      validate_step(in, rows, model_.config.vocab_size, spec_.num_blocks, spec_.block_size));
  CS_RETURN_IF_ERROR(forward(in));
  return sample_after_forward(in, out);
}

Status CudaBackend::sample_after_forward(const StepInput& in, StepOutput& out) {
  CS_RETURN_IF_ERROR(sample(in, out));
  return prompt_logprobs(in, out);
}

Status CudaBackend::logits(const StepInput& in, std::vector<float>& out) {
  CS_CUDA(cudaSetDevice(opts_.device));
  std::vector<int32_t> rows;
  logit_rows(in, /*prompt_rows=*/false, rows);
  CS_RETURN_IF_ERROR(
      validate_step(in, rows, model_.config.vocab_size, spec_.num_blocks, spec_.block_size));
  CS_RETURN_IF_ERROR(forward(in));
  return logits_after_forward(in, out);
}

Status CudaBackend::logits_after_forward(const StepInput& in, std::vector<float>& out) {
  std::vector<int32_t> rows;
  logit_rows(in, /*prompt_rows=*/false, rows);
  const size_t vocab = static_cast<size_t>(model_.config.vocab_size);
  out.resize(rows.size() * vocab);
  for (size_t done = 0; done < rows.size();) {  // in chunks the logits buffer holds
    const int c =
        static_cast<int>(std::min<size_t>(static_cast<size_t>(buf_->max_rows), rows.size() - done));
    CS_RETURN_IF_ERROR(head_rows(rows.data() + done, c, nullptr));
    CS_CUDA(cudaMemcpyAsync(out.data() + done * vocab, buf_->logits, c * vocab * sizeof(float),
                            cudaMemcpyDeviceToHost, compute_));
    CS_CUDA(cudaStreamSynchronize(compute_));
    done += static_cast<size_t>(c);
  }
  return last_error("logits");
}

// ---------------------------------------------------------------- transfers

bool CudaOptions::cascade_side_stream_by_default() {
  return env_flag("CARTSERVE_CASCADE_SIDE_STREAM");
}

uint64_t CudaOptions::l2_prefetch_bytes_by_default() {
  const char* v = std::getenv("CARTSERVE_L2_PREFETCH_MB");
  const long long mb = v != nullptr ? std::atoll(v) : 0;
  return mb > 0 ? static_cast<uint64_t>(mb) << 20 : 0;
}

bool CudaOptions::kv_load_direct_by_default() {
  return env_flag("CARTSERVE_KV_LOAD_DIRECT");
}

bool CudaOptions::fold_norms_by_default() {
  const char* v = std::getenv("CARTSERVE_FOLD_NORMS");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

Result<std::vector<uint64_t>> CudaBackend::persistent_timeline() {
  if (!persistent_ || !opts_.persistent_timeline) return std::vector<uint64_t>{};
  std::vector<uint64_t> t(
      ::cartserve::ops::persistent_timeline_stamps(model_.config.num_layers, persistent_ctas_));
  CS_CUDA(cudaMemcpyAsync(t.data(), buf_->persist_timeline, sizeof(uint64_t) * t.size(),
                          cudaMemcpyDeviceToHost, compute_));
  CS_CUDA(cudaStreamSynchronize(compute_));
  return t;
}

bool CudaOptions::persistent_decode_by_default() {
  return env_flag("CARTSERVE_PERSISTENT_DECODE");
}

int CudaOptions::persistent_prefetch_bytes_by_default() {
  const char* v = std::getenv("CARTSERVE_PERSISTENT_PREFETCH_KB");
  const long long kb = v != nullptr ? std::atoll(v) : 64;
  return static_cast<int>(std::clamp<long long>(kb, 0, 1 << 16) << 10);
}

int CudaOptions::persistent_ctas_by_default() {
  const char* v = std::getenv("CARTSERVE_PERSISTENT_CTAS");
  return v != nullptr ? std::max(0, std::atoi(v)) : 0;
}

Status CudaBackend::transfer(const HostKv& kv, const KvBlockList& blocks, bool load) {
  CS_CUDA(cudaSetDevice(opts_.device));  // the transfer thread's first call may be this one
  Buffers& b = *buf_;
  const int32_t B = spec_.block_size, L = spec_.num_layers;
  const int32_t heads = spec_.num_kv_heads, dim = spec_.head_dim;
  const int32_t T = kv.num_tokens;
  const size_t esz = dtype_size(kv.dtype);
  const int32_t n_index = (T + B - 1) / B;
  if (n_index > b.max_blocks) {
    return make_error(ErrorCode::kInvalidArgument,
                      "a KV transfer of {} tokens exceeds --max-model-len", T);
  }
  // Block of each block index (only the transferred ones are read).
  std::vector<int32_t> table(static_cast<size_t>(n_index), 0);
  for (size_t i = 0; i < blocks.block_ids.size(); ++i)
    table[static_cast<size_t>(blocks.block_index[i])] = blocks.block_ids[i];
  CS_CUDA(cudaMemcpyAsync(b.d_table, table.data(), table.size() * sizeof(int32_t),
                          cudaMemcpyHostToDevice, copy_));
  // Token chunks that fit a staging buffer, whole blocks each.
  const uint64_t token_bytes = static_cast<uint64_t>(heads) * dim * esz;
  const int32_t chunk = static_cast<int32_t>(kStageBytes / token_bytes) / B * B;
  if (chunk < B) return make_error(ErrorCode::kInternal, "a KV block exceeds the staging buffer");
  int slot = 0;
  // Host tensors in page-locked memory (the host tier's, see host_buffer) are
  // copied by DMA without the CPU staging copy.
  bool pinned = load;
  for (int32_t l = 0; l < L && pinned; ++l) {
    for (void* p : {kv.keys[l], kv.values[l]}) {
      cudaPointerAttributes attr{};
      pinned = pinned && cudaPointerGetAttributes(&attr, p) == cudaSuccess &&
               attr.type == cudaMemoryTypeHost;
    }
  }
  cudaGetLastError();  // a pageable pointer's query may leave an error behind
  // Direct: page-locked host memory is mapped into the device's address
  // space (unified addressing), so the import kernel reads it in place.
  const bool direct = pinned && opts_.kv_load_direct;
  for (size_t r = 0; r < blocks.block_index.size();) {
    // A run of consecutive block indices: positions [p0, p1).
    size_t e = r + 1;
    while (e < blocks.block_index.size() && blocks.block_index[e] == blocks.block_index[e - 1] + 1)
      ++e;
    const int32_t p0 = blocks.block_index[r] * B;
    const int32_t p1 = std::min(T, (blocks.block_index[e - 1] + 1) * B);
    r = e;
    for (int32_t l = 0; l < L; ++l) {
      for (int v = 0; v < 2; ++v) {
        auto* host = static_cast<uint8_t*>(v ? kv.values[l] : kv.keys[l]);  // [heads, T, dim]
        const ops::KvLayer layout = kv_layer(l);
        bf16* base = v ? layout.v : layout.k;
        if (direct) {  // positions [p0, p1) straight from the host tensor
          ops::kv_import(host, kv_elem(kv.dtype), T, p0, p1 - p0, b.d_table, base, layout, copy_);
          continue;
        }
        for (int32_t t0 = p0; t0 < p1; t0 += chunk) {
          const int32_t c = std::min(chunk, p1 - t0);
          const size_t row = static_cast<size_t>(c) * dim * esz;  // one head's rows
          auto* staged = static_cast<uint8_t*>(b.h_stage[slot]);
          if (load && pinned) {
            // Page-locked source: one strided DMA (a row per head); the copy
            // stream orders it after the kernel that last read this slot.
            CS_CUDA(cudaMemcpy2DAsync(
                b.d_stage[slot], row, host + static_cast<size_t>(t0) * dim * esz,
                static_cast<size_t>(T) * dim * esz, row, heads, cudaMemcpyHostToDevice, copy_));
            ops::kv_import(b.d_stage[slot], kv_elem(kv.dtype), c, 0, c, b.d_table + t0 / B, base,
                           layout, copy_);
            slot ^= 1;
            continue;
          }
          CS_CUDA(cudaEventSynchronize(b.staged[slot]));  // its previous use is done
          if (load) {
            for (int32_t h = 0; h < heads; ++h) {
              std::memcpy(staged + h * row, host + (static_cast<size_t>(h) * T + t0) * dim * esz,
                          row);
            }
            CS_CUDA(cudaMemcpyAsync(b.d_stage[slot], staged, row * heads, cudaMemcpyHostToDevice,
                                    copy_));
            ops::kv_import(b.d_stage[slot], kv_elem(kv.dtype), c, 0, c, b.d_table + t0 / B, base,
                           layout, copy_);
            CS_CUDA(cudaEventRecord(b.staged[slot], copy_));
          } else {
            ops::kv_export(base, layout, b.d_table + t0 / B, c, 0, c, b.d_stage[slot],
                           kv_elem(kv.dtype), copy_);
            CS_CUDA(cudaMemcpyAsync(staged, b.d_stage[slot], row * heads, cudaMemcpyDeviceToHost,
                                    copy_));
            CS_CUDA(cudaEventRecord(b.staged[slot], copy_));
            CS_CUDA(cudaEventSynchronize(b.staged[slot]));
            for (int32_t h = 0; h < heads; ++h) {
              std::memcpy(host + (static_cast<size_t>(h) * T + t0) * dim * esz, staged + h * row,
                          row);
            }
          }
          slot ^= 1;
        }
      }
    }
  }
  CS_CUDA(cudaStreamSynchronize(copy_));
  return last_error(load ? "loading KV into blocks" : "saving KV from blocks");
}

std::shared_ptr<void> CudaBackend::host_buffer(size_t bytes) {
  void* p = nullptr;
  // Portable: pinned for every device's context (tensor parallel ranks).
  if (cudaHostAlloc(&p, bytes, cudaHostAllocPortable) != cudaSuccess) {
    cudaGetLastError();  // not sticky; plain memory will do
    return nullptr;
  }
  return std::shared_ptr<void>(p, [](void* q) { cudaFreeHost(q); });
}

Result<TransferId> CudaBackend::start_kv_load(const HostKv& src, const KvBlockList& blocks) {
  CS_RETURN_IF_ERROR(validate_transfer(src, blocks, spec_));
  return transfers_->start([this, src, blocks] { return transfer(src, blocks, true); });
}

Result<TransferId> CudaBackend::start_kv_save(const KvBlockList& blocks, const HostKv& dst) {
  CS_RETURN_IF_ERROR(validate_transfer(dst, blocks, spec_));
  return transfers_->start([this, dst, blocks] { return transfer(dst, blocks, false); });
}

std::optional<Status> CudaBackend::poll_transfer(TransferId id) {
  return transfers_->poll(id);
}

Status CudaBackend::wait_transfer(TransferId id) {
  return transfers_->wait(id);
}

}  // namespace cartserve::cuda
