#include "engine/cpu_backend.h"

#include <cstring>

namespace cartserve {

CpuBackend::CpuBackend(const Model& model, int32_t num_blocks, int32_t block_size)
    : forward_(model),
      cache_(model.config.num_layers, num_blocks, block_size, model.config.kv_dim()) {}

Status CpuBackend::forward(const ForwardBatch& batch, std::vector<float>& logits) {
  return forward_.forward(batch, cache_, logits);
}

void CpuBackend::copy_slots(int32_t src_block, int32_t dst_block, int32_t num_slots) {
  const size_t row = static_cast<size_t>(cache_.kv_dim());
  const size_t src = static_cast<size_t>(src_block) * cache_.block_size() * row;
  const size_t dst = static_cast<size_t>(dst_block) * cache_.block_size() * row;
  const size_t n = static_cast<size_t>(num_slots) * row * sizeof(float);
  for (int l = 0; l < cache_.num_layers(); ++l) {
    std::memmove(cache_.k(l) + dst, cache_.k(l) + src, n);
    std::memmove(cache_.v(l) + dst, cache_.v(l) + src, n);
  }
}

Status CpuBackend::check_slots(int32_t layer, const int32_t* slots, int32_t n) const {
  if (layer < 0 || layer >= cache_.num_layers()) {
    return make_error(ErrorCode::kInvalidArgument, "layer {} outside [0, {})", layer,
                      cache_.num_layers());
  }
  const int64_t num_slots = static_cast<int64_t>(cache_.num_blocks()) * cache_.block_size();
  for (int32_t i = 0; i < n; ++i) {
    if (slots[i] < 0 || slots[i] >= num_slots) {
      return make_error(ErrorCode::kInvalidArgument, "slot {} outside the KV cache", slots[i]);
    }
  }
  return {};
}

Status CpuBackend::write_cache(int32_t layer, bool value, const float* rows, const int32_t* slots,
                               int32_t n) {
  CS_RETURN_IF_ERROR(check_slots(layer, slots, n));
  const size_t row = static_cast<size_t>(cache_.kv_dim());
  float* cache = value ? cache_.v(layer) : cache_.k(layer);
  for (int32_t i = 0; i < n; ++i) {
    std::memcpy(cache + static_cast<size_t>(slots[i]) * row, rows + i * row, row * sizeof(float));
  }
  return {};
}

Status CpuBackend::read_cache(int32_t layer, bool value, const int32_t* slots, int32_t n,
                              float* rows) const {
  CS_RETURN_IF_ERROR(check_slots(layer, slots, n));
  const size_t row = static_cast<size_t>(cache_.kv_dim());
  const float* cache = value ? cache_.v(layer) : cache_.k(layer);
  for (int32_t i = 0; i < n; ++i) {
    std::memcpy(rows + i * row, cache + static_cast<size_t>(slots[i]) * row, row * sizeof(float));
  }
  return {};
}

}  // namespace cartserve
