// The CUDA backend: bf16 weights in one device allocation, the paged KV pool
// in another (block-major, see kernels/cuda_ops.h), persistent step buffers,
// the forward pass through cuBLASLt GEMMs and the bf16 kernels, sampling on
// the device; only token ids and requested logprobs come back.
//
// NOTE: streams. Steps run on the compute stream; KV transfers run on the
// copy stream, driven by the transfer thread (host staging in pinned memory,
// a device staging buffer, then kv_import / kv_export into or out of the
// blocks). A transfer's blocks are never touched by a step while it runs
// (the device tier and the engine guarantee it), so the streams need no
// ordering between them.
//
// Memory at start-up (vLLM's --gpu-memory-utilization): weights, then the
// step buffers sized for max_num_batched_tokens and max_num_seqs, then the
// KV pool takes what is left of utilization x total memory. No allocation
// happens inside a step.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/env.h"
#include "kernels/cuda_ops.h"
#include "model/model.h"
#include "runtime/backend.h"
#include "runtime/cascade_plan.h"
#include "runtime/cuda/device_weights.h"
#include "runtime/cuda/gemm.h"
#include "runtime/transfer_queue.h"

namespace cartserve::cuda {

struct CudaOptions {
  int device = 0;
  int32_t block_size = 16;
  double gpu_memory_utilization = 0.9;
  // Instead of the utilization: room for this many positions, or this many bytes.
  int64_t kv_cache_tokens = 0;
  uint64_t kv_cache_bytes = 0;
  int32_t max_num_batched_tokens = 2048;
  int32_t max_num_seqs = 256;
  int32_t max_model_len = 4096;
  bool cuda_graphs = true;  // decode steps replay captured graphs (--enforce-eager: off)
  // Shared-prefix decode attention (runtime/cascade_plan.h) for sequences
  // whose shared prefix (StepInput::shared_prefix) is at least this many
  // positions; 0: off.
  int32_t cascade_min_prefix = 256;
  // The shared-prefix kernel on a side stream beside the decode kernel's
  // splits (fork/join events, captured by decode graphs), the merge waiting
  // for it; else before them on the compute stream. Default from
  // CARTSERVE_CASCADE_SIDE_STREAM=1 (off until measured on a GPU).
  bool cascade_side_stream = cascade_side_stream_by_default();
  static bool cascade_side_stream_by_default();
  // KV loads from page-locked host memory: the import kernel reads the host
  // tensors over the bus itself (mapped memory, no DMA, no staging) instead
  // of a DMA into a staging buffer and an import from it. Default from
  // CARTSERVE_KV_LOAD_DIRECT=1. Off by default: on an H100 it loaded only
  // 5% faster (46.3 vs 44.1 GB/s) and holds SMs for the whole copy, where
  // the DMA leaves them to the decode steps running beside a promotion.
  bool kv_load_direct = kv_load_direct_by_default();
  static bool kv_load_direct_by_default();
  // Between two linear layers, up to this many bytes of the next one's
  // weights are prefetched into L2 (ops::prefetch_l2 on a side stream, forked
  // when the GEMM before completes) while the small kernels between them
  // run; 0: off. Default from CARTSERVE_L2_PREFETCH_MB (MiB). Off: on an
  // H100 it gained nothing with cuBLASLt (batch 1 3.25-3.39 vs 3.27
  // ms/step at 8-64 MiB, batch 64 slower) and 2% with the gemv
  // (bench/results/gpu-h100-2026-12-07-1515.json).
  uint64_t l2_prefetch_bytes = l2_prefetch_bytes_by_default();
  static uint64_t l2_prefetch_bytes_by_default();
  // The norm-folded forward (CudaBackend::layers): a bf16 residual stream,
  // the RMSNorm weights folded into the QKV and gate/up weights, inv_rms
  // applied by the kernels after those projections (RoPE, SwiGLU), and the
  // residual adds done by the o and down projections (cuBLASLt beta = 1):
  // two kernels less per layer. Taken only when every GEMM goes to cuBLASLt
  // (Gemm::plain_by_default) and there is no all-reduce (TP = 1). Default
  // on; CARTSERVE_FOLD_NORMS=0 keeps the fp32 residual and add_rms_norm.
  bool fold_norms = fold_norms_by_default();
  static bool fold_norms_by_default();
  // Decode steps of up to ops::cuda::kPersistentMaxRows sequences run every
  // layer in one persistent kernel (ops::cuda::decode_layers_persistent: five
  // phases per layer between grid-wide barriers instead of ~7 kernels, the
  // next weights asked of L2 before each barrier). Needs the folded forward
  // and shapes it supports; a sequence's bits are then the same at 1..4
  // rows but not those of the per-op path. Default from
  // CARTSERVE_PERSISTENT_DECODE=1 (off until measured on a GPU).
  bool persistent_decode = persistent_decode_by_default();
  static bool persistent_decode_by_default();
  // Bytes of its next weight slice each CTA of that kernel prefetches into
  // L2 before a barrier (4x before attention, which reads no weights); 0:
  // none. Default from CARTSERVE_PERSISTENT_PREFETCH_KB (64: 8 MiB over 132 SMs,
  // about the bytes HBM moves during a barrier).
  int persistent_prefetch_bytes = persistent_prefetch_bytes_by_default();
  static int persistent_prefetch_bytes_by_default();
  // CTAs of that kernel (0: one per SM). Fewer make its barriers cheaper and
  // each CTA's share of the weights larger. Default from
  // CARTSERVE_PERSISTENT_CTAS.
  int persistent_ctas = persistent_ctas_by_default();
  static int persistent_ctas_by_default();
  // Its CTAs stamp the global timer at every barrier (ops::cuda::
  // PersistentDecode::timeline; CudaBackend::persistent_timeline reads the
  // last step's). Default from CARTSERVE_PERSISTENT_TIMELINE=1.
  bool persistent_timeline = env_flag("CARTSERVE_PERSISTENT_TIMELINE");
};

class CudaBackend final : public Backend {
 public:
  static Result<std::unique_ptr<CudaBackend>> create(const Model& model, const CudaOptions& opts);
  ~CudaBackend() override;

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
    transfers_->set_on_done(std::move(wake));
  }

