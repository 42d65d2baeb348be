// Llama-family forward pass (Llama 2/3.x, SmolLM2, Mistral, Qwen2 via the
// attention_bias flag, Qwen3 via qk_norm) on the CPU reference kernels, over a paged KV cache.
//
// One call runs any mix of prefill chunks and decode tokens: rows of the
// step are tokens; each sequence owns a contiguous run of rows (see
// runtime/step.h).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <span>
#include "core/status.h"

#include "kernels/ops.h"
#include "model/model.h"
#include "runtime/cpu/kv_cache.h"
#include "runtime/step.h"

namespace cartserve {

// Called with every named intermediate when set (debugging, golden dumps).
// name: "embed", "attn_norm", "q", "k", "v", "attn_out", "attn_proj", "ffn_norm", "ffn_out",
// "hidden" (after each layer), "final_norm"; layer = -1 for model-level tensors.
using TensorDumpFn =
    std::function<void(const std::string& name, int layer, const float* data, int rows, int cols)>;

class LlamaForward {
 public:
  explicit LlamaForward(const Model& model);

  // Runs every row of `in` (its KV written to `cache`); logits: resized to
  // [logit_rows.size(), vocab]. Validates token ids, slots, block tables and
  // logit rows against the cache before touching it.
  Status forward(const StepInput& in, std::span<const int32_t> logit_rows, KvCache& cache,
                 std::vector<float>& logits);

  void set_dump(TensorDumpFn fn) { dump_ = std::move(fn); }
  // Tensor parallelism (runtime/cpu/tp_backend.h): called on the [n, hidden]
  // o_proj and down outputs, a rank's partial sums, to sum them over the ranks.
  using AllReduceFn = std::function<void(float* data, size_t n)>;
  void set_all_reduce(AllReduceFn fn) { all_reduce_ = std::move(fn); }
  const Model& model() const { return model_; }

 private:
  void dump(const char* name, int layer, const std::vector<float>& buf, int rows, int cols);
  // y[n, out] = x[n, in] @ w^T (+ bias) over the step's rows, each run of
  // rows through the kernel of its kind (rows_).
  void linear(const float* x, const Tensor& w, const float* bias, float* y, int in_dim,
              int out_dim) const;

  // Consecutive rows of one kind: prompt rows take sgemm, generated rows the
  // per-row kernel, whatever else the step holds (StepInput::prompt_rows).
  struct RowRun {
    int begin = 0, end = 0;
    ops::cpu::LinearKernel kernel = ops::cpu::LinearKernel::kAuto;
  };

  const Model& model_;
  std::vector<float> inv_freq_;  // [head_dim / 2]
  TensorDumpFn dump_;
  AllReduceFn all_reduce_;
  // Scratch, reused across calls.
  std::vector<float> x_;            // [n, hidden] residual stream
  std::vector<float> xn_;           // [n, hidden] normed
  std::vector<float> q_;            // [n, q_dim]
  std::vector<float> k_;            // [n, kv_dim]
  std::vector<float> v_;            // [n, kv_dim]
  std::vector<float> attn_;         // [n, q_dim]
  std::vector<float> proj_;         // [n, hidden]
  std::vector<float> gate_;         // [n, intermediate]
  std::vector<float> up_;           // [n, intermediate]
  std::vector<float> last_;         // [n_logits, hidden]
  std::vector<ops::AttnSeq> seqs_;  // [num_seqs] views of the step's block table
  std::vector<RowRun> rows_;        // the step's rows [0, n) in runs
};

}  // namespace cartserve
