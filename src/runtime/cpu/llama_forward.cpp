#include "runtime/cpu/llama_forward.h"

#include <cmath>

#include "kernels/quant_ops.h"
#include "model/rope.h"

namespace cartserve {

namespace {

// A block-quantized matrix [rows, cols] (Tensor::block_type) for the kernels.
ops::QuantMatrix quant_matrix(const Tensor& w, int64_t rows, int64_t cols) {
  ops::QuantType t = ops::QuantType::kQ8_0;
  ops::quant_type_from_ggml(w.block_type(), &t);  // the loader checked it
  return {t, w.data<uint8_t>(), rows, cols, static_cast<size_t>(w.dim(1))};
}

// y[n, out] = x[n, in] @ w^T (+ bias), w fp32, bf16 or block-quantized [out, in].
void linear_rows(const float* x, const Tensor& w, const float* bias, float* y, int n, int in_dim,
                 int out_dim, ops::cpu::LinearKernel kernel) {
  if (w.block_type() != 0) {
    ops::cpu::linear_quant(x, quant_matrix(w, out_dim, in_dim), bias, y, n, kernel);
  } else if (w.dtype() == DType::kBF16) {
    ops::cpu::linear_bf16(x, w.data<uint16_t>(), bias, y, n, in_dim, out_dim, kernel);
  } else {
    ops::cpu::linear(x, w.data<float>(), bias, y, n, in_dim, out_dim, kernel);
  }
}

}  // namespace

void LlamaForward::linear(const float* x, const Tensor& w, const float* bias, float* y, int in_dim,
                          int out_dim) const {
  for (const RowRun& r : rows_) {
    linear_rows(x + static_cast<size_t>(r.begin) * in_dim, w, bias,
                y + static_cast<size_t>(r.begin) * out_dim, r.end - r.begin, in_dim, out_dim,
                r.kernel);
  }
}

LlamaForward::LlamaForward(const Model& model)
    : model_(model), inv_freq_(rope_inv_freq(model.config, model.weights.rope_freq_factors)) {}

void LlamaForward::dump(const char* name, int layer, const std::vector<float>& buf, int rows,
                        int cols) {
  if (dump_) dump_(name, layer, buf.data(), rows, cols);
}

Status LlamaForward::forward(const StepInput& in, std::span<const int32_t> logit_rows,
                             KvCache& cache, std::vector<float>& logits) {
  CS_RETURN_IF_ERROR(validate_step(in, logit_rows, model_.config.vocab_size, cache.num_blocks(),
                                   cache.block_size()));
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  const int n = in.num_tokens();
  seqs_.resize(static_cast<size_t>(in.num_seqs()));
  rows_.clear();
  for (int32_t s = 0; s < in.num_seqs(); ++s) {
    ops::AttnSeq& a = seqs_[static_cast<size_t>(s)];
    a.q_start = in.query_start[s];
    a.q_len = in.query_start[s + 1] - in.query_start[s];
    a.kv_len = in.context_lens[s];
    a.block_table = in.block_table.data() + static_cast<size_t>(s) * in.max_blocks;
    a.n_blocks = (a.kv_len + cache.block_size() - 1) / cache.block_size();
    const bool prompt = in.prompt_rows.empty() ? a.q_len > 1 : in.prompt_rows[s] != 0;
    const auto kernel = prompt ? ops::cpu::LinearKernel::kGemm : ops::cpu::LinearKernel::kPerRow;
    if (!rows_.empty() && rows_.back().kernel == kernel && rows_.back().end == a.q_start) {
      rows_.back().end = a.q_start + a.q_len;
    } else if (a.q_len > 0) {
      rows_.push_back({a.q_start, a.q_start + a.q_len, kernel});
    }
  }
  const int h = c.hidden_size;
  const int qd = c.q_dim();
  const int kvd = c.kv_dim();
  const int ff = c.intermediate_size;
  const size_t nn = static_cast<size_t>(n);
  x_.resize(nn * h);
  xn_.resize(nn * h);
  q_.resize(nn * qd);
  k_.resize(nn * kvd);
  v_.resize(nn * kvd);
  attn_.resize(nn * qd);
  proj_.resize(nn * h);
  gate_.resize(nn * ff);
  up_.resize(nn * ff);
  const ops::RopeTable rope{inv_freq_.data(), c.head_dim};
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  if (n > 0) {
    if (w.embed.block_type() != 0) {  // one row dequantized per token
      const ops::QuantMatrix table = quant_matrix(w.embed, c.vocab_size, h);
      for (int i = 0; i < n; ++i)
        ops::cpu::dequantize_rows(table, in.token_ids[i], 1,
                                  x_.data() + static_cast<size_t>(i) * h);
    } else {
      ops::cpu::embedding(w.embed.data<float>(), in.token_ids.data(), x_.data(), n, h);
    }
    dump("embed", -1, x_, n, h);
  }
  for (int li = 0; li < c.num_layers && n > 0; ++li) {
    const LayerWeights& l = w.layers[li];
    // Attention block: x += o_proj(attn(rope(q), rope(k), v)).
    ops::cpu::rms_norm(x_.data(), l.attn_norm.data<float>(), xn_.data(), n, h, c.rms_norm_eps);
    dump("attn_norm", li, xn_, n, h);
    const float* bq = l.bq.empty() ? nullptr : l.bq.data<float>();
    const float* bk = l.bk.empty() ? nullptr : l.bk.data<float>();
    const float* bv = l.bv.empty() ? nullptr : l.bv.data<float>();
    linear(xn_.data(), l.wq, bq, q_.data(), h, qd);
    linear(xn_.data(), l.wk, bk, k_.data(), h, kvd);
    linear(xn_.data(), l.wv, bv, v_.data(), h, kvd);
    if (c.qk_norm) {
      // Qwen3: RMSNorm over each head ([n * heads, head_dim] rows) before RoPE,
      // so the cache (and any cartridge) holds normed, rotated keys.
      ops::cpu::rms_norm(q_.data(), l.q_norm.data<float>(), q_.data(), n * c.num_heads, c.head_dim,
                         c.rms_norm_eps);
      ops::cpu::rms_norm(k_.data(), l.k_norm.data<float>(), k_.data(), n * c.num_kv_heads,
                         c.head_dim, c.rms_norm_eps);
    }
    ops::cpu::rope(q_.data(), in.positions.data(), rope, n, c.num_heads);
    ops::cpu::rope(k_.data(), in.positions.data(), rope, n, c.num_kv_heads);
    dump("q", li, q_, n, qd);
    dump("k", li, k_, n, kvd);
    dump("v", li, v_, n, kvd);
    ops::cpu::kv_write(k_.data(), v_.data(), in.slot_mapping.data(), cache.k(li), cache.v(li), n,
                       kvd);
    ops::cpu::paged_attention(q_.data(), cache.k(li), cache.v(li), seqs_.data(),
                              static_cast<int>(seqs_.size()), attn_.data(), c.num_heads,
                              c.num_kv_heads, c.head_dim, cache.block_size(), scale);
    dump("attn_out", li, attn_, n, qd);
    linear(attn_.data(), l.wo, nullptr, proj_.data(), qd, h);
    if (all_reduce_) all_reduce_(proj_.data(), nn * h);  // tensor parallel: sum of partials
    dump("attn_proj", li, proj_, n, h);
    ops::cpu::add_inplace(x_.data(), proj_.data(), static_cast<int64_t>(nn) * h);

    // MLP block: x += down(silu(gate(xn)) * up(xn)).
    ops::cpu::rms_norm(x_.data(), l.ffn_norm.data<float>(), xn_.data(), n, h, c.rms_norm_eps);
    dump("ffn_norm", li, xn_, n, h);
    linear(xn_.data(), l.w_gate, nullptr, gate_.data(), h, ff);
    linear(xn_.data(), l.w_up, nullptr, up_.data(), h, ff);
    ops::cpu::silu_mul(gate_.data(), up_.data(), gate_.data(), static_cast<int64_t>(nn) * ff);
    linear(gate_.data(), l.w_down, nullptr, proj_.data(), ff, h);
    if (all_reduce_) all_reduce_(proj_.data(), nn * h);
    dump("ffn_out", li, proj_, n, h);
    ops::cpu::add_inplace(x_.data(), proj_.data(), static_cast<int64_t>(nn) * h);
    dump("hidden", li, x_, n, h);
  }

  // Only the requested rows go through the final norm and the LM head.
  const int n_logits = static_cast<int>(logit_rows.size());
  last_.resize(static_cast<size_t>(n_logits) * h);
  for (int i = 0; i < n_logits; ++i) {
    const float* src = x_.data() + static_cast<size_t>(logit_rows[i]) * h;
    std::copy(src, src + h, last_.begin() + static_cast<ptrdiff_t>(i) * h);
  }
  logits.resize(static_cast<size_t>(n_logits) * c.vocab_size);
  if (n_logits > 0) {
    ops::cpu::rms_norm(last_.data(), w.final_norm.data<float>(), last_.data(), n_logits, h,
                       c.rms_norm_eps);
    dump("final_norm", -1, last_, n_logits, h);
    // The logit rows (one per sampled sequence, or a prompt's rows for prompt
    // logprobs) all take the per-row kernel: the same result in any batch.
    linear_rows(last_.data(), w.lm_head, nullptr, logits.data(), n_logits, h, c.vocab_size,
                ops::cpu::LinearKernel::kPerRow);
  }
  return {};
}

}  // namespace cartserve
