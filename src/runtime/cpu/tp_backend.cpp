#include "runtime/cpu/tp_backend.h"

#include <cstring>

#include "core/logging.h"
#include "core/thread_pool.h"
#include "kernels/ops.h"
#include "runtime/cpu/tp_shard.h"

namespace cartserve {

Result<std::unique_ptr<TpCpuBackend>> TpCpuBackend::create(const Model& model, int32_t tp_size,
                                                           int32_t block_size,
                                                           const KvBudget& budget) {
  const ModelConfig& c = model.config;
  CS_ASSIGN_OR_RETURN(TpPlan plan, make_tp_plan(c.num_heads, c.num_kv_heads, c.intermediate_size,
                                                tp_size, tp_ff_align(model)));
  if (block_size < 1) {
    return make_error(ErrorCode::kInvalidArgument, "block size {} must be >= 1", block_size);
  }
  KvSpec spec;
  spec.dtype = DType::kF32;
  spec.block_size = block_size;
  spec.num_layers = c.num_layers;
  spec.head_dim = c.head_dim;
  // Blocks: what the budget holds on the rank with the most KV heads.
  spec.num_kv_heads = plan.max_kv_heads_per_rank();
  const int64_t blocks = budget.num_blocks(spec);
  if (blocks < 2) {
    return make_error(ErrorCode::kInvalidArgument,
                      "{} bytes of KV cache per rank hold {} blocks of {} bytes; at least 2 are "
                      "needed",
                      budget.bytes, blocks, spec.bytes_per_block());
  }
  spec.num_blocks = static_cast<int32_t>(std::min<int64_t>(blocks, 1 << 30));
  const uint64_t rank_bytes = spec.total_bytes();
  spec.num_kv_heads = c.num_kv_heads;  // the engine's view: the whole model's KV
  if (plan.kv_replicated) {
    LOG_WARN("tensor parallel {}: {} KV heads for {} ranks, KV heads replicated", tp_size,
             c.num_kv_heads, tp_size);
  }
  LOG_INFO("{}; KV per rank: {} blocks, up to {} bytes ({} KV heads)", plan.describe(),
           spec.num_blocks, rank_bytes, plan.max_kv_heads_per_rank());
  auto b = std::unique_ptr<TpCpuBackend>(new TpCpuBackend(model, std::move(plan), spec));
  for (int32_t r = 0; r < tp_size; ++r) {
    CS_ASSIGN_OR_RETURN(b->ranks_[static_cast<size_t>(r)].shard, make_tp_shard(model, b->plan_, r));
  }
  for (int32_t r = 0; r < tp_size; ++r) {
    Rank& k = b->ranks_[static_cast<size_t>(r)];
    k.forward = std::make_unique<LlamaForward>(*k.shard);
    k.forward->set_all_reduce(
        [comm = &b->comm_, r](float* data, size_t n) { comm->all_reduce_sum(r, data, n); });
    k.cache = std::make_unique<KvCache>(spec.num_layers, spec.num_blocks, spec.block_size,
                                        k.shard->config.kv_dim());
  }
  return b;
}

TpCpuBackend::TpCpuBackend(const Model& model, TpPlan plan, const KvSpec& spec)
    : model_(model),
      plan_(std::move(plan)),
      spec_(spec),
      comm_(plan_.size),
      ranks_(static_cast<size_t>(plan_.size)),
      sampler_(&ThreadPool::global()),
      threads_(plan_.size) {}

TpCpuBackend::~TpCpuBackend() = default;

std::string TpCpuBackend::name() const {
  return "cpu (tensor parallel " + std::to_string(plan_.size) + ")";
}

Status TpCpuBackend::run_rank(int32_t rank, const StepInput& in,
                              std::span<const int32_t> logit_rows) {
  Rank& k = ranks_[static_cast<size_t>(rank)];
  KvCache& cache = *k.cache;
  const size_t row = static_cast<size_t>(cache.kv_dim());
  for (const BlockCopy& c : in.block_copies) {
    const size_t src = static_cast<size_t>(c.src_block) * cache.block_size() * row;
    const size_t dst = static_cast<size_t>(c.dst_block) * cache.block_size() * row;
    const size_t n = static_cast<size_t>(c.num_slots) * row * sizeof(float);
    for (int l = 0; l < cache.num_layers(); ++l) {
      std::memmove(cache.k(l) + dst, cache.k(l) + src, n);
      std::memmove(cache.v(l) + dst, cache.v(l) + src, n);
    }
  }
  // Every rank validates the same step identically, so either all of them
  // reach the all-reduces or none does.
  return k.forward->forward(in, logit_rows, cache, k.logits);
}

Status TpCpuBackend::run(const StepInput& in, bool prompt_rows, std::vector<float>& logits) {
  for (const BlockCopy& c : in.block_copies) {
    if (c.src_block <= 0 || c.src_block >= spec_.num_blocks || c.dst_block <= 0 ||
        c.dst_block >= spec_.num_blocks || c.num_slots < 0 || c.num_slots > spec_.block_size) {
      return make_error(ErrorCode::kInvalidArgument, "block copy {} -> {} of {} slots is invalid",
                        c.src_block, c.dst_block, c.num_slots);
    }
  }
  logit_rows(in, prompt_rows, logit_rows_);
  CS_RETURN_IF_ERROR(threads_.run([&](int32_t r) { return run_rank(r, in, {}); },
                                  [&] { return run_rank(0, in, logit_rows_); }));
  logits.swap(ranks_[0].logits);
  return {};
}

Status TpCpuBackend::logits(const StepInput& in, std::vector<float>& out) {
  return run(in, /*prompt_rows=*/false, out);
}

Status TpCpuBackend::execute(const StepInput& in, StepOutput& out) {
  // From here on as CpuBackend::execute: rank 0 samples.
  CS_RETURN_IF_ERROR(run(in, /*prompt_rows=*/true, logits_));
  return sampler_.step_outputs(logits_, model_.config.vocab_size, in, out);
}

// ---------------------------------------------------------------- transfers

void TpCpuBackend::move_kv(const HostKv& kv, const KvBlockList& blocks, bool load) {
  const int32_t B = spec_.block_size;
  const size_t head_elems = static_cast<size_t>(kv.num_tokens) * spec_.head_dim;
  const size_t esize = dtype_size(kv.dtype);
  for (int32_t rank = 0; rank < plan_.size; ++rank) {
    const TpRank& part = plan_.ranks[static_cast<size_t>(rank)];
    // Export: each KV head once, from the first rank that holds it (with
    // replication the ranks' copies are equal). A rank owns all of its heads
    // or none (tp_plan.h).
    if (!load && plan_.kv_head_owner(part.kv_head_begin) != rank) continue;
    KvCache& cache = *ranks_[static_cast<size_t>(rank)].cache;
    const int heads = part.num_kv_heads();
    const int64_t stride = static_cast<int64_t>(B) * cache.kv_dim();
    // Host KV [heads, tokens, head_dim]: the rank's heads are one contiguous run.
    const size_t host_off = static_cast<size_t>(part.kv_head_begin) * head_elems * esize;
    for (size_t i = 0; i < blocks.block_ids.size(); ++i) {
      const int32_t first = blocks.block_index[i] * B;
      const int32_t count = std::min(B, kv.num_tokens - first);
      const int32_t* table = &blocks.block_ids[i] - blocks.block_index[i];
      for (int32_t l = 0; l < spec_.num_layers; ++l) {
        for (int v = 0; v < 2; ++v) {
          float* pool = v ? cache.v(l) : cache.k(l);
          auto* host = static_cast<uint8_t*>(v ? kv.values[l] : kv.keys[l]) + host_off;
          if (load) {
            ops::cpu::kv_import(host, kv.dtype, kv.num_tokens, first, count, table, pool, stride, B,
                                heads, spec_.head_dim);
          } else {
            ops::cpu::kv_export(pool, stride, B, heads, spec_.head_dim, table, kv.num_tokens, first,
                                count, host, kv.dtype);
          }
        }
      }
    }
  }
}

Result<TransferId> TpCpuBackend::start_kv_load(const HostKv& src, const KvBlockList& blocks) {
  CS_RETURN_IF_ERROR(validate_transfer(src, blocks, spec_));
  return transfers_.start([this, src, blocks] {
    move_kv(src, blocks, /*load=*/true);
    return Status();
  });
}

Result<TransferId> TpCpuBackend::start_kv_save(const KvBlockList& blocks, const HostKv& dst) {
  CS_RETURN_IF_ERROR(validate_transfer(dst, blocks, spec_));
  return transfers_.start([this, dst, blocks] {
    move_kv(dst, blocks, /*load=*/false);
    return Status();
  });
}

std::optional<Status> TpCpuBackend::poll_transfer(TransferId id) {
  return transfers_.poll(id);
}

Status TpCpuBackend::wait_transfer(TransferId id) {
  return transfers_.wait(id);
}

}  // namespace cartserve
