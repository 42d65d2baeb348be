// Tensor parallelism on GPUs: N ranks, each a CudaBackend over its shard of
// the weights (runtime/cpu/tp_shard.h: the split of tp_plan.h, the same as
// the CPU's TpCpuBackend) with a KV pool holding only its KV heads, joined by
// a DeviceComm all-reduce after o_proj and down.
//
// NOTE: roles. As on the CPU: rank 0 is the calling (engine) thread, which
// also samples; ranks 1..N-1 are threads of this process, one per rank, each
// bound to its GPU, that run the same StepInput's forward pass (shared by
// reference) and nothing else; rank 0 then samples alone. Every step is
// validated once here against the engine's view before any rank starts, so
// either every rank reaches the all-reduces or none does; a rank whose
// forward pass still fails aborts the communicator (device_comm.h) and the
// backend fails every later step (sampling errors fail only their step).
// KV transfers are decided once by the engine and applied to every rank:
// rank r moves KV heads [kv_head_begin, kv_head_end) of the host KV (a
// contiguous run of the [heads, tokens, head_dim] layout), and each KV head
// is exported by the first rank holding it.
// Sizing: each rank sizes its own KV pool (per GPU, as --gpu-memory-
// utilization means); the engine sees the whole model's KV heads and the
// smallest rank's block count.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "runtime/backend.h"
#include "runtime/cpu/tp_plan.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/device_comm.h"
#include "runtime/rank_threads.h"
#include "runtime/transfer_queue.h"

namespace cartserve::cuda {

class TpCudaBackend final : public Backend {
 public:
  // Ranks on GPUs opts.device, opts.device + 1, ... through NCCL; with
  // `one_device`, every rank on opts.device through the one-device
  // all-reduce (needs an explicit KV size: kv_cache_tokens or _bytes).
  static Result<std::unique_ptr<TpCudaBackend>> create(const Model& model, int32_t tp_size,
                                                       const CudaOptions& opts,
                                                       bool one_device = false);
  ~TpCudaBackend() override;

  std::string name() const override { return name_; }
  const KvSpec& kv_spec() const override { return spec_; }
  Status execute(const StepInput& in, StepOutput& out) override;
  Status logits(const StepInput& in, std::vector<float>& out) override;
  std::shared_ptr<void> host_buffer(size_t bytes) override;
  Result<TransferId> start_kv_load(const HostKv& src, const KvBlockList& blocks) override;
  Result<TransferId> start_kv_save(const KvBlockList& blocks, const HostKv& dst) override;
  std::optional<Status> poll_transfer(TransferId id) override;
  Status wait_transfer(TransferId id) override;
  void set_transfer_wakeup(std::function<void()> wake) override {
    transfers_.set_on_done(std::move(wake));
  }

  const TpPlan& plan() const { return plan_; }

 private:
  struct Rank {
    std::unique_ptr<Model> shard;
    std::unique_ptr<CudaBackend> backend;
  };

  TpCudaBackend(const Model& model, TpPlan plan);
  // Every rank runs `in`'s forward pass; then rank 0 runs `rank0` (sampling
  // or logits; the logit rows include prompt-logprob rows with `prompt_rows`).
  Status run(const StepInput& in, bool prompt_rows,
             const std::function<Status(CudaBackend&)>& rank0);
  // Rank r's slice of the whole model's host KV: its KV heads.
  HostKv rank_view(const HostKv& kv, int32_t rank) const;
  Status move_kv(const HostKv& kv, const KvBlockList& blocks, bool load);

  const Model& model_;
  TpPlan plan_;
  KvSpec spec_;
  std::string name_;
  std::unique_ptr<DeviceComm> comm_;
  std::vector<Rank> ranks_;               // [N]
  bool failed_ = false;                   // a rank failed inside a step: the comm is aborted
  std::unique_ptr<RankThreads> threads_;  // ranks 1..N-1, each bound to its GPU

  TransferQueue transfers_;  // declared last: its jobs use the ranks
};

}  // namespace cartserve::cuda
