#include "runtime/kv_transfer.h"

namespace cartserve {

Status validate_transfer(const HostKv& kv, const KvBlockList& blocks, const KvSpec& spec) {
  if (kv.keys.size() != static_cast<size_t>(spec.num_layers) ||
      kv.values.size() != static_cast<size_t>(spec.num_layers)) {
    return make_error(ErrorCode::kInvalidArgument, "KV transfer of {} layers; the model has {}",
                      kv.keys.size(), spec.num_layers);
  }
  if (kv.dtype != DType::kF32 && kv.dtype != DType::kF16 && kv.dtype != DType::kBF16) {
    return make_error(ErrorCode::kInvalidArgument, "KV transfer in {} (float types only)",
                      dtype_name(kv.dtype));
  }
  if (blocks.block_ids.size() != blocks.block_index.size()) {
    return make_error(ErrorCode::kInvalidArgument, "KV transfer: {} blocks but {} indices",
                      blocks.block_ids.size(), blocks.block_index.size());
  }
  const int32_t B = spec.block_size;
  for (size_t i = 0; i < blocks.block_ids.size(); ++i) {
    const int32_t b = blocks.block_ids[i], idx = blocks.block_index[i];
    if (i > 0 && idx <= blocks.block_index[i - 1]) {
      return make_error(ErrorCode::kInvalidArgument,
                        "KV transfer: block indices must increase ({} after {})", idx,
                        blocks.block_index[i - 1]);
    }
    if (b <= 0 || b >= spec.num_blocks || idx < 0 ||
        static_cast<int64_t>(idx) * B >= kv.num_tokens) {
      return make_error(ErrorCode::kInvalidArgument,
                        "KV transfer: block {} (index {}) outside the cache or the {} tokens", b,
                        idx, kv.num_tokens);
    }
  }
  return {};
}

}  // namespace cartserve
