#include "runtime/cuda/tp_cuda_backend.h"

#include <algorithm>

#include "core/logging.h"
#include "runtime/cpu/tp_shard.h"
#include "runtime/cuda/cuda_status.h"

namespace cartserve::cuda {

Result<std::unique_ptr<TpCudaBackend>> TpCudaBackend::create(const Model& model, int32_t tp_size,
                                                             const CudaOptions& opts,
                                                             bool one_device) {
  const ModelConfig& c = model.config;
  CS_ASSIGN_OR_RETURN(TpPlan plan, make_tp_plan(c.num_heads, c.num_kv_heads, c.intermediate_size,
                                                tp_size, tp_ff_align(model)));
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    return make_error(ErrorCode::kUnavailable, "--device cuda: no CUDA GPU is visible");
  }
  if (!one_device && opts.device + tp_size > count) {
    return make_error(ErrorCode::kInvalidArgument,
                      "--tensor-parallel-size {} needs {} GPUs from cuda:{} on; {} visible",
                      tp_size, tp_size, opts.device, count);
  }
  if (one_device && opts.kv_cache_tokens <= 0 && opts.kv_cache_bytes == 0) {
    return make_error(ErrorCode::kInvalidArgument,
                      "tensor parallel ranks sharing one GPU need an explicit KV cache size");
  }
  std::vector<int> devices;
  for (int32_t r = 0; r < tp_size; ++r)
    devices.push_back(one_device ? opts.device : opts.device + r);
  if (plan.kv_replicated) {
    LOG_WARN("tensor parallel {}: {} KV heads for {} ranks, KV heads replicated", tp_size,
             c.num_kv_heads, tp_size);
  }
  LOG_INFO("{} on {}", plan.describe(),
           one_device ? fmt::format("one GPU (cuda:{})", opts.device)
                      : fmt::format("cuda:{}..cuda:{} over NCCL", devices.front(), devices.back()));
  std::unique_ptr<TpCudaBackend> b(new TpCudaBackend(model, std::move(plan)));
  // The communicator first: its device buffers count before the KV pools size themselves.
  if (one_device) {
    const size_t rows =
        static_cast<size_t>(std::max(opts.max_num_batched_tokens, opts.max_num_seqs));
    CS_ASSIGN_OR_RETURN(b->comm_, make_one_device_comm(tp_size, opts.device, rows * c.hidden_size));
  } else {
    CS_ASSIGN_OR_RETURN(b->comm_, make_nccl_device_comm(devices));
  }
  std::string names;
  for (int32_t r = 0; r < tp_size; ++r) {
    Rank& k = b->ranks_[static_cast<size_t>(r)];
    CS_ASSIGN_OR_RETURN(k.shard, make_tp_shard(model, b->plan_, r));
    CudaOptions ro = opts;
    ro.device = devices[static_cast<size_t>(r)];
    ro.cuda_graphs = opts.cuda_graphs && b->comm_->capturable();
    ro.fold_norms = false;  // the residual adds wait for the all-reduce (CudaOptions)
    CS_ASSIGN_OR_RETURN(k.backend, CudaBackend::create(*k.shard, ro));
    k.backend->set_all_reduce([comm = b->comm_.get(), r](bf16* data, size_t n, cudaStream_t s) {
      return comm->all_reduce_sum(r, data, n, s);
    });
    names += (r ? ", " : "") + k.backend->name();
  }
  b->spec_ = b->ranks_[0].backend->kv_spec();
  for (const Rank& k : b->ranks_)
    b->spec_.num_blocks = std::min(b->spec_.num_blocks, k.backend->kv_spec().num_blocks);
  b->spec_.num_kv_heads = c.num_kv_heads;  // the engine's view: the whole model's KV
  b->name_ = fmt::format("cuda tensor parallel {} ({})", tp_size, names);
  LOG_INFO("tensor parallel KV cache: {} blocks x {} = {} tokens on every rank",
           b->spec_.num_blocks - 1, b->spec_.block_size, b->spec_.num_tokens());
  CS_CUDA(cudaSetDevice(devices[0]));
  b->threads_ = std::make_unique<RankThreads>(
      tp_size, [comm = b->comm_.get()](int32_t r) { (void)cudaSetDevice(comm->device(r)); });
  return b;
}

TpCudaBackend::TpCudaBackend(const Model& model, TpPlan plan)
    : model_(model), plan_(std::move(plan)), ranks_(static_cast<size_t>(plan_.size)) {}

TpCudaBackend::~TpCudaBackend() {
  threads_.reset();  // joined before the ranks go
}

