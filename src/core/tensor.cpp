#include "core/tensor.h"

#include <cassert>
#include <cstdlib>
#include <cstring>
#include <new>

namespace cartserve {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

std::string shape_to_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Tensor Tensor::adopt(DType dtype, Shape shape, std::shared_ptr<void> data) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.bytes_ = static_cast<size_t>(shape_numel(t.shape_)) * dtype_size(dtype);
  t.data_ = std::move(data);
  return t;
}

void Tensor::Free::operator()(void* p) const {
  std::free(p);
}

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  bytes_ = static_cast<size_t>(shape_numel(shape_)) * dtype_size(dtype_);
  const size_t alloc = ((bytes_ + 63) / 64) * 64;
  void* p = alloc ? std::aligned_alloc(64, alloc) : nullptr;
  if (alloc && !p) throw std::bad_alloc();
  if (p) std::memset(p, 0, alloc);
  data_ = std::shared_ptr<void>(p, Free{});
}

Tensor Tensor::from_f32(Shape shape, std::span<const float> values) {
  Tensor t(DType::kF32, std::move(shape));
  assert(static_cast<size_t>(t.numel()) == values.size());
  std::memcpy(t.raw(), values.data(), t.nbytes());
  return t;
}

Tensor Tensor::reshaped(Shape shape) const {
  assert(shape_numel(shape) == numel());
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return clone();
  Tensor out(dtype, shape_);
  const size_t n = static_cast<size_t>(numel());
  if (dtype_ == DType::kF32) {
    convert_from_f32(data<float>(), dtype, out.raw(), n);
  } else if (dtype == DType::kF32) {
    convert_to_f32(dtype_, raw(), out.data<float>(), n);
  } else {
    Tensor tmp = to(DType::kF32);
    convert_from_f32(tmp.data<float>(), dtype, out.raw(), n);
  }
  return out;
}

Tensor Tensor::clone() const {
  Tensor out(dtype_, shape_);
  if (bytes_) std::memcpy(out.raw(), raw(), bytes_);
  out.block_type_ = block_type_;
  return out;
}

Tensor tensor_from_view(const TensorView& v) {
  Tensor t(v.dtype, v.shape);
  if (t.nbytes()) std::memcpy(t.raw(), v.data, t.nbytes());
  return t;
}

}  // namespace cartserve
