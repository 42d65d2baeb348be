#include "runtime/cpu/cpu_backend.h"

#include <cstring>

#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace cartserve {

Result<std::unique_ptr<CpuBackend>> CpuBackend::create(const Model& model, int32_t block_size,
                                                       const KvBudget& budget) {
  KvSpec spec;
  spec.dtype = DType::kF32;
  spec.block_size = block_size;
  spec.num_layers = model.config.num_layers;
  spec.num_kv_heads = model.config.num_kv_heads;
  spec.head_dim = model.config.head_dim;
  if (block_size < 1) {
    return make_error(ErrorCode::kInvalidArgument, "block size {} must be >= 1", block_size);
  }
  const int64_t blocks = budget.num_blocks(spec);
  if (blocks < 2) {
    return make_error(ErrorCode::kInvalidArgument,
                      "{} bytes of KV cache hold {} blocks of {} bytes; at least 2 are needed",
                      budget.bytes, blocks, spec.bytes_per_block());
  }
  spec.num_blocks = static_cast<int32_t>(std::min<int64_t>(blocks, 1 << 30));
  return std::unique_ptr<CpuBackend>(new CpuBackend(model, spec));
}

CpuBackend::CpuBackend(const Model& model, const KvSpec& spec)
    : model_(model),
      spec_(spec),
      forward_(model),
      cache_(spec.num_layers, spec.num_blocks, spec.block_size, spec.kv_dim()),
      sampler_(&ThreadPool::global()) {}

CpuBackend::~CpuBackend() = default;

void CpuBackend::copy_blocks(const std::vector<BlockCopy>& copies) {
  const size_t row = static_cast<size_t>(cache_.kv_dim());
  for (const BlockCopy& c : copies) {
    const size_t src = static_cast<size_t>(c.src_block) * cache_.block_size() * row;
    const size_t dst = static_cast<size_t>(c.dst_block) * cache_.block_size() * row;
    const size_t n = static_cast<size_t>(c.num_slots) * row * sizeof(float);
    for (int l = 0; l < cache_.num_layers(); ++l) {
      std::memmove(cache_.k(l) + dst, cache_.k(l) + src, n);
      std::memmove(cache_.v(l) + dst, cache_.v(l) + src, n);
    }
  }
}

Status CpuBackend::run(const StepInput& in, bool prompt_rows, std::vector<float>& logits) {
  for (const BlockCopy& c : in.block_copies) {
    if (c.src_block <= 0 || c.src_block >= spec_.num_blocks || c.dst_block <= 0 ||
        c.dst_block >= spec_.num_blocks || c.num_slots < 0 || c.num_slots > spec_.block_size) {
      return make_error(ErrorCode::kInvalidArgument, "block copy {} -> {} of {} slots is invalid",
                        c.src_block, c.dst_block, c.num_slots);
    }
  }
  // Logits of the sampled rows, then (when asked) of every prompt-logprob row.
  logit_rows(in, prompt_rows, logit_rows_);
  copy_blocks(in.block_copies);
  return forward_.forward(in, logit_rows_, cache_, logits);
}

Status CpuBackend::logits(const StepInput& in, std::vector<float>& out) {
  return run(in, /*prompt_rows=*/false, out);
}

Status CpuBackend::execute(const StepInput& in, StepOutput& out) {
  CS_RETURN_IF_ERROR(run(in, /*prompt_rows=*/true, logits_));
  return sampler_.step_outputs(logits_, model_.config.vocab_size, in, out);
}

// ---------------------------------------------------------------- transfers

void CpuBackend::move_kv(const HostKv& kv, const KvBlockList& blocks, bool load) {
  const int32_t B = spec_.block_size;
  const int64_t stride = static_cast<int64_t>(B) * spec_.kv_dim();
  for (size_t i = 0; i < blocks.block_ids.size(); ++i) {
    const int32_t first = blocks.block_index[i] * B;
    const int32_t count = std::min(B, kv.num_tokens - first);
    // Position p of this run lands in block block_ids[i]: a one-entry table
    // indexed by p / B - block_index[i] (the ops index from `first`).
    const int32_t* table = &blocks.block_ids[i] - blocks.block_index[i];
    for (int32_t l = 0; l < spec_.num_layers; ++l) {
      for (int v = 0; v < 2; ++v) {
        float* cache = v ? cache_.v(l) : cache_.k(l);
        void* host = v ? kv.values[l] : kv.keys[l];
        if (load) {
          ops::cpu::kv_import(host, kv.dtype, kv.num_tokens, first, count, table, cache, stride, B,
                              spec_.num_kv_heads, spec_.head_dim);
        } else {
          ops::cpu::kv_export(cache, stride, B, spec_.num_kv_heads, spec_.head_dim, table,
                              kv.num_tokens, first, count, host, kv.dtype);
        }
      }
    }
  }
}

Result<TransferId> CpuBackend::start_kv_load(const HostKv& src, const KvBlockList& blocks) {
  CS_RETURN_IF_ERROR(validate_transfer(src, blocks, spec_));
  return transfers_.start([this, src, blocks] {
    move_kv(src, blocks, /*load=*/true);
    return Status();
  });
}

Result<TransferId> CpuBackend::start_kv_save(const KvBlockList& blocks, const HostKv& dst) {
  CS_RETURN_IF_ERROR(validate_transfer(dst, blocks, spec_));
  return transfers_.start([this, dst, blocks] {
    move_kv(dst, blocks, /*load=*/false);
    return Status();
  });
}

std::optional<Status> CpuBackend::poll_transfer(TransferId id) {
  return transfers_.poll(id);
}

Status CpuBackend::wait_transfer(TransferId id) {
  return transfers_.wait(id);
}

}  // namespace cartserve
