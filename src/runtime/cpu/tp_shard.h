// One rank's part of a model under a tensor-parallel plan (tp_plan.h): a
// Model whose config counts the rank's heads and intermediate slice and whose
// weights are the rank's slices, so that LlamaForward runs it unchanged (plus
// the all-reduce after o_proj and down: LlamaForward::set_all_reduce).
//
// NOTE: slices.
//  - Column-parallel (output rows of the HF [out, in] matrix): wq/bq by the
//    rank's q heads, wk/wv/bk/bv by its KV heads, w_gate/w_up by its
//    intermediate slice. Whole rows: any dtype, block-quantized included.
//  - Row-parallel (input columns): wo by the q heads' columns, w_down by the
//    intermediate slice. A block-quantized matrix keeps its blocks when the
//    slice starts and ends on block boundaries (multiples of 32, or 256 for
//    the K-quants); otherwise the slice is dequantized to fp32 (exact values,
//    fp32 compute for that matrix on that rank; logged at info level).
//  - Shared by every rank (same storage): embedding, norms, q/k norm, LM head.
#pragma once

#include <memory>

#include "core/status.h"
#include "model/model.h"
#include "runtime/cpu/tp_plan.h"

namespace cartserve {

// `rank`'s shard of `model` (which must outlive it: shared tensors alias it).
// The shard has no tokenizer; config.num_heads / num_kv_heads /
// intermediate_size are the rank's.
Result<std::unique_ptr<Model>> make_tp_shard(const Model& model, const TpPlan& plan, int32_t rank);

// The MLP alignment a plan needs for `model`'s w_down to stay quantized:
// its block size when block-quantized, else 1.
int32_t tp_ff_align(const Model& model);

// Rows [r0, r0 + n) / columns [c0, c0 + n) of a 2-D weight (fp32, bf16 or
// block-quantized). Exposed for tests.
Tensor tp_slice_rows(const Tensor& w, int64_t r0, int64_t n);
Tensor tp_slice_cols(const Tensor& w, int64_t c0, int64_t n, bool* dequantized = nullptr);

}  // namespace cartserve
