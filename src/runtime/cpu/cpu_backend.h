// The CPU backend: the fp32 forward pass (LlamaForward) over a host KV cache
// with per-layer storage [num_blocks * block_size, kv_dim], the CPU sampler,
// and KV transfers run by a copy thread (the CPU's "copy stream").
#pragma once

#include <memory>

#include "runtime/backend.h"
#include "runtime/cpu/kv_cache.h"
#include "runtime/cpu/llama_forward.h"
#include "runtime/cpu/sampler.h"
#include "runtime/transfer_queue.h"

namespace cartserve {

class CpuBackend final : public Backend {
 public:
  // KV blocks of `block_size` positions in fp32, as many as `budget` says
  // (at least 2). kInvalidArgument when fewer fit.
  static Result<std::unique_ptr<CpuBackend>> create(const Model& model, int32_t block_size,
                                                    const KvBudget& budget);
  ~CpuBackend() override;

  std::string name() const override { return "cpu"; }
  const KvSpec& kv_spec() const override { return spec_; }
  Status execute(const StepInput& in, StepOutput& out) override;
  Status logits(const StepInput& in, std::vector<float>& out) override;
  Result<TransferId> start_kv_load(const HostKv& src, const KvBlockList& blocks) override;
  Result<TransferId> start_kv_save(const KvBlockList& blocks, const HostKv& dst) override;
  std::optional<Status> poll_transfer(TransferId id) override;
  Status wait_transfer(TransferId id) override;
  void set_transfer_wakeup(std::function<void()> wake) override {
    transfers_.set_on_done(std::move(wake));
  }

  // Every named intermediate of the forward pass (golden dumps, debugging).
  void set_dump(TensorDumpFn fn) { forward_.set_dump(std::move(fn)); }

 private:
  CpuBackend(const Model& model, const KvSpec& spec);
  void copy_blocks(const std::vector<BlockCopy>& copies);
  // Host KV into (load) or out of the blocks (runs on the transfer thread).
  void move_kv(const HostKv& kv, const KvBlockList& blocks, bool load);
  // Block copies and the forward pass; logits of the sampled rows, then of
  // the prompt-logprob rows when `prompt_rows`.
  Status run(const StepInput& in, bool prompt_rows, std::vector<float>& logits);

  const Model& model_;
  KvSpec spec_;
  LlamaForward forward_;
  KvCache cache_;
  Sampler sampler_;
  std::vector<int32_t> logit_rows_;  // [samples + prompt logprob rows] of the current step
  std::vector<float> logits_;        // [logit_rows_.size(), vocab]

  TransferQueue transfers_;  // declared last: its jobs use the cache
};

}  // namespace cartserve
