// Weights from a GGUF file (llama.cpp naming). llama-architecture GGUFs store
// q/k rows permuted for llama.cpp's interleaved RoPE; they are permuted back
// to HF order here so every backend and every cartridge sees one layout.
#include <cstring>

#include "formats/gguf.h"
#include "kernels/quant_ops.h"
#include "model/tensor_source.h"

namespace cartserve {

namespace {

std::string gguf_name(const std::string& logical, int layer) {
  static const std::pair<const char*, const char*> kGlobal[] = {
      {"embed", "token_embd.weight"},
      {"final_norm", "output_norm.weight"},
      {"lm_head", "output.weight"},
      {"rope_freqs", "rope_freqs.weight"},
  };
  static const std::pair<const char*, const char*> kLayer[] = {
      {"attn_norm", "attn_norm.weight"},
      {"wq", "attn_q.weight"},
      {"wk", "attn_k.weight"},
      {"wv", "attn_v.weight"},
      {"wo", "attn_output.weight"},
      {"bq", "attn_q.bias"},
      {"bk", "attn_k.bias"},
      {"bv", "attn_v.bias"},
      {"q_norm", "attn_q_norm.weight"},
      {"k_norm", "attn_k_norm.weight"},
      {"ffn_norm", "ffn_norm.weight"},
      {"w_gate", "ffn_gate.weight"},
      {"w_up", "ffn_up.weight"},
      {"w_down", "ffn_down.weight"},
  };
  if (layer < 0) {
    for (const auto& [k, v] : kGlobal) {
      if (logical == k) return v;
    }
  } else {
    for (const auto& [k, v] : kLayer) {
      if (logical == k) return "blk." + std::to_string(layer) + "." + v;
    }
  }
  return logical;
}

// unpermute_rows for a block-quantized matrix: whole rows of bytes move.
// w: kU8 [n_heads * head_dim, row_bytes]
Tensor unpermute_block_rows(const Tensor& w, int n_heads) {
  const int64_t rows = w.dim(0);
  const size_t row_bytes = static_cast<size_t>(w.dim(1));
  const int64_t hd = rows / n_heads;
  const int64_t half = hd / 2;
  Tensor out(DType::kU8, w.shape());
  out.set_block_type(w.block_type());
  const uint8_t* src = w.data<uint8_t>();
  uint8_t* dst = out.data<uint8_t>();
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t j = 0; j < half; ++j) {
      for (int64_t t = 0; t < 2; ++t) {
        const int64_t from = h * hd + 2 * j + t;
        const int64_t to = h * hd + t * half + j;
        std::memcpy(dst + to * row_bytes, src + from * row_bytes, row_bytes);
      }
    }
  }
  return out;
}

// Inverse of llama.cpp's convert permute: gguf row h*hd + 2j + t holds HF row h*hd + t*hd/2 + j.
// w: [n_heads * head_dim, cols]
Tensor unpermute_rows(const Tensor& w, int n_heads) {
  const int64_t rows = w.dim(0);
  const int64_t cols = w.ndim() > 1 ? w.dim(1) : 1;
  const int64_t hd = rows / n_heads;
  const int64_t half = hd / 2;
  Tensor out(DType::kF32, w.shape());
  const float* src = w.data<float>();
  float* dst = out.data<float>();
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t j = 0; j < half; ++j) {
      for (int64_t t = 0; t < 2; ++t) {
        const int64_t from = h * hd + 2 * j + t;
        const int64_t to = h * hd + t * half + j;
        std::memcpy(dst + to * cols, src + from * cols, sizeof(float) * cols);
      }
    }
  }
  return out;
}

class GgufSource final : public TensorSource {
 public:
  GgufSource(const GgufFile& gguf, const ModelConfig& config) : gguf_(gguf), config_(config) {}

  bool has(const std::string& logical, int layer) const override {
    return gguf_.find_tensor(gguf_name(logical, layer)) != nullptr;
  }

  Result<Tensor> load(const std::string& logical, int layer) const override {
    const std::string name = gguf_name(logical, layer);
    const GgufTensorInfo* info = gguf_.find_tensor(name);
    if (!info) {
      return make_error(ErrorCode::kNotFound, "tensor '{}' is missing from '{}'", name,
                        gguf_.path());
    }
    CS_ASSIGN_OR_RETURN(Tensor t, gguf_.load_f32(*info));
    if (config_.arch == ModelArch::kLlama) {
      if (logical == "wq" || logical == "bq") return unpermute_rows(t, config_.num_heads);
      if (logical == "wk" || logical == "bk") return unpermute_rows(t, config_.num_kv_heads);
    }
    return t;
  }

  Result<Tensor> load_blocks(const std::string& logical, int layer) const override {
    const GgufTensorInfo* info = gguf_.find_tensor(gguf_name(logical, layer));
    ops::QuantType qt;
    if (!info || info->ne.size() != 2 || !ops::quant_type_from_ggml(info->type, &qt)) {
      return Tensor{};
    }
    const int64_t cols = info->ne[0], rows = info->ne[1];
    const size_t row_bytes = ops::quant_row_bytes(qt, cols);
    const std::span<const uint8_t> bytes = gguf_.tensor_bytes(*info);
    if (cols % ops::quant_block_elems(qt) != 0 ||
        bytes.size() != static_cast<size_t>(rows) * row_bytes || info->nbytes != bytes.size()) {
      return make_error(ErrorCode::kInvalidArgument,
                        "GGUF '{}': tensor info '{}' does not describe data of this file",
                        gguf_.path(), info->name);
    }
    Tensor t(DType::kU8, {rows, static_cast<int64_t>(row_bytes)});
    t.set_block_type(info->type);
    std::memcpy(t.raw(), bytes.data(), bytes.size());
    if (config_.arch == ModelArch::kLlama) {
      if (logical == "wq") return unpermute_block_rows(t, config_.num_heads);
      if (logical == "wk") return unpermute_block_rows(t, config_.num_kv_heads);
    }
    return t;
  }

  std::string describe() const override { return gguf_.path(); }

 private:
  const GgufFile& gguf_;
  const ModelConfig& config_;
};

}  // namespace

std::unique_ptr<TensorSource> make_gguf_source(const GgufFile& gguf, const ModelConfig& config) {
  return std::make_unique<GgufSource>(gguf, config);
}

}  // namespace cartserve
