#include "engine/cartridge_builder.h"

#include <atomic>

#include "cartridge/cartridge_io.h"

namespace cartserve {

Result<CartridgeData> export_cartridge(Engine& engine, const std::vector<int32_t>& ids,
                                       DType dtype) {
  if (ids.empty()) return make_error(ErrorCode::kInvalidArgument, "the document is empty");
  static std::atomic<uint64_t> next{0};
  GenerateRequest g;
  g.id = "cartridge-build-" + std::to_string(next++);
  g.prompt_token_ids = ids;
  g.export_kv = true;
  auto stream = engine.submit(std::move(g));
  std::shared_ptr<const ExportedKv> kv;
  for (bool done = false; !done;) {
    for (auto& o : stream->next(std::chrono::milliseconds(100))) {
      if (!o.error.ok()) return o.error.with_context("prefilling the document");
      if (o.kv) kv = o.kv;
      done = done || o.finished;
    }
  }
  if (!kv) return make_error(ErrorCode::kInternal, "the engine returned no KV for the document");
  CartridgeData out;
  out.num_layers = static_cast<int32_t>(kv->keys.size());
  out.num_kv_heads = kv->keys.empty() ? 0 : static_cast<int32_t>(kv->keys[0].dim(0));
  out.head_dim = kv->keys.empty() ? 0 : static_cast<int32_t>(kv->keys[0].dim(2));
  out.num_tokens = kv->num_tokens;
  out.num_frozen_tokens = 0;
  out.dtype = kv->dtype;
  out.keys = kv->keys;  // shallow: the tensors are not written again
  out.values = kv->values;
  out.token_ids = kv->token_ids;
  if (out.dtype != dtype) return cast_cartridge(out, dtype);
  return out;
}

}  // namespace cartserve
