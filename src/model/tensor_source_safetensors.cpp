// Weights from a HF checkpoint folder (safetensors, possibly sharded), any
// float dtype converted to fp32.
#include "formats/safetensors.h"
#include "model/tensor_source.h"

namespace cartserve {

namespace {

std::string hf_name(const std::string& logical, int layer) {
  static const std::pair<const char*, const char*> kGlobal[] = {
      {"embed", "model.embed_tokens.weight"},
      {"final_norm", "model.norm.weight"},
      {"lm_head", "lm_head.weight"},
      {"rope_freqs", "<none>"},
  };
  static const std::pair<const char*, const char*> kLayer[] = {
      {"attn_norm", "input_layernorm.weight"},
      {"wq", "self_attn.q_proj.weight"},
      {"wk", "self_attn.k_proj.weight"},
      {"wv", "self_attn.v_proj.weight"},
      {"wo", "self_attn.o_proj.weight"},
      {"bq", "self_attn.q_proj.bias"},
      {"bk", "self_attn.k_proj.bias"},
      {"bv", "self_attn.v_proj.bias"},
      {"q_norm", "self_attn.q_norm.weight"},
      {"k_norm", "self_attn.k_norm.weight"},
      {"ffn_norm", "post_attention_layernorm.weight"},
      {"w_gate", "mlp.gate_proj.weight"},
      {"w_up", "mlp.up_proj.weight"},
      {"w_down", "mlp.down_proj.weight"},
  };
  if (layer < 0) {
    for (const auto& [k, v] : kGlobal) {
      if (logical == k) return v;
    }
  } else {
    for (const auto& [k, v] : kLayer) {
      if (logical == k) return "model.layers." + std::to_string(layer) + "." + v;
    }
  }
  return logical;
}

class SafetensorsSource final : public TensorSource {
 public:
  SafetensorsSource(const SafetensorsSet& set, std::string dir) : set_(set), dir_(std::move(dir)) {}

  bool has(const std::string& logical, int layer) const override {
    return set_.contains(hf_name(logical, layer));
  }

  Result<Tensor> load(const std::string& logical, int layer) const override {
    CS_ASSIGN_OR_RETURN(TensorView v, set_.get(hf_name(logical, layer)));
    if (v.dtype != DType::kF32 && v.dtype != DType::kF16 && v.dtype != DType::kBF16 &&
        v.dtype != DType::kF64) {
      return make_error(ErrorCode::kUnsupported,
                        "tensor '{}' in '{}' has dtype {}, expected a float",
                        hf_name(logical, layer), dir_, dtype_name(v.dtype));
    }
    Tensor t(DType::kF32, v.shape);
    convert_to_f32(v.dtype, v.data, t.data<float>(), static_cast<size_t>(t.numel()));
    return t;
  }

  std::string describe() const override { return dir_; }

 private:
  const SafetensorsSet& set_;
  std::string dir_;
};

}  // namespace

std::unique_ptr<TensorSource> make_safetensors_source(const SafetensorsSet& set,
                                                      const std::string& dir) {
  return std::make_unique<SafetensorsSource>(set, dir);
}

}  // namespace cartserve
