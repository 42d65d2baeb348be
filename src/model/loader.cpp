// load_model: GGUF file or HF folder -> Model.
#include <chrono>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/logging.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/model.h"
#include "model/tensor_source.h"
#include "model/weights_loader.h"

namespace cartserve {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

template <typename T>
std::optional<T> opt(Result<T> r) {
  if (r.ok()) return std::move(r).value();
  return std::nullopt;
}

void fill_special_texts(Model& m) {
  if (auto bos = m.tokenizer.bos_id()) m.bos_text = m.tokenizer.token_text(*bos);
  if (auto eos = m.tokenizer.eos_id()) m.eos_text = m.tokenizer.token_text(*eos);
}

Status load_gguf(const std::string& path, const LoadOptions& options, Model& m) {
  CS_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::open(path));
  CS_ASSIGN_OR_RETURN(m.config, config_from_gguf(gguf));
  if (m.config.model_id.empty()) m.config.model_id = fs::path(path).stem().string();
  auto source = make_gguf_source(gguf, m.config);
  CS_ASSIGN_OR_RETURN(m.weights, load_weights(*source, m.config, options.progress,
                                              options.weight_dtype, options.keep_quantized));
  CS_ASSIGN_OR_RETURN(GgufTokenizerData tok_data, read_gguf_tokenizer_data(gguf));
  auto tok = Tokenizer::from_gguf(tok_data);
  if (!tok.ok()) return tok.status().with_context("tokenizer of '" + path + "'");
  m.tokenizer = std::move(tok).value();
  m.chat_template = opt(gguf.get_string("tokenizer.chat_template")).value_or("");
  fill_special_texts(m);
  return {};
}

// tokenizer_config.json's bos_token/eos_token may be a string or {"content": ...}.
std::optional<std::string> token_field(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

Status load_hf_dir(const std::string& dir, const LoadOptions& options, Model& m) {
  const fs::path root(dir);
  auto cfg_text = read_file((root / "config.json").string());
  if (!cfg_text.ok()) {
    return make_error(ErrorCode::kNotFound, "'{}' has no config.json (expected a HF model folder)",
                      dir);
  }
  auto cfg = parse_hf_config(*cfg_text);
  if (!cfg.ok()) return cfg.status().with_context((root / "config.json").string());
  m.config = std::move(cfg).value();
  if (m.config.model_id.empty()) m.config.model_id = root.filename().string();

  CS_ASSIGN_OR_RETURN(SafetensorsSet set, SafetensorsSet::open_dir(dir));
  auto source = make_safetensors_source(set, dir);
  CS_ASSIGN_OR_RETURN(m.weights, load_weights(*source, m.config, options.progress,
                                              options.weight_dtype, options.keep_quantized));

  HfTokenizerConfig tcfg;
  if (auto tc_text = read_file((root / "tokenizer_config.json").string()); tc_text.ok()) {
    json tc = json::parse(*tc_text, nullptr, false);
    if (tc.is_discarded() || !tc.is_object()) {
      return make_error(ErrorCode::kInvalidArgument, "'{}' is not valid JSON",
                        (root / "tokenizer_config.json").string());
    }
    tcfg.bos_token = token_field(tc, "bos_token");
    tcfg.eos_token = token_field(tc, "eos_token");
    if (tc.contains("add_bos_token") && tc["add_bos_token"].is_boolean()) {
      tcfg.add_bos_token = tc["add_bos_token"].get<bool>();
    }
    if (tc.contains("add_eos_token") && tc["add_eos_token"].is_boolean()) {
      tcfg.add_eos_token = tc["add_eos_token"].get<bool>();
    }
    if (tc.contains("chat_template") && tc["chat_template"].is_string()) {
      m.chat_template = tc["chat_template"].get<std::string>();
    }
  }
  // transformers >= 4.43 may store the template beside the config.
  if (m.chat_template.empty()) {
    if (auto t = read_file((root / "chat_template.jinja").string()); t.ok()) m.chat_template = *t;
  }
  auto tok_text = read_file((root / "tokenizer.json").string());
  if (!tok_text.ok()) return make_error(ErrorCode::kNotFound, "'{}' has no tokenizer.json", dir);
  auto tok = Tokenizer::from_hf_json(*tok_text, tcfg);
  if (!tok.ok()) return tok.status().with_context((root / "tokenizer.json").string());
  m.tokenizer = std::move(tok).value();
  fill_special_texts(m);
  return {};
}

}  // namespace

std::string model_summary(const Model& m, double load_seconds) {
  const ModelConfig& c = m.config;
  return fmt::format(
      "{} ({}) | {} params | {} layers, {} heads ({} kv), head_dim {} | {} -> {} "
      "| {} weights | loaded in {:.1f} s",
      c.model_id, model_arch_name(c.arch), format_count(static_cast<uint64_t>(c.num_parameters())),
      c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.source_dtype,
      m.weights.layers.empty() || m.weights.layers[0].wq.dtype() == DType::kF32 ? "float32"
      : m.weights.layers[0].wq.block_type() != 0 ? "quantized matrices kept, float32 compute"
                                                 : "bfloat16 matrices, float32 compute",
      format_bytes(m.weights.nbytes()), load_seconds);
}

Result<std::unique_ptr<Model>> load_model(const std::string& path, const LoadOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) {
    return make_error(ErrorCode::kNotFound, "model path '{}' does not exist", path);
  }
  auto m = std::make_unique<Model>();
  m->path = path;
  if (fs::is_directory(status)) {
    CS_RETURN_IF_ERROR(load_hf_dir(path, options, *m));
  } else {
    CS_RETURN_IF_ERROR(load_gguf(path, options, *m));
  }
  if (m->tokenizer.vocab_size() > m->config.vocab_size) {
    return make_error(ErrorCode::kInvalidArgument,
                      "tokenizer has {} tokens but the model's vocabulary is {}",
                      m->tokenizer.vocab_size(), m->config.vocab_size);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (options.summary) LOG_INFO("{}", model_summary(*m, secs));
  return m;
}

}  // namespace cartserve