  uint64_t weight_bytes() const { return weights_.nbytes(); }
  // Whether the forward is the norm-folded one (CudaOptions::fold_norms).
  bool folded_norms() const { return weights_.folded_norms; }
  // Whether decode steps of up to 4 sequences take the persistent kernel
  // (CudaOptions::persistent_decode, when the model and device allow it).
  bool persistent_decode() const { return persistent_; }
  int persistent_ctas() const { return persistent_ctas_; }
  // The last persistent step's stamps (CudaOptions::persistent_timeline;
  // empty without): kernels/persistent_timeline.h reads them. Waits for the
  // compute stream.
  Result<std::vector<uint64_t>> persistent_timeline();

  // Tensor parallelism (tp_cuda_backend.h): called after o_proj and after
  // down with the layer's partial output [count] bf16, to turn it into the
  // sum over the ranks in place on `s`. Set before the first step; a
  // collective that cannot be captured needs CudaOptions::cuda_graphs off.
  using AllReduce = std::function<Status(bf16* data, size_t count, cudaStream_t s)>;
  void set_all_reduce(AllReduce f) { all_reduce_ = std::move(f); }
  // A step's forward pass alone, returning once the device has run it; then
  // (tensor parallel rank 0) the rest of execute() or logits() over it. The
  // caller has validated the step (TpCudaBackend: once for every rank).
  Status forward_only(const StepInput& in);
  Status sample_after_forward(const StepInput& in, StepOutput& out);
  Status logits_after_forward(const StepInput& in, std::vector<float>& out);

