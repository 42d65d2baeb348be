// Host tensors. Tensor owns a 64-byte aligned buffer; TensorView borrows one
// (e.g. a region of an mmapped file). Both are row-major and contiguous.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace cartserve {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_to_string(const Shape& shape);  // "[2, 3, 4]"

struct TensorView {
  DType dtype = DType::kF32;
  Shape shape;
  const void* data = nullptr;

  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

class Tensor {
 public:
  Tensor() = default;
  // Allocates zero-filled storage.
  Tensor(DType dtype, Shape shape);

  static Tensor from_f32(Shape shape, std::span<const float> values);
  // A tensor over `data` (at least numel * dtype_size bytes, owned through
  // the shared_ptr's deleter), e.g. page-locked memory of a GPU runtime.
  static Tensor adopt(DType dtype, Shape shape, std::shared_ptr<void> data);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t ndim() const { return shape_.size(); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return bytes_; }
  bool empty() const { return bytes_ == 0; }

  void* raw() { return data_.get(); }
  const void* raw() const { return data_.get(); }
  template <typename T>
  T* data() {
    return static_cast<T*>(raw());
  }
  template <typename T>
  const T* data() const {
    return static_cast<const T*>(raw());
  }

  // A matrix kept in a GGML block format (the CPU backend keeps GGUF weights
  // so): kU8 storage [rows, bytes per row] tagged with the GGML type id
  // (e.g. 3 = Q4_1); 0 for every other tensor.
  uint32_t block_type() const { return block_type_; }
  void set_block_type(uint32_t ggml_type) { block_type_ = ggml_type; }

  TensorView view() const { return {dtype_, shape_, raw()}; }
  // Same storage, new shape with equal numel.
  Tensor reshaped(Shape shape) const;
  // Deep copy converted to float32 / the given float type.
  Tensor to(DType dtype) const;
  // Two tensors share storage (copies are shallow; use clone() for a deep copy).
  Tensor clone() const;

 private:
  struct Free {
    void operator()(void* p) const;
  };
  DType dtype_ = DType::kF32;
  Shape shape_;
  size_t bytes_ = 0;
  uint32_t block_type_ = 0;
  std::shared_ptr<void> data_;
};

// Deep copy of any view into an owning tensor of the same dtype.
Tensor tensor_from_view(const TensorView& v);

}  // namespace cartserve
