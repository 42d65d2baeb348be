#include "model/config.h"

#include <nlohmann/json.hpp>

#include "formats/gguf.h"

namespace cartserve {

using nlohmann::json;

const char* model_arch_name(ModelArch arch) {
  switch (arch) {
    case ModelArch::kLlama:
      return "llama";
    case ModelArch::kQwen2:
      return "qwen2";
    case ModelArch::kQwen3:
      return "qwen3";
  }
  return "unknown";
}

int64_t ModelConfig::num_parameters() const {
  const int64_t h = hidden_size;
  int64_t per_layer = h * q_dim() + 2 * h * kv_dim() + q_dim() * h  // attention
                      + 3 * h * intermediate_size                   // MLP
                      + 2 * h;                                      // norms
  if (attention_bias) per_layer += q_dim() + 2 * kv_dim();
  if (qk_norm) per_layer += 2 * head_dim;
  int64_t total = per_layer * num_layers + static_cast<int64_t>(vocab_size) * h + h;
  if (!tie_word_embeddings) total += static_cast<int64_t>(vocab_size) * h;
  return total;
}

int64_t ModelConfig::kv_bytes_per_token(int bytes_per_elem) const {
  return 2LL * num_layers * kv_dim() * bytes_per_elem;
}

Status ModelConfig::validate() const {
  auto positive = [](const char* name, int64_t v) -> Status {
    if (v <= 0)
      return make_error(ErrorCode::kInvalidArgument, "model config: {} = {} must be > 0", name, v);
    return {};
  };
  CS_RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  CS_RETURN_IF_ERROR(positive("hidden_size", hidden_size));
  CS_RETURN_IF_ERROR(positive("intermediate_size", intermediate_size));
  CS_RETURN_IF_ERROR(positive("num_hidden_layers", num_layers));
  CS_RETURN_IF_ERROR(positive("num_attention_heads", num_heads));
  CS_RETURN_IF_ERROR(positive("num_key_value_heads", num_kv_heads));
  CS_RETURN_IF_ERROR(positive("head_dim", head_dim));
  if (num_heads % num_kv_heads != 0) {
    return make_error(ErrorCode::kInvalidArgument,
                      "model config: num_attention_heads ({}) is not a multiple of "
                      "num_key_value_heads ({})",
                      num_heads, num_kv_heads);
  }
  if (head_dim % 2 != 0) {
    return make_error(ErrorCode::kInvalidArgument,
                      "model config: head_dim {} must be even for RoPE", head_dim);
  }
  if (!(rms_norm_eps > 0.f)) {
    return make_error(ErrorCode::kInvalidArgument, "model config: rms_norm_eps must be > 0");
  }
  if (!(rope_theta > 0.0)) {
    return make_error(ErrorCode::kInvalidArgument, "model config: rope_theta must be > 0");
  }
  return {};
}

namespace {

// Typed access with errors that name the key.
Result<int64_t> req_int(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    return make_error(ErrorCode::kInvalidArgument, "config.json: missing required key '{}'", key);
  }
  if (!it->is_number_integer()) {
    return make_error(ErrorCode::kInvalidArgument, "config.json: '{}' must be an integer, got {}",
                      key, it->dump());
  }
  return it->get<int64_t>();
}

Result<std::optional<double>> opt_number(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::optional<double>();
  if (!it->is_number()) {
    return make_error(ErrorCode::kInvalidArgument, "config.json: '{}' must be a number, got {}",
                      key, it->dump());
  }
  return std::optional<double>(it->get<double>());
}

Result<std::optional<int64_t>> opt_int(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::optional<int64_t>();
  if (!it->is_number_integer()) {
    return make_error(ErrorCode::kInvalidArgument, "config.json: '{}' must be an integer, got {}",
                      key, it->dump());
  }
  return std::optional<int64_t>(it->get<int64_t>());
}

Result<RopeScaling> parse_rope_scaling(const json& rs) {
  RopeScaling out;
  std::string type;
  if (auto it = rs.find("rope_type"); it != rs.end() && it->is_string()) {
    type = it->get<std::string>();
  } else if (auto it2 = rs.find("type"); it2 != rs.end() && it2->is_string()) {
    type = it2->get<std::string>();
  }
  if (type.empty() || type == "default") return out;
  CS_ASSIGN_OR_RETURN(auto factor, opt_number(rs, "factor"));
  if (type == "linear") {
    out.type = RopeScaling::Type::kLinear;
    if (!factor)
      return make_error(ErrorCode::kInvalidArgument, "config.json: rope_scaling.factor missing");
    out.factor = *factor;
    return out;
  }
  if (type == "llama3") {
    out.type = RopeScaling::Type::kLlama3;
    if (!factor)
      return make_error(ErrorCode::kInvalidArgument, "config.json: rope_scaling.factor missing");
    out.factor = *factor;
    CS_ASSIGN_OR_RETURN(auto low, opt_number(rs, "low_freq_factor"));
    CS_ASSIGN_OR_RETURN(auto high, opt_number(rs, "high_freq_factor"));
    CS_ASSIGN_OR_RETURN(auto orig, opt_int(rs, "original_max_position_embeddings"));
    if (!low || !high || !orig) {
      return make_error(ErrorCode::kInvalidArgument,
                        "config.json: rope_scaling type llama3 needs low_freq_factor, "
                        "high_freq_factor and original_max_position_embeddings");
    }
    out.low_freq_factor = *low;
    out.high_freq_factor = *high;
    out.original_max_position_embeddings = *orig;
    return out;
  }
  return make_error(ErrorCode::kUnsupported, "config.json: rope scaling type '{}' is not supported",
                    type);
}

}  // namespace

