#include "engine/cartridge_builder.h"

#include "cartridge/cartridge_io.h"
#include "core/progress.h"
#include "model/sequence_runner.h"
#include "tokenizer/chat_template.h"

namespace cartserve {

Result<std::vector<int32_t>> cartridge_prompt_ids(const Model& model, const std::string& text,
                                                  const CartridgeBuildOptions& options) {
  if (text.empty()) return make_error(ErrorCode::kInvalidArgument, "the document is empty");
  std::vector<int32_t> ids;
  if (options.raw) {
    if (model.tokenizer.add_bos_by_default() && model.tokenizer.bos_id()) {
      ids.push_back(*model.tokenizer.bos_id());
    }
    const auto body = model.tokenizer.encode(text);
    ids.insert(ids.end(), body.begin(), body.end());
    return ids;
  }
  if (model.chat_template.empty()) {
    return make_error(ErrorCode::kInvalidArgument,
                      "the model has no chat template to wrap the document in (use --raw)");
  }
  CS_ASSIGN_OR_RETURN(ChatTemplate tmpl, ChatTemplate::parse(model.chat_template));
  ChatTemplateOptions o;
  o.add_generation_prompt = false;
  o.bos_token = model.bos_text;
  o.eos_token = model.eos_text;
  CS_ASSIGN_OR_RETURN(std::string rendered, tmpl.render({{"system", text}}, o));
  return model.tokenizer.encode(rendered);
}

Result<CartridgeData> build_cartridge(const Model& model, const std::string& text,
                                      const CartridgeBuildOptions& options) {
  CS_ASSIGN_OR_RETURN(std::vector<int32_t> ids, cartridge_prompt_ids(model, text, options));
  const ModelConfig& c = model.config;
  const int32_t T = static_cast<int32_t>(ids.size());
  if (T > c.max_position_embeddings) {
    return make_error(ErrorCode::kOutOfRange, "the document is {} tokens, beyond the model's {}", T,
                      c.max_position_embeddings);
  }
  SequenceRunner runner(model, T);
  ProgressBar bar("prefilling document", static_cast<uint64_t>(T));
  if (!options.progress) bar.finish();
  for (int32_t done = 0; done < T;) {
    const int32_t n = std::min(options.chunk, T - done);
    auto r = runner.append(
        std::span<const int32_t>(ids).subspan(static_cast<size_t>(done), static_cast<size_t>(n)));
    if (!r.ok()) return r.status();
    done += n;
    bar.update(static_cast<uint64_t>(done));
  }
  bar.finish();

  // The runner's cache holds position t at slot t: [T, H, D] per layer -> [H, T, D].
  CartridgeData out;
  out.num_layers = c.num_layers;
  out.num_kv_heads = c.num_kv_heads;
  out.head_dim = c.head_dim;
  out.num_tokens = T;
  out.num_frozen_tokens = 0;
  out.dtype = DType::kF32;
  out.token_ids = ids;
  const int32_t H = c.num_kv_heads, D = c.head_dim;
  for (int32_t l = 0; l < c.num_layers; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      const float* src = kv == 0 ? runner.cache().k(l) : runner.cache().v(l);  // [T, H * D]
      Tensor t(DType::kF32, {H, T, D});
      float* dst = t.data<float>();
      for (int32_t pos = 0; pos < T; ++pos) {
        for (int32_t h = 0; h < H; ++h) {
          std::copy_n(src + (static_cast<size_t>(pos) * H + h) * D, D,
                      dst + (static_cast<size_t>(h) * T + pos) * D);
        }
      }
      (kv == 0 ? out.keys : out.values).push_back(std::move(t));
    }
  }
  if (options.dtype != DType::kF32) return cast_cartridge(out, options.dtype);
  return out;
}

}  // namespace cartserve
