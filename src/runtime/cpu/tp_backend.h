// Tensor parallelism on the CPU: N ranks as threads of one process, each with
// its shard of the weights (tp_shard.h), its own LlamaForward and its own KV
// pool holding only its KV heads, joined by an in-process all-reduce
// (tp_comm.h). The split is the GPUs' (tp_plan.h): this backend is how CI
// checks it, and how --tensor-parallel-size N runs with --device cpu.
//
// NOTE: roles. Rank 0 is the calling (engine) thread: the engine, scheduler
// and cartridge residency live there; each step's StepInput is handed to the
// other ranks (in process, by reference; a GPU build would send its arrays),
// every rank runs the forward, rank 0 alone computes logits and samples.
// KV transfers (cartridge loads and exports) are decided once, by the engine,
// and applied to every rank's pool: rank r imports KV heads [kv_head_begin,
// kv_head_end) of the host KV (a cartridge stays whole in memory and on
// disk), and each KV head is exported by the first rank holding it.
// Sizing: the KV budget is per rank (as memory is per GPU); KvSpec describes
// the whole model's KV (all heads), the shape cartridges and the block pool
// see.
#pragma once

#include <memory>
#include <vector>

#include "runtime/backend.h"
#include "runtime/cpu/kv_cache.h"
#include "runtime/cpu/llama_forward.h"
#include "runtime/cpu/sampler.h"
#include "runtime/cpu/tp_comm.h"
#include "runtime/cpu/tp_plan.h"
#include "runtime/rank_threads.h"
#include "runtime/transfer_queue.h"

namespace cartserve {

class TpCpuBackend final : public Backend {
 public:
  // kInvalidArgument for a size the model cannot split (make_tp_plan) or a
  // budget of fewer than 2 blocks per rank.
  static Result<std::unique_ptr<TpCpuBackend>> create(const Model& model, int32_t tp_size,
                                                      int32_t block_size, const KvBudget& budget);
  ~TpCpuBackend() override;

  std::string name() const override;
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

  const TpPlan& plan() const { return plan_; }

 private:
  struct Rank {
    std::unique_ptr<Model> shard;
    std::unique_ptr<LlamaForward> forward;
    std::unique_ptr<KvCache> cache;
    std::vector<float> logits;  // ranks > 0: stays empty
  };

  TpCpuBackend(const Model& model, TpPlan plan, const KvSpec& spec);
  // Block copies and the forward pass of one rank over the current step.
  Status run_rank(int32_t rank, const StepInput& in, std::span<const int32_t> logit_rows);
  // Every rank runs `in`; rank 0's logits of `prompt_rows`' rows into `logits`.
  Status run(const StepInput& in, bool prompt_rows, std::vector<float>& logits);
  void move_kv(const HostKv& kv, const KvBlockList& blocks, bool load);

  const Model& model_;
  TpPlan plan_;
  KvSpec spec_;
  InProcessComm comm_;
  std::vector<Rank> ranks_;  // [N]
  Sampler sampler_;
  std::vector<int32_t> logit_rows_;
  std::vector<float> logits_;
  RankThreads threads_;  // ranks 1..N-1 (after ranks_: joined before they go)

  TransferQueue transfers_;  // declared last: its jobs use the caches
};

}  // namespace cartserve