Result<ModelConfig> parse_hf_config(const std::string& json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return make_error(ErrorCode::kInvalidArgument, "config.json: not a valid JSON object");
  }
  ModelConfig c;
  std::string model_type = j.value("model_type", std::string());
  std::string arch;
  if (auto it = j.find("architectures");
      it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    arch = (*it)[0].get<std::string>();
  }
  c.arch_name = arch.empty() ? model_type : arch;
  if (arch == "LlamaForCausalLM" || arch == "MistralForCausalLM" ||
      (arch.empty() && (model_type == "llama" || model_type == "mistral"))) {
    c.arch = ModelArch::kLlama;
  } else if (arch == "Qwen2ForCausalLM" || (arch.empty() && model_type == "qwen2")) {
    c.arch = ModelArch::kQwen2;
  } else if (arch == "Qwen3ForCausalLM" || (arch.empty() && model_type == "qwen3")) {
    c.arch = ModelArch::kQwen3;
    c.qk_norm = true;
  } else {
    return make_error(ErrorCode::kUnsupported,
                      "unsupported model architecture '{}' (model_type '{}'); supported: "
                      "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM",
                      arch, model_type);
  }
  c.model_id = j.value("_name_or_path", std::string());

  CS_ASSIGN_OR_RETURN(int64_t vocab, req_int(j, "vocab_size"));
  CS_ASSIGN_OR_RETURN(int64_t hidden, req_int(j, "hidden_size"));
  CS_ASSIGN_OR_RETURN(int64_t inter, req_int(j, "intermediate_size"));
  CS_ASSIGN_OR_RETURN(int64_t layers, req_int(j, "num_hidden_layers"));
  CS_ASSIGN_OR_RETURN(int64_t heads, req_int(j, "num_attention_heads"));
  CS_ASSIGN_OR_RETURN(auto kv_heads, opt_int(j, "num_key_value_heads"));
  CS_ASSIGN_OR_RETURN(auto head_dim, opt_int(j, "head_dim"));
  c.vocab_size = static_cast<int32_t>(vocab);
  c.hidden_size = static_cast<int32_t>(hidden);
  c.intermediate_size = static_cast<int32_t>(inter);
  c.num_layers = static_cast<int32_t>(layers);
  c.num_heads = static_cast<int32_t>(heads);
  c.num_kv_heads = static_cast<int32_t>(kv_heads.value_or(heads));
  c.head_dim = static_cast<int32_t>(head_dim.value_or(heads > 0 ? hidden / heads : 0));

  CS_ASSIGN_OR_RETURN(auto eps, opt_number(j, "rms_norm_eps"));
  c.rms_norm_eps = static_cast<float>(eps.value_or(1e-6));
  CS_ASSIGN_OR_RETURN(auto max_pos, opt_int(j, "max_position_embeddings"));
  c.max_position_embeddings = max_pos.value_or(2048);

  // Rope: transformers < 5 uses rope_theta + rope_scaling; 5.x nests both in rope_parameters.
  CS_ASSIGN_OR_RETURN(auto theta, opt_number(j, "rope_theta"));
  c.rope_theta = theta.value_or(10000.0);
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_object()) {
      return make_error(ErrorCode::kInvalidArgument, "config.json: '{}' must be an object", key);
    }
    CS_ASSIGN_OR_RETURN(auto nested_theta, opt_number(*it, "rope_theta"));
    if (nested_theta) c.rope_theta = *nested_theta;
    CS_ASSIGN_OR_RETURN(c.rope_scaling, parse_rope_scaling(*it));
  }

  if (auto it = j.find("tie_word_embeddings"); it != j.end() && it->is_boolean()) {
    c.tie_word_embeddings = it->get<bool>();
  }
  if (c.arch == ModelArch::kQwen2) {
    c.attention_bias = true;
  } else if (auto it2 = j.find("attention_bias"); it2 != j.end() && it2->is_boolean()) {
    c.attention_bias = it2->get<bool>();
  }
  // Qwen2/Qwen3 configs carry a sliding_window that only applies with use_sliding_window.
  const bool qwen = c.arch == ModelArch::kQwen2 || c.arch == ModelArch::kQwen3;
  const bool sliding_enabled = !qwen || j.value("use_sliding_window", false);
  CS_ASSIGN_OR_RETURN(auto window, opt_int(j, "sliding_window"));
  if (sliding_enabled && window) c.sliding_window = *window;

  if (auto it = j.find("bos_token_id"); it != j.end() && it->is_number_integer()) {
    c.bos_token_id = it->get<int32_t>();
  }
  if (auto it = j.find("eos_token_id"); it != j.end()) {
    if (it->is_number_integer()) {
      c.eos_token_ids.push_back(it->get<int32_t>());
    } else if (it->is_array()) {
      for (const auto& e : *it) {
        if (e.is_number_integer()) c.eos_token_ids.push_back(e.get<int32_t>());
      }
    }
  }
  c.source_dtype = j.value("torch_dtype", j.value("dtype", std::string("float32")));
  CS_RETURN_IF_ERROR(c.validate());
  return c;
}

