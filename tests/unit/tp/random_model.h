// Random-weight Llama-family models for the tensor-parallel tests: any head
// layout (e.g. 12 q heads over 3 KV heads, which no committed fixture has),
// fp32 or Q8_0 block-quantized matrices, optional q/k/v biases and q/k norm.
#pragma once

#include <cmath>
#include <cstring>
#include <memory>
#include <random>

#include "core/dtype.h"
#include "model/model.h"

namespace cartserve::testing {

struct RandomModelSpec {
  int32_t vocab = 96;
  int32_t hidden = 64;
  int32_t layers = 2;
  int32_t heads = 12;
  int32_t kv_heads = 3;
  int32_t head_dim = 16;
  int32_t intermediate = 128;
  bool q8_0 = false;     // matrices as GGML Q8_0 blocks (Tensor::block_type 8)
  bool bf16 = false;     // matrices in bf16 (--dtype bfloat16)
  bool bias = false;     // q/k/v biases (Qwen2)
  bool qk_norm = false;  // per-head q/k RMSNorm (Qwen3)
  uint32_t seed = 1234;
};

inline Tensor random_f32(std::mt19937& rng, Shape shape, float scale, float offset = 0.f) {
  Tensor t(DType::kF32, std::move(shape));
  std::normal_distribution<float> d(0.f, 1.f);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    p[i] = offset + scale * d(rng);
  return t;
}

// [rows, cols] in GGML Q8_0 (per 32 elements: fp16 scale d, then 32 int8
// quants): random quants and power-of-two scales (exact in fp16).
inline Tensor random_q8_0(std::mt19937& rng, int64_t rows, int64_t cols, float scale) {
  const int64_t blocks = cols / 32;
  Tensor t(DType::kU8, {rows, blocks * 34});
  std::uniform_int_distribution<int> q(-127, 127);
  const float d = std::exp2(std::round(std::log2(scale / 64.f)));
  const uint16_t dh = f32_to_fp16(d);
  uint8_t* p = t.data<uint8_t>();
  for (int64_t b = 0; b < rows * blocks; ++b, p += 34) {
    std::memcpy(p, &dh, 2);
    for (int i = 0; i < 32; ++i)
      p[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(q(rng)));
  }
  t.set_block_type(8);
  return t;
}

inline void randomize_layers(Model& m, const RandomModelSpec& s) {
  ModelConfig& c = m.config;
  c.num_heads = s.heads;
  c.num_kv_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.intermediate_size = s.intermediate;
  c.num_layers = s.layers;
  c.attention_bias = s.bias;
  c.qk_norm = s.qk_norm;
  std::mt19937 rng(s.seed);
  const int64_t h = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), ff = s.intermediate;
  auto mat = [&](int64_t rows, int64_t cols) {
    const float scale = 1.f / std::sqrt(static_cast<float>(cols));
    if (s.q8_0) return random_q8_0(rng, rows, cols, scale);
    Tensor t = random_f32(rng, {rows, cols}, scale);
    return s.bf16 ? t.to(DType::kBF16) : t;
  };
  m.weights.layers.clear();
  for (int32_t i = 0; i < s.layers; ++i) {
    LayerWeights l;
    l.attn_norm = random_f32(rng, {h}, 0.1f, 1.f);
    l.ffn_norm = random_f32(rng, {h}, 0.1f, 1.f);
    l.wq = mat(qd, h);
    l.wk = mat(kvd, h);
    l.wv = mat(kvd, h);
    l.wo = mat(h, qd);
    l.w_gate = mat(ff, h);
    l.w_up = mat(ff, h);
    l.w_down = mat(h, ff);
    if (s.bias) {
      l.bq = random_f32(rng, {qd}, 0.1f);
      l.bk = random_f32(rng, {kvd}, 0.1f);
      l.bv = random_f32(rng, {kvd}, 0.1f);
    }
    if (s.qk_norm) {
      l.q_norm = random_f32(rng, {s.head_dim}, 0.1f, 1.f);
      l.k_norm = random_f32(rng, {s.head_dim}, 0.1f, 1.f);
    }
    m.weights.layers.push_back(std::move(l));
  }
}

// The bf16 model of the CUDA backend tests: 12 q heads of 64 over 3 KV heads.
inline RandomModelSpec gpu_test_spec() {
  RandomModelSpec s;
  s.bf16 = true;
  s.hidden = 256;
  s.heads = 12;
  s.kv_heads = 3;
  s.head_dim = 64;
  s.intermediate = 512;
  s.vocab = 160;
  s.layers = 3;
  return s;
}

inline std::unique_ptr<Model> random_model(const RandomModelSpec& s) {
  auto m = std::make_unique<Model>();
  ModelConfig& c = m->config;
  c.arch = s.qk_norm ? ModelArch::kQwen3 : (s.bias ? ModelArch::kQwen2 : ModelArch::kLlama);
  c.vocab_size = s.vocab;
  c.hidden_size = s.hidden;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 1024;
  std::mt19937 rng(s.seed + 1);
  m->weights.embed = random_f32(rng, {s.vocab, s.hidden}, 1.f);
  m->weights.final_norm = random_f32(rng, {s.hidden}, 0.1f, 1.f);
  m->weights.lm_head = random_f32(rng, {s.vocab, s.hidden}, 1.f / std::sqrt(float(s.hidden)));
  randomize_layers(*m, s);
  return m;
}

}  // namespace cartserve::testing
