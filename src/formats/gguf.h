// GGUF (v2/v3) reader over an mmapped file: header, metadata key/values,
// tensor infos, alignment, and tensor data dequantized to fp32.
// Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
//
// NOTE: every offset and count read from the file is validated against the
// file size before use; a malformed file yields kCorrupt (or kUnsupported
// for a valid but unknown tensor type), never a crash or an over-read.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/mapped_file.h"
#include "core/status.h"
#include "core/tensor.h"

namespace cartserve {

// ggml tensor types (values as stored in the file).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

// "F32", "Q4_K", ...; "type<N>" for values we do not know.
std::string ggml_type_name(uint32_t type);

// One metadata value. Arrays hold values of one element type.
struct GgufValue {
  enum class Type : uint32_t {
    kU8 = 0,
    kI8 = 1,
    kU16 = 2,
    kI16 = 3,
    kU32 = 4,
    kI32 = 5,
    kF32 = 6,
    kBool = 7,
    kString = 8,
    kArray = 9,
    kU64 = 10,
    kI64 = 11,
    kF64 = 12,
  };
  Type type = Type::kU8;
  // Integers (signed or unsigned) as int64/uint64, floats as double.
  std::variant<int64_t, uint64_t, double, bool, std::string, std::vector<GgufValue>> value;
  Type array_type = Type::kU8;  // element type when type == kArray
};

// "u8", "string", "array", ...
const char* gguf_value_type_name(GgufValue::Type type);

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the fastest-moving dimension
  uint32_t type = 0;        // GgmlType value (may be unknown to us)
  uint64_t offset = 0;      // relative to the start of the data section
  uint64_t nbytes = 0;      // validated to lie inside the file; 0 for a type ggml does not define
  // Row-major shape (ne reversed): a weight [out, in] has ne = {in, out}.
  Shape shape() const;
};

class GgufFile {
 public:
  static Result<GgufFile> open(const std::string& path);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return file_.path(); }
  uint64_t file_size() const { return file_.size(); }
  uint64_t data_offset() const { return data_offset_; }  // start of the (aligned) data section

  // Metadata. The typed getters return kNotFound when the key is absent and
  // kCorrupt when it has another type (integers of any width convert).
  const GgufValue* find(std::string_view key) const;
  std::vector<std::string> keys() const;
  Result<std::string> get_string(std::string_view key) const;
  Result<int64_t> get_int(std::string_view key) const;
  Result<double> get_float(std::string_view key) const;  // also accepts integers
  Result<bool> get_bool(std::string_view key) const;
  Result<std::vector<std::string>> get_string_array(std::string_view key) const;
  Result<std::vector<int64_t>> get_int_array(std::string_view key) const;
  Result<std::vector<double>> get_float_array(std::string_view key) const;

  // Tensors.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  std::span<const uint8_t> tensor_bytes(const GgufTensorInfo& info) const;
  // Dequantized copy as a float32 tensor of info.shape(). kUnsupported for a
  // type we cannot dequantize (named in the message with the tensor's name).
  Result<Tensor> load_f32(const GgufTensorInfo& info) const;
  Result<Tensor> load_f32(std::string_view name) const;

 private:
  MappedFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<std::string> key_order_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace cartserve