Result<ModelConfig> config_from_gguf(const GgufFile& gguf) {
  ModelConfig c;
  CS_ASSIGN_OR_RETURN(std::string arch, gguf.get_string("general.architecture"));
  c.arch_name = arch;
  if (arch == "llama" || arch == "mistral") {
    c.arch = ModelArch::kLlama;
  } else if (arch == "qwen2") {
    c.arch = ModelArch::kQwen2;
    c.attention_bias = true;
  } else if (arch == "qwen3") {
    c.arch = ModelArch::kQwen3;
    c.qk_norm = true;
    c.attention_bias = gguf.find_tensor("blk.0.attn_q.bias") != nullptr;
  } else {
    return make_error(ErrorCode::kUnsupported,
                      "unsupported GGUF architecture '{}'; supported: llama, mistral, qwen2, qwen3",
                      arch);
  }
  auto req = [&](const std::string& suffix) -> Result<int64_t> {
    const std::string key = arch + "." + suffix;
    return gguf.get_int(key);  // errors name the key and the file
  };
  CS_ASSIGN_OR_RETURN(int64_t hidden, req("embedding_length"));
  CS_ASSIGN_OR_RETURN(int64_t inter, req("feed_forward_length"));
  CS_ASSIGN_OR_RETURN(int64_t layers, req("block_count"));
  CS_ASSIGN_OR_RETURN(int64_t heads, req("attention.head_count"));
  c.hidden_size = static_cast<int32_t>(hidden);
  c.intermediate_size = static_cast<int32_t>(inter);
  c.num_layers = static_cast<int32_t>(layers);
  c.num_heads = static_cast<int32_t>(heads);
  auto kv = gguf.get_int(arch + ".attention.head_count_kv");
  c.num_kv_heads = static_cast<int32_t>(kv.ok() ? *kv : heads);
  auto key_len = gguf.get_int(arch + ".attention.key_length");
  c.head_dim = static_cast<int32_t>(key_len.ok() ? *key_len : (heads > 0 ? hidden / heads : 0));
  auto ctx = gguf.get_int(arch + ".context_length");
  c.max_position_embeddings = ctx.ok() ? *ctx : 2048;
  auto eps = gguf.get_float(arch + ".attention.layer_norm_rms_epsilon");
  c.rms_norm_eps = eps.ok() ? static_cast<float>(*eps) : 1e-5f;
  auto theta = gguf.get_float(arch + ".rope.freq_base");
  c.rope_theta = theta.ok() ? *theta : 10000.0;
  if (auto st = gguf.get_string(arch + ".rope.scaling.type"); st.ok() && *st != "none") {
    if (*st != "linear") {
      return make_error(ErrorCode::kUnsupported, "GGUF rope scaling type '{}' is not supported",
                        *st);
    }
    c.rope_scaling.type = RopeScaling::Type::kLinear;
    auto f = gguf.get_float(arch + ".rope.scaling.factor");
    c.rope_scaling.factor = f.ok() ? *f : 1.0;
  }
  // llama3-style scaling arrives as a `rope_freqs.weight` tensor (see weights loader).
  auto vocab = gguf.get_int(arch + ".vocab_size");
  if (vocab.ok()) {
    c.vocab_size = static_cast<int32_t>(*vocab);
  } else if (auto toks = gguf.find("tokenizer.ggml.tokens");
             toks && toks->type == GgufValue::Type::kArray) {
    c.vocab_size = static_cast<int32_t>(std::get<std::vector<GgufValue>>(toks->value).size());
  }
  c.tie_word_embeddings = gguf.find_tensor("output.weight") == nullptr;
  if (auto name = gguf.get_string("general.name"); name.ok()) c.model_id = *name;
  if (auto bos = gguf.get_int("tokenizer.ggml.bos_token_id"); bos.ok()) {
    c.bos_token_id = static_cast<int32_t>(*bos);
  }
  if (auto eos = gguf.get_int("tokenizer.ggml.eos_token_id"); eos.ok()) {
    c.eos_token_ids.push_back(static_cast<int32_t>(*eos));
  }
  if (const auto* emb = gguf.find_tensor("token_embd.weight")) {
    c.source_dtype = ggml_type_name(emb->type);
  }
  if (auto ft = gguf.find_tensor("blk.0.attn_q.weight")) c.source_dtype = ggml_type_name(ft->type);
  CS_RETURN_IF_ERROR(c.validate());
  return c;
}

}  // namespace cartserve
