#include "runtime/cpu/tp_shard.h"

#include <cstring>

#include "core/logging.h"
#include "kernels/quant_ops.h"

namespace cartserve {

namespace {

bool quant_type(const Tensor& w, ops::QuantType* t) {
  return w.block_type() != 0 && ops::quant_type_from_ggml(w.block_type(), t);
}

// Logical columns of a weight: its in_features (a quantized row holds
// row_bytes / block_bytes blocks of block_elems).
int64_t logical_cols(const Tensor& w) {
  ops::QuantType t;
  if (quant_type(w, &t)) {
    return w.dim(1) / static_cast<int64_t>(ops::quant_block_bytes(t)) * ops::quant_block_elems(t);
  }
  return w.dim(1);
}

Tensor slice_vector(const Tensor& b, int64_t i0, int64_t n) {
  if (b.empty()) return b;
  return Tensor::from_f32({n},
                          std::span<const float>(b.data<float>() + i0, static_cast<size_t>(n)));
}

}  // namespace

Tensor tp_slice_rows(const Tensor& w, int64_t r0, int64_t n) {
  const size_t row_bytes = static_cast<size_t>(w.dim(1)) * dtype_size(w.dtype());
  Tensor out(w.dtype(), {n, w.dim(1)});
  std::memcpy(out.raw(), static_cast<const uint8_t*>(w.raw()) + static_cast<size_t>(r0) * row_bytes,
              static_cast<size_t>(n) * row_bytes);
  out.set_block_type(w.block_type());
  return out;
}

Tensor tp_slice_cols(const Tensor& w, int64_t c0, int64_t n, bool* dequantized) {
  const int64_t rows = w.dim(0);
  if (dequantized) *dequantized = false;
  ops::QuantType t;
  if (quant_type(w, &t)) {
    const int64_t be = ops::quant_block_elems(t);
    const size_t bb = ops::quant_block_bytes(t);
    if (c0 % be == 0 && n % be == 0) {  // whole blocks: byte columns of each row
      const size_t off = static_cast<size_t>(c0 / be) * bb;
      const size_t len = static_cast<size_t>(n / be) * bb;
      Tensor out(DType::kU8, {rows, static_cast<int64_t>(len)});
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(
            out.data<uint8_t>() + static_cast<size_t>(r) * len,
            w.data<uint8_t>() + static_cast<size_t>(r) * static_cast<size_t>(w.dim(1)) + off, len);
      }
      out.set_block_type(w.block_type());
      return out;
    }
    // The slice cuts blocks: dequantize each row (exact values) and keep the
    // slice in fp32.
    const int64_t cols = logical_cols(w);
    const ops::QuantMatrix m{t, w.data<uint8_t>(), rows, cols, static_cast<size_t>(w.dim(1))};
    std::vector<float> row(static_cast<size_t>(cols));
    Tensor out(DType::kF32, {rows, n});
    for (int64_t r = 0; r < rows; ++r) {
      ops::cpu::dequantize_rows(m, r, 1, row.data());
      std::memcpy(out.data<float>() + static_cast<size_t>(r * n), row.data() + c0,
                  static_cast<size_t>(n) * sizeof(float));
    }
    if (dequantized) *dequantized = true;
    return out;
  }
  const size_t es = dtype_size(w.dtype());
  Tensor out(w.dtype(), {rows, n});
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(static_cast<uint8_t*>(out.raw()) + static_cast<size_t>(r * n) * es,
                static_cast<const uint8_t*>(w.raw()) + static_cast<size_t>(r * w.dim(1) + c0) * es,
                static_cast<size_t>(n) * es);
  }
  return out;
}

int32_t tp_ff_align(const Model& model) {
  ops::QuantType t;
  for (const LayerWeights& l : model.weights.layers) {
    if (quant_type(l.w_down, &t)) return ops::quant_block_elems(t);
  }
  return 1;
}

Result<std::unique_ptr<Model>> make_tp_shard(const Model& model, const TpPlan& plan, int32_t rank) {
  if (rank < 0 || rank >= plan.size) {
    return make_error(ErrorCode::kInvalidArgument, "rank {} outside TP={}", rank, plan.size);
  }
  const TpRank& k = plan.ranks[static_cast<size_t>(rank)];
  const ModelConfig& c = model.config;
  auto shard = std::make_unique<Model>();
  shard->config = c;
  shard->config.num_heads = k.num_q_heads();
  shard->config.num_kv_heads = k.num_kv_heads();
  shard->config.intermediate_size = k.ff_size();
  shard->path = model.path;
  const ModelWeights& w = model.weights;
  ModelWeights& s = shard->weights;
  s.embed = w.embed;
  s.final_norm = w.final_norm;
  s.lm_head = w.lm_head;
  s.rope_freq_factors = w.rope_freq_factors;
  const int64_t hd = c.head_dim;
  const int64_t q0 = k.q_head_begin * hd, qn = k.num_q_heads() * hd;
  const int64_t kv0 = k.kv_head_begin * hd, kvn = k.num_kv_heads() * hd;
  bool any_dequantized = false;
  for (const LayerWeights& l : w.layers) {
    LayerWeights o;
    o.attn_norm = l.attn_norm;
    o.ffn_norm = l.ffn_norm;
    o.q_norm = l.q_norm;  // per head_dim: the same on every head
    o.k_norm = l.k_norm;
    o.wq = tp_slice_rows(l.wq, q0, qn);
    o.wk = tp_slice_rows(l.wk, kv0, kvn);
    o.wv = tp_slice_rows(l.wv, kv0, kvn);
    o.bq = slice_vector(l.bq, q0, qn);
    o.bk = slice_vector(l.bk, kv0, kvn);
    o.bv = slice_vector(l.bv, kv0, kvn);
    o.w_gate = tp_slice_rows(l.w_gate, k.ff_begin, k.ff_size());
    o.w_up = tp_slice_rows(l.w_up, k.ff_begin, k.ff_size());
    bool dq = false;
    o.wo = tp_slice_cols(l.wo, q0, qn, &dq);
    any_dequantized |= dq;
    o.w_down = tp_slice_cols(l.w_down, k.ff_begin, k.ff_size(), &dq);
    any_dequantized |= dq;
    s.layers.push_back(std::move(o));
  }
  if (any_dequantized) {
    LOG_INFO("TP rank {}: o_proj/down slices cut quantization blocks; those slices kept as fp32",
             rank);
  }
  return shard;
}

}  // namespace cartserve
