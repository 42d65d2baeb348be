// Weights from a GGUF file (llama.cpp naming). llama-architecture GGUFs store
// q/k rows permuted for llama.cpp's interleaved RoPE; they are permuted back
// to HF order here so every backend and every cartridge sees one layout.
#include <cstring>

#include "formats/gguf.h"
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
