// Synthetic cartridges and manifests for the cartridge-core suites.
#pragma once

#include <cstdint>
#include <string>

#include "cartridge/cartridge.h"
#include "cartridge/manifest.h"
#include "core/dtype.h"
#include "core/tensor.h"

namespace cartserve::testing {

// Value stored at keys/values[layer][h, t, d] by make_cartridge: distinct per
// (seed, layer, kind, h, t, d) and exactly representable in bf16 and fp16
// (small integers and halves).
inline float cartridge_value(int seed, int layer, int kind, int h, int t, int d) {
  const int v = (seed * 31 + layer * 17 + kind * 7 + h * 5 + t * 3 + d) % 256;
  return static_cast<float>(v - 128) * 0.5f;
}

// [layers] x [heads, tokens, dim] keys and values in `dtype`.
inline CartridgeData make_cartridge(int layers, int heads, int tokens, int dim,
                                    DType dtype = DType::kBF16, int frozen = 0, int seed = 0) {
  CartridgeData c;
  c.num_layers = layers;
  c.num_kv_heads = heads;
  c.num_tokens = tokens;
  c.head_dim = dim;
  c.num_frozen_tokens = frozen;
  c.dtype = dtype;
  for (int l = 0; l < layers; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      Tensor f32(DType::kF32, {heads, tokens, dim});  // [H, T, D]
      float* p = f32.data<float>();
      for (int h = 0; h < heads; ++h) {
        for (int t = 0; t < tokens; ++t) {
          for (int d = 0; d < dim; ++d) {
            p[(h * tokens + t) * dim + d] = cartridge_value(seed, l, kind, h, t, d);
          }
        }
      }
      (kind == 0 ? c.keys : c.values).push_back(f32.to(dtype));
    }
  }
  return c;
}

// Bytes of all keys and values, computed from the shape (not from the data).
inline uint64_t expected_kv_bytes(int layers, int heads, int tokens, int dim, DType dtype) {
  return 2ull * layers * heads * tokens * dim * dtype_size(dtype);
}

// A consistent manifest in the reference system's test shape (Llama-3.2-3B).
inline CartridgeManifest make_manifest(const std::string& id = "test_cart_01") {
  CartridgeManifest m;
  m.cartridge_id = id;
  m.model_id = "meta-llama/Llama-3.2-3B-Instruct";
  m.num_layers = 28;
  m.num_kv_heads = 8;
  m.head_dim = 128;
  m.dtype = DType::kBF16;
  m.num_tokens_raw = 2048;
  m.num_tokens_aligned = 2048;
  m.block_size = 16;
  m.num_blocks = 128;
  m.has_frozen_prefix = true;
  m.num_frozen_tokens = 1;
  m.checksum = std::string(64, 'a');
  m.file_size_bytes = 100'000'000;
  m.created_at = "2026-04-29T12:00:00Z";
  m.training_steps = 2694;
  m.source_document = "patient_04 medical record";
  m.labels = {{"patient_id", "patient_04"}, {"doc_type", "medical_record"}};
  return m;
}

// A manifest describing `c` (block size 4, no checksum).
inline CartridgeManifest manifest_for(const std::string& id, const CartridgeData& c) {
  CartridgeManifest m;
  m.cartridge_id = id;
  m.model_id = "test/model";
  m.num_layers = c.num_layers;
  m.num_kv_heads = c.num_kv_heads;
  m.head_dim = c.head_dim;
  m.dtype = c.dtype;
  m.num_tokens_raw = c.num_tokens;
  m.block_size = 4;
  m.num_tokens_aligned = align_tokens_down(c.num_tokens, 4);
  m.num_blocks = m.num_tokens_aligned / 4;
  m.has_frozen_prefix = c.num_frozen_tokens > 0;
  m.num_frozen_tokens = c.num_frozen_tokens;
  return m;
}

}  // namespace cartserve::testing