Status TpCudaBackend::run(const StepInput& in, bool prompt_rows,
                          const std::function<Status(CudaBackend&)>& rank0) {
  if (failed_) {
    return make_error(ErrorCode::kUnavailable,
                      "tensor parallel: a rank failed in an earlier step; restart the server");
  }
  std::vector<int32_t> rows;
  logit_rows(in, prompt_rows, rows);
  // Against the engine's view (every rank holds at least its blocks), so
  // that no rank refuses a step the others run.
  CS_RETURN_IF_ERROR(
      validate_step(in, rows, model_.config.vocab_size, spec_.num_blocks, spec_.block_size));
  // A failed rank aborts the communicator: the others' collectives return
  // instead of waiting for it.
  auto abort_on_error = [this](Status s) {
    if (!s.ok()) comm_->abort();
    return s;
  };
  auto forward = [&](int32_t r) {
    return abort_on_error(ranks_[static_cast<size_t>(r)].backend->forward_only(in));
  };
  if (Status s = threads_->run(forward, [&] { return forward(0); }); !s.ok()) {
    failed_ = true;
    return s;
  }
  // Rank 0 alone from here: an error (say NaN logits) fails this step only.
  return rank0(*ranks_[0].backend);
}

Status TpCudaBackend::execute(const StepInput& in, StepOutput& out) {
  return run(in, /*prompt_rows=*/true,
             [&](CudaBackend& b) { return b.sample_after_forward(in, out); });
}

Status TpCudaBackend::logits(const StepInput& in, std::vector<float>& out) {
  return run(in, /*prompt_rows=*/false,
             [&](CudaBackend& b) { return b.logits_after_forward(in, out); });
}

std::shared_ptr<void> TpCudaBackend::host_buffer(size_t bytes) {
  return ranks_[0].backend->host_buffer(bytes);
}

// ---------------------------------------------------------------- transfers

HostKv TpCudaBackend::rank_view(const HostKv& kv, int32_t rank) const {
  // Host KV [heads, tokens, head_dim] per layer: the rank's heads are one run.
  const size_t off = static_cast<size_t>(plan_.ranks[static_cast<size_t>(rank)].kv_head_begin) *
                     static_cast<size_t>(kv.num_tokens) * static_cast<size_t>(spec_.head_dim) *
                     dtype_size(kv.dtype);
  HostKv v = kv;
  for (size_t l = 0; l < v.keys.size(); ++l) {
    v.keys[l] = static_cast<uint8_t*>(v.keys[l]) + off;
    v.values[l] = static_cast<uint8_t*>(v.values[l]) + off;
  }
  return v;
}

Status TpCudaBackend::move_kv(const HostKv& kv, const KvBlockList& blocks, bool load) {
  // Every rank's copy at once (each on its own copy stream), then wait for all.
  std::vector<std::pair<int32_t, TransferId>> started;
  Status st;
  for (int32_t r = 0; r < plan_.size; ++r) {
    // Export: each KV head once, from the first rank that holds it (replicas
    // are equal). A rank owns all of its heads or none (tp_plan.h).
    const TpRank& part = plan_.ranks[static_cast<size_t>(r)];
    if (!load && plan_.kv_head_owner(part.kv_head_begin) != r) continue;
    CudaBackend& b = *ranks_[static_cast<size_t>(r)].backend;
    auto id = load ? b.start_kv_load(rank_view(kv, r), blocks)
                   : b.start_kv_save(blocks, rank_view(kv, r));
    if (!id.ok()) {
      st = id.status();
      break;
    }
    started.emplace_back(r, *id);
  }
  for (const auto& [r, id] : started) {
    Status w = ranks_[static_cast<size_t>(r)].backend->wait_transfer(id);
    if (st.ok()) st = std::move(w);
  }
  return st;
}

Result<TransferId> TpCudaBackend::start_kv_load(const HostKv& src, const KvBlockList& blocks) {
  CS_RETURN_IF_ERROR(validate_transfer(src, blocks, spec_));
  return transfers_.start([this, src, blocks] { return move_kv(src, blocks, /*load=*/true); });
}

Result<TransferId> TpCudaBackend::start_kv_save(const KvBlockList& blocks, const HostKv& dst) {
  CS_RETURN_IF_ERROR(validate_transfer(dst, blocks, spec_));
  return transfers_.start([this, dst, blocks] { return move_kv(dst, blocks, /*load=*/false); });
}

std::optional<Status> TpCudaBackend::poll_transfer(TransferId id) {
  return transfers_.poll(id);
}

Status TpCudaBackend::wait_transfer(TransferId id) {
  return transfers_.wait(id);
}

}  // namespace cartserve::cuda