 private:
  struct Buffers;
  // What one forward pass runs over: device inputs and the attention batch.
  struct Shape {
    const int32_t* ids = nullptr;    // [n]
    const int32_t* pos = nullptr;    // [n]
    const int32_t* slots = nullptr;  // [n]
    ops::cuda::AttnBatch batch;
    bool decode = false;
    bool persistent = false;  // the layers run in the persistent kernel (persistent_step)
    int splits = 1;           // attention's split-KV count (decode or prefill kernel)
    int decode_splits = 1;    // a mixed step's: for its shared-prefix decode rows
    // Shared-prefix decode rows (runtime/cascade_plan.h): the work list and
    // each sequence's prefix length (device); cascade.items == nullptr: none.
    ops::cuda::CascadeWork cascade;
    const int32_t* prefix_len = nullptr;
    int cascade_ctas = 0;
    // The rows in runs of one kind, in order, covering [0, n): decode rows
    // go through Gemm's batch-invariant path, prompt rows through cuBLASLt.
    struct Run {
      int first = 0, count = 0;
      bool decode = false;
    };
    std::vector<Run> runs;
  };
  CudaBackend(const Model& model, const CudaOptions& opts, DeviceWeights weights);
  Status allocate(uint64_t kv_bytes);
  // Uploads the step's arrays, applies its block copies and runs every row;
  // the final hidden states are in x_.
  Status forward(const StepInput& in);
  // Decode steps through the graph of their bucket (see the NOTE in the .cpp).
  Status forward_decode(const StepInput& in);
  // Plans a decode step's shared-prefix attention into cascade_plan_ (false:
  // none).
  bool plan_step_cascade(const StepInput& in);
  // Whether the step's layers run in the persistent kernel (decode rows, at
  // most kPersistentMaxRows of them, CudaOptions::persistent_decode on).
  bool persistent_step(const StepInput& in) const {
    return persistent_ && in.max_query_len == 1 &&
           in.num_tokens() <= ops::cuda::kPersistentMaxRows && !all_reduce_;
  }
  // Writes that plan for the device at h / d (4-int aligned; room for
  // cap_items items and num_seqs >= the step's sequences, the rest padding);
  // returns the ints written.
  size_t put_cascade(int32_t* h, const int32_t* d, int32_t num_seqs, int32_t cap_items,
                     Shape& sh) const;
  // Layer l's K and V in the pool (block-major, see the pool's layout).
  ops::cuda::KvLayer kv_layer(int32_t l) const;
  // Embedding, every layer and the last residual add, on the compute stream.
  Status layers(const Shape& sh);
  // Logits [n, vocab] fp32 in the logits buffer of the rows at d_rows (device) of x.
  Status head(const int32_t* d_rows, int n);
  // The same for host rows (n <= the buffer's rows), uploaded with their
  // targets (prompt logprobs; may be null) to the input area's last rows.
  Status head_rows(const int32_t* rows, int n, const int32_t* targets);
  Status sample(const StepInput& in, StepOutput& out);
  Status prompt_logprobs(const StepInput& in, StepOutput& out);
  Status transfer(const HostKv& kv, const KvBlockList& blocks, bool load);

  const Model& model_;
  CudaOptions opts_;
  std::string name_;
  KvSpec spec_;
  int num_sms_ = 0;
  DeviceWeights weights_;
  std::unique_ptr<Buffers> buf_;
  std::unique_ptr<Gemm> gemm_;
  cudaStream_t compute_ = nullptr;
  cudaStream_t copy_ = nullptr;
  // With CudaOptions::cascade_side_stream, the shared-prefix attention kernel
  // runs on side_ beside the decode kernel's splits on compute_: forked at
  // fork_, joined at join_ before the merge (decode graphs capture both
  // branches).
  cudaStream_t side_ = nullptr;
  cudaEvent_t fork_ = nullptr, join_ = nullptr;
  // CudaOptions::l2_prefetch_bytes: the prefetches run on prefetch_, each
  // forked from compute_ at prefetch_fork_; layers() joins them back at
  // prefetch_join_ (decode graphs capture the branch).
  cudaStream_t prefetch_ = nullptr;
  cudaEvent_t prefetch_fork_ = nullptr, prefetch_join_ = nullptr;
  // Decode graphs by bucket: (seqs, blocks per sequence, shared-prefix attention or not).
  using GraphKey = std::tuple<int32_t, int32_t, bool>;
  std::map<GraphKey, cudaGraphExec_t> graphs_;
  std::set<GraphKey> graph_seen_;  // buckets run once eagerly
  CascadePlan cascade_plan_;       // the decode step's (reused)
  bool cascade_ok_ = false;        // the model's shapes and buffers suit cascade_prefix_attention
  std::unique_ptr<TransferQueue> transfers_;  // its jobs use the copy stream and staging
  AllReduce all_reduce_;                      // tensor parallelism only
  bool persistent_ = false;                   // CudaOptions::persistent_decode in effect
  int persistent_ctas_ = 0;                   // its grid
};

}  // namespace cartserve::cuda
