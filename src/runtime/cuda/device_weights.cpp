#include "runtime/cuda/device_weights.h"

#include <cstring>
#include <utility>

#include "core/thread_pool.h"
#include "kernels/cuda_ops.h"
#include "model/rope.h"
#include "runtime/cuda/cuda_status.h"

namespace cartserve::cuda {

namespace {

constexpr uint64_t kAlign = 256;

uint64_t aligned(uint64_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

// Places host tensors, converted to bf16, one after another in a host image
// of the device allocation; the image is copied up in one go.
class Packer {
 public:
  explicit Packer(bool measure) : measure_(measure) {}

  // Appends the rows of every tensor (each [rows_i, cols], same cols) as one
  // matrix; returns its offset. col_scale (non-empty: [cols]) multiplies
  // column j in fp32 before the one rounding to bf16 (a folded RMSNorm weight).
  uint64_t matrix(std::initializer_list<const Tensor*> parts,
                  const std::vector<float>& col_scale = {}) {
    int64_t numel = 0;
    for (const Tensor* t : parts)
      numel += t->numel();
    const uint64_t off = reserve(static_cast<uint64_t>(numel) * sizeof(uint16_t));
    if (measure_) return off;
    auto* dst = reinterpret_cast<uint16_t*>(image_.data() + off);
    for (const Tensor* t : parts) {
      to_bf16(*t, dst, col_scale);
      dst += t->numel();
    }
    return off;
  }
  // Gate [ff, cols] and up [ff, cols] as one [2 * ff, cols] matrix whose rows
  // alternate in blocks of `block` (which divides ff): gate rows [k*block,
  // (k+1)*block), then the same up rows, for k = 0, 1, ...
  uint64_t gate_up(const Tensor& gate, const Tensor& up, int64_t block,
                   const std::vector<float>& col_scale = {}) {
    const int64_t ff = gate.dim(0), cols = gate.numel() / ff;
    const uint64_t off = reserve(static_cast<uint64_t>(2 * ff * cols) * sizeof(uint16_t));
    if (measure_) return off;
    auto* dst = reinterpret_cast<uint16_t*>(image_.data() + off);
    std::vector<uint16_t> g(static_cast<size_t>(ff * cols)), u(g.size());
    to_bf16(gate, g.data(), col_scale);
    to_bf16(up, u.data(), col_scale);
    const size_t block_elems = static_cast<size_t>(block * cols);
    for (int64_t k = 0; k < ff / block; ++k) {
      std::memcpy(dst + 2 * k * block_elems, g.data() + k * block_elems, block_elems * 2);
      std::memcpy(dst + (2 * k + 1) * block_elems, u.data() + k * block_elems, block_elems * 2);
    }
    return off;
  }
  uint64_t floats(const std::vector<float>& v) {
    const uint64_t off = reserve(v.size() * sizeof(float));
    if (!measure_) std::memcpy(image_.data() + off, v.data(), v.size() * sizeof(float));
    return off;
  }
  uint64_t size() const { return size_; }
  // Room for what a measuring pass counted (before packing for real).
  void allocate(uint64_t bytes) { image_.resize(bytes); }
  const uint8_t* data() const { return image_.data(); }

 private:
  uint64_t reserve(uint64_t bytes) {
    const uint64_t off = size_;
    size_ = aligned(size_ + bytes);
    return off;
  }
  static void to_bf16(const Tensor& t, uint16_t* dst, const std::vector<float>& col_scale = {}) {
    const auto n = static_cast<size_t>(t.numel());
    if (t.dtype() == DType::kBF16 && col_scale.empty()) {
      std::memcpy(dst, t.raw(), n * sizeof(uint16_t));
      return;
    }
    ThreadPool::global().parallel_for(
        n,
        [&](size_t b, size_t e) {
          std::vector<float> tmp(e - b);
          convert_to_f32(t.dtype(),
                         static_cast<const uint8_t*>(t.raw()) + b * dtype_size(t.dtype()),
                         tmp.data(), e - b);
          if (!col_scale.empty()) {
            const size_t cols = col_scale.size();
            for (size_t i = b; i < e; ++i)
              tmp[i - b] *= col_scale[i % cols];
          }
          convert_from_f32(tmp.data(), DType::kBF16, dst + b, e - b);
        },
        1 << 16);
  }

  bool measure_;
  uint64_t size_ = 0;
  std::vector<uint8_t> image_;
};

struct Offsets {
  uint64_t embed = 0, lm_head = 0, final_norm = 0, inv_freq = 0;
  struct Layer {
    uint64_t attn_norm, wqkv, bqkv, wo, ffn_norm, wgu, wdown;
    bool bias;
  };
  std::vector<Layer> layers;
};

// A norm weight [hidden] in fp32.
std::vector<float> to_f32(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  convert_to_f32(t.dtype(), t.raw(), v.data(), v.size());
  return v;
}

Offsets pack(const Model& model, Packer& p, bool fold_norms) {
  const ModelWeights& w = model.weights;
  Offsets o;
  o.embed = p.matrix({&w.embed});
  // Tied: the LM head is the embedding (the host may hold a bf16 copy of it).
  const bool tied = w.lm_head.raw() == w.embed.raw() || model.config.tie_word_embeddings;
  o.lm_head = tied ? o.embed : p.matrix({&w.lm_head});
  o.final_norm = p.matrix({&w.final_norm});
  o.inv_freq = p.floats(rope_inv_freq(model.config, w.rope_freq_factors));
  for (const LayerWeights& l : w.layers) {
    Offsets::Layer ol{};
    ol.attn_norm = p.matrix({&l.attn_norm});
    // Folded: W' = W diag(norm weight), the norm's weight applied by the
    // projection (the consumer of its output applies inv_rms).
    const std::vector<float> attn_cols = fold_norms ? to_f32(l.attn_norm) : std::vector<float>{};
    const std::vector<float> ffn_cols = fold_norms ? to_f32(l.ffn_norm) : std::vector<float>{};
    ol.wqkv = p.matrix({&l.wq, &l.wk, &l.wv}, attn_cols);
    ol.bias = !l.bq.empty();
    if (ol.bias) ol.bqkv = p.matrix({&l.bq, &l.bk, &l.bv});
    ol.wo = p.matrix({&l.wo});
    ol.ffn_norm = p.matrix({&l.ffn_norm});
    ol.wgu = p.gate_up(l.w_gate, l.w_up,
                       ops::cuda::gate_up_block(static_cast<int>(l.w_gate.dim(0))), ffn_cols);
    ol.wdown = p.matrix({&l.w_down});
    o.layers.push_back(ol);
  }
  return o;
}

}  // namespace

uint64_t DeviceWeights::bytes_needed(const Model& model) {
  Packer p(/*measure=*/true);
  pack(model, p, false);
  return p.size();
}

Result<DeviceWeights> DeviceWeights::upload(const Model& model, bool fold_norms) {
  Packer measure(true);
  pack(model, measure, fold_norms);
  DeviceWeights dw;
  dw.bytes_ = measure.size();
  Status st = cuda_status(cudaMalloc(&dw.base_, dw.bytes_), "cudaMalloc (weights)");
  if (!st.ok()) {
    return make_error(st.code(), "cannot allocate {} MiB of GPU memory for the weights: {}",
                      dw.bytes_ >> 20, st.message());
  }
  Packer p(false);
  p.allocate(dw.bytes_);
  const Offsets o = pack(model, p, fold_norms);
  CS_CUDA(cudaMemcpy(dw.base_, p.data(), p.size(), cudaMemcpyHostToDevice));
  auto* base = static_cast<const uint8_t*>(dw.base_);
  auto at = [&](uint64_t off) { return reinterpret_cast<const bf16*>(base + off); };
  dw.embed = at(o.embed);
  dw.lm_head = at(o.lm_head);
  dw.final_norm = at(o.final_norm);
  dw.inv_freq = reinterpret_cast<const float*>(base + o.inv_freq);
  dw.folded_norms = fold_norms;
  for (const auto& l : o.layers) {
    DeviceLayer d;
    d.attn_norm = at(l.attn_norm);
    d.wqkv = at(l.wqkv);
    d.bqkv = l.bias ? at(l.bqkv) : nullptr;
    d.wo = at(l.wo);
    d.ffn_norm = at(l.ffn_norm);
    d.wgu = at(l.wgu);
    d.wdown = at(l.wdown);
    dw.layers.push_back(d);
  }
  return dw;
}

DeviceWeights::DeviceWeights(DeviceWeights&& o) noexcept {
  *this = std::move(o);
}

DeviceWeights& DeviceWeights::operator=(DeviceWeights&& o) noexcept {
  if (this != &o) {
    if (base_) cudaFree(base_);
    embed = o.embed;
    lm_head = o.lm_head;
    final_norm = o.final_norm;
    inv_freq = o.inv_freq;
    folded_norms = o.folded_norms;
    layers = std::move(o.layers);
    base_ = std::exchange(o.base_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

DeviceWeights::~DeviceWeights() {
  if (base_) cudaFree(base_);
}

}  // namespace cartserve::cuda
