#include "model/weights_loader.h"

#include "core/progress.h"
#include "core/thread_pool.h"
#include "kernels/quant_ops.h"

namespace cartserve {

namespace {

Result<Tensor> load_checked(const TensorSource& src, const std::string& logical, int layer,
                            const Shape& want) {
  CS_ASSIGN_OR_RETURN(Tensor t, src.load(logical, layer));
  if (t.shape() != want) {
    return make_error(ErrorCode::kInvalidArgument, "{}tensor '{}' has shape {}, expected {} ({})",
                      layer >= 0 ? "layer " + std::to_string(layer) + ": " : "", logical,
                      shape_to_string(t.shape()), shape_to_string(want), src.describe());
  }
  return t;
}

// fp32 -> bf16, round to nearest even.
Tensor to_bf16(const Tensor& t) {
  Tensor out(DType::kBF16, t.shape());
  const float* src = t.data<float>();
  uint16_t* dst = out.data<uint16_t>();
  ThreadPool::global().parallel_for(
      static_cast<size_t>(t.numel()),
      [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i)
          dst[i] = f32_to_bf16(src[i]);
      },
      1 << 16);
  return out;
}

// The source's block-quantized matrix when it has one (shape checked: rows
// and the bytes of a row of want[1] elements); an empty tensor otherwise.
Result<Tensor> load_blocks_checked(const TensorSource& src, const std::string& logical, int layer,
                                   const Shape& want) {
  CS_ASSIGN_OR_RETURN(Tensor t, src.load_blocks(logical, layer));
  if (t.empty()) return t;
  ops::QuantType qt;
  const bool known = ops::quant_type_from_ggml(t.block_type(), &qt);
  if (!known || t.dim(0) != want[0] || want[1] % ops::quant_block_elems(qt) != 0 ||
      static_cast<size_t>(t.dim(1)) != ops::quant_row_bytes(qt, want[1])) {
    return make_error(ErrorCode::kInvalidArgument,
                      "{}tensor '{}' (block-quantized, {} rows of {} bytes) does not hold a matrix "
                      "of shape {} ({})",
                      layer >= 0 ? "layer " + std::to_string(layer) + ": " : "", logical, t.dim(0),
                      t.dim(1), shape_to_string(want), src.describe());
  }
  return t;
}

}  // namespace

Result<ModelWeights> load_weights(const TensorSource& src, const ModelConfig& c, bool progress,
                                  DType matrix_dtype, bool keep_blocks) {
  if (matrix_dtype != DType::kF32 && matrix_dtype != DType::kBF16) {
    return make_error(ErrorCode::kInvalidArgument,
                      "weights can be stored as float32 or bfloat16, not {}",
                      dtype_name(matrix_dtype));
  }
  // A matrix as loaded (fp32) in the storage asked for.
  auto matrix = [&](Tensor t) { return matrix_dtype == DType::kBF16 ? to_bf16(t) : t; };
  // A linear layer's matrix: in its block format when kept, else as above.
  auto load_matrix = [&](const std::string& logical, int layer, const Shape& want,
                         Tensor& out) -> Status {
    if (keep_blocks) {
      CS_ASSIGN_OR_RETURN(out, load_blocks_checked(src, logical, layer, want));
      if (!out.empty()) return {};
    }
    CS_ASSIGN_OR_RETURN(out, load_checked(src, logical, layer, want));
    out = matrix(std::move(out));
    return {};
  };
  const int64_t h = c.hidden_size;
  const int64_t q = c.q_dim();
  const int64_t kv = c.kv_dim();
  const int64_t ff = c.intermediate_size;
  ModelWeights w;
  ProgressBar bar("loading weights", static_cast<uint64_t>(c.num_layers) + 2);
  if (!progress) bar.finish();

  // Kept blocks: lookups dequantize a row (ops::cpu::embedding_blocks).
  if (keep_blocks) {
    CS_ASSIGN_OR_RETURN(w.embed, load_blocks_checked(src, "embed", -1, {c.vocab_size, h}));
  }
  if (w.embed.empty()) {
    CS_ASSIGN_OR_RETURN(w.embed, load_checked(src, "embed", -1, {c.vocab_size, h}));
  }
  CS_ASSIGN_OR_RETURN(w.final_norm, load_checked(src, "final_norm", -1, {h}));
  if (src.has("lm_head", -1)) {
    CS_RETURN_IF_ERROR(load_matrix("lm_head", -1, {c.vocab_size, h}, w.lm_head));
  } else if (c.tie_word_embeddings) {
    // Shared storage in fp32 or blocks; a bf16 copy otherwise (lookups stay fp32).
    w.lm_head = w.embed.block_type() != 0 ? w.embed : matrix(w.embed);
  } else {
    return src.load("lm_head", -1)
        .status()
        .with_context("untied model (tie_word_embeddings=false) without an output projection");
  }
  if (src.has("rope_freqs", -1)) {
    CS_ASSIGN_OR_RETURN(Tensor f, load_checked(src, "rope_freqs", -1, {c.head_dim / 2}));
    w.rope_freq_factors.assign(f.data<float>(), f.data<float>() + f.numel());
  }
  bar.update(2);

  w.layers.resize(static_cast<size_t>(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = w.layers[i];
    CS_ASSIGN_OR_RETURN(l.attn_norm, load_checked(src, "attn_norm", i, {h}));
    CS_RETURN_IF_ERROR(load_matrix("wq", i, {q, h}, l.wq));
    CS_RETURN_IF_ERROR(load_matrix("wk", i, {kv, h}, l.wk));
    CS_RETURN_IF_ERROR(load_matrix("wv", i, {kv, h}, l.wv));
    CS_RETURN_IF_ERROR(load_matrix("wo", i, {h, q}, l.wo));
    if (c.attention_bias) {
      CS_ASSIGN_OR_RETURN(l.bq, load_checked(src, "bq", i, {q}));
      CS_ASSIGN_OR_RETURN(l.bk, load_checked(src, "bk", i, {kv}));
      CS_ASSIGN_OR_RETURN(l.bv, load_checked(src, "bv", i, {kv}));
    }
    if (c.qk_norm) {
      CS_ASSIGN_OR_RETURN(l.q_norm, load_checked(src, "q_norm", i, {c.head_dim}));
      CS_ASSIGN_OR_RETURN(l.k_norm, load_checked(src, "k_norm", i, {c.head_dim}));
    }
    CS_ASSIGN_OR_RETURN(l.ffn_norm, load_checked(src, "ffn_norm", i, {h}));
    CS_RETURN_IF_ERROR(load_matrix("w_gate", i, {ff, h}, l.w_gate));
    CS_RETURN_IF_ERROR(load_matrix("w_up", i, {ff, h}, l.w_up));
    CS_RETURN_IF_ERROR(load_matrix("w_down", i, {h, ff}, l.w_down));
    bar.update(static_cast<uint64_t>(i) + 3);
  }
  bar.finish();
  return w;
}

}  // namespace cartserve
