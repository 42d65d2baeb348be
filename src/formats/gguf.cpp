// GGUF parser. Layout (little-endian, v2 and v3 are identical on disk):
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x  { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to `general.alignment` (default 32) | data section
// A string is u64 length + bytes (no NUL); an array is u32 element type +
// u64 count + elements (arrays may nest).
//
// NOTE: a Reader never reads past the end of the mapping: every count is
// checked against the bytes left before anything is allocated for it, so a
// hostile file costs at most a bounded multiple of its own size in memory.
#include "formats/gguf.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <new>
#include <numeric>

#include "core/thread_pool.h"
#include "formats/gguf_dequant.h"

namespace cartserve {
namespace {

constexpr uint32_t kMaxDims = 4;                     // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 8;                    // nested metadata arrays
constexpr uint64_t kMaxMetadataValues = 1ull << 24;  // all array elements together
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // empty key, type, u8 value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // empty name, n_dims 0, type, offset

using VType = GgufValue::Type;

// Bytes an encoded value of `t` takes at least (fixed size for scalars).
uint64_t min_value_bytes(VType t) {
  switch (t) {
    case VType::kU8:
    case VType::kI8:
    case VType::kBool:
      return 1;
    case VType::kU16:
    case VType::kI16:
      return 2;
    case VType::kU32:
    case VType::kI32:
    case VType::kF32:
      return 4;
    case VType::kU64:
    case VType::kI64:
    case VType::kF64:
      return 8;
    case VType::kString:
      return 8;
    case VType::kArray:
      return 4 + 8;
  }
  return 1;
}

bool valid_value_type(uint32_t t) {
  return t <= static_cast<uint32_t>(VType::kF64);
}

// Bounds-checked little-endian cursor over the mapped file.
class Reader {
 public:
  Reader(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  Status read_raw(void* out, uint64_t n, std::string_view what) {
    if (n > remaining()) {
      return make_error(ErrorCode::kCorrupt,
                        "truncated: {} needs {} bytes at offset {}, only {} left", what, n, pos_,
                        remaining());
    }
    if (n) std::memcpy(out, data_ + pos_, n);
    pos_ += n;
    return {};
  }

  template <typename T>
  Status read(T* out, std::string_view what) {
    return read_raw(out, sizeof(T), what);
  }

  Status read_string(std::string* out, std::string_view what) {
    uint64_t len = 0;
    CS_RETURN_IF_ERROR(read(&len, what));
    if (len > remaining()) {
      return make_error(ErrorCode::kCorrupt,
                        "{} has length {} at offset {}, beyond the end of the file ({} bytes left)",
                        what, len, pos_ - 8, remaining());
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return {};
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

struct ValueParser {
  Reader& r;
  uint64_t values = 0;  // array elements read so far (memory bound)

  Status read_value(VType type, GgufValue* out, int depth) {
    out->type = type;
    switch (type) {
      case VType::kU8:
        return read_int<uint8_t>(out);
      case VType::kI8:
        return read_int<int8_t>(out);
      case VType::kU16:
        return read_int<uint16_t>(out);
      case VType::kI16:
        return read_int<int16_t>(out);
      case VType::kU32:
        return read_int<uint32_t>(out);
      case VType::kI32:
        return read_int<int32_t>(out);
      case VType::kU64:
        return read_int<uint64_t>(out);
      case VType::kI64:
        return read_int<int64_t>(out);
      case VType::kF32: {
        float v = 0;
        CS_RETURN_IF_ERROR(r.read(&v, "f32 value"));
        out->value = static_cast<double>(v);
        return {};
      }
      case VType::kF64: {
        double v = 0;
        CS_RETURN_IF_ERROR(r.read(&v, "f64 value"));
        out->value = v;
        return {};
      }
      case VType::kBool: {
        uint8_t v = 0;
        CS_RETURN_IF_ERROR(r.read(&v, "bool value"));
        if (v > 1) return make_error(ErrorCode::kCorrupt, "bool value is {}, not 0 or 1", v);
        out->value = v == 1;
        return {};
      }
      case VType::kString: {
        std::string s;
        CS_RETURN_IF_ERROR(r.read_string(&s, "string value"));
        out->value = std::move(s);
        return {};
      }
      case VType::kArray:
        return read_array(out, depth);
    }
    return make_error(ErrorCode::kCorrupt, "unknown value type {}", static_cast<uint32_t>(type));
  }

  template <typename T>
  Status read_int(GgufValue* out) {
    T v{};
    CS_RETURN_IF_ERROR(r.read(&v, "integer value"));
    if constexpr (std::is_signed_v<T>) {
      out->value = static_cast<int64_t>(v);
    } else {
      out->value = static_cast<uint64_t>(v);
    }
    return {};
  }

  Status read_array(GgufValue* out, int depth) {
    if (depth >= kMaxArrayDepth) {
      return make_error(ErrorCode::kCorrupt, "arrays nested deeper than {}", kMaxArrayDepth);
    }
    uint32_t elem_type = 0;
    CS_RETURN_IF_ERROR(r.read(&elem_type, "array element type"));
    if (!valid_value_type(elem_type)) {
      return make_error(ErrorCode::kCorrupt, "array element type {} is not a GGUF value type",
                        elem_type);
    }
    uint64_t count = 0;
    CS_RETURN_IF_ERROR(r.read(&count, "array length"));
    const auto et = static_cast<VType>(elem_type);
    if (count > r.remaining() / min_value_bytes(et)) {
      return make_error(ErrorCode::kCorrupt,
                        "array of {} {} values at offset {} cannot fit in the {} bytes left", count,
                        gguf_value_type_name(et), r.pos() - 8, r.remaining());
    }
    values += count;
    if (values > kMaxMetadataValues) {
      return make_error(ErrorCode::kUnsupported, "metadata holds more than {} array values",
                        kMaxMetadataValues);
    }
    out->array_type = et;
    std::vector<GgufValue> items(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) {
      Status s = read_value(et, &items[i], depth + 1);
      if (!s.ok()) return s.with_context(fmt::format("array element {}", i));
    }
    out->value = std::move(items);
    return {};
  }
};

bool is_integer(VType t) {
  switch (t) {
    case VType::kU8:
    case VType::kI8:
    case VType::kU16:
    case VType::kI16:
    case VType::kU32:
    case VType::kI32:
    case VType::kU64:
    case VType::kI64:
      return true;
    default:
      return false;
  }
}

// Integer value as int64 (kOutOfRange for a u64 above INT64_MAX).
Result<int64_t> int_of(const GgufValue& v, std::string_view key) {
  if (const auto* u = std::get_if<uint64_t>(&v.value)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return make_error(ErrorCode::kOutOfRange, "metadata key '{}': value {} does not fit int64",
                        key, *u);
    }
    return static_cast<int64_t>(*u);
  }
  return std::get<int64_t>(v.value);
}

std::string shape_desc(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i)
    s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

}  // namespace

const char* gguf_value_type_name(GgufValue::Type type) {
  switch (type) {
    case VType::kU8:
      return "u8";
    case VType::kI8:
      return "i8";
    case VType::kU16:
      return "u16";
    case VType::kI16:
      return "i16";
    case VType::kU32:
      return "u32";
    case VType::kI32:
      return "i32";
    case VType::kF32:
      return "f32";
    case VType::kBool:
      return "bool";
    case VType::kString:
      return "string";
    case VType::kArray:
      return "array";
    case VType::kU64:
      return "u64";
    case VType::kI64:
      return "i64";
    case VType::kF64:
      return "f64";
  }
  return "unknown";
}

std::string ggml_type_name(uint32_t type) {
  static constexpr const char* kNames[] = {
      "F32",     "F16",    "Q4_0",    "Q4_1",  "type4",  "type5",  "Q5_0",   "Q5_1",
      "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",   "Q5_K",   "Q6_K",   "Q8_K",
      "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",  "IQ2_S",  "IQ4_XS",
      "I8",      "I16",    "I32",     "I64",   "F64",    "IQ1_M",  "BF16",   "type31",
      "type32",  "type33", "TQ1_0",   "TQ2_0", "type36", "type37", "type38", "MXFP4",
  };
  if (type < std::size(kNames)) return kNames[type];
  return "type" + std::to_string(type);
}

Shape GgufTensorInfo::shape() const {
  return Shape(ne.rbegin(), ne.rend());
}

Result<GgufFile> GgufFile::open(const std::string& path) {
  CS_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
  GgufFile f;
  f.file_ = std::move(mapped);
  const uint64_t file_size = f.file_.size();
  Reader r(f.file_.data(), file_size);
  auto fail = [&](const Status& s) { return s.with_context(fmt::format("GGUF '{}'", path)); };

  // Header.
  if (file_size == 0) return fail(make_error(ErrorCode::kCorrupt, "file is empty"));
  char magic[4] = {};
  if (file_size < 4) {
    return fail(make_error(ErrorCode::kCorrupt, "file of {} bytes is too small for a GGUF header",
                           file_size));
  }
  CS_RETURN_IF_ERROR(fail(r.read_raw(magic, 4, "magic")));
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    uint32_t m = 0;
    std::memcpy(&m, magic, 4);
    return fail(make_error(ErrorCode::kCorrupt,
                           "not a GGUF file: magic is 0x{:08x}, expected 0x46554747 ('GGUF')", m));
  }
  CS_RETURN_IF_ERROR(fail(r.read(&f.version_, "version")));
  if (f.version_ != 2 && f.version_ != 3) {
    if (__builtin_bswap32(f.version_) == 2 || __builtin_bswap32(f.version_) == 3) {
      return fail(make_error(ErrorCode::kUnsupported, "big-endian GGUF files are not supported"));
    }
    return fail(make_error(ErrorCode::kUnsupported,
                           "GGUF version {} is not supported (only 2 and 3)", f.version_));
  }
  uint64_t n_tensors = 0;
  uint64_t n_kv = 0;
  CS_RETURN_IF_ERROR(fail(r.read(&n_tensors, "tensor count")));
  CS_RETURN_IF_ERROR(fail(r.read(&n_kv, "metadata key/value count")));
  if (n_kv > r.remaining() / kMinKvBytes) {
    return fail(make_error(ErrorCode::kCorrupt,
                           "metadata key/value count {} cannot fit in a file of {} bytes", n_kv,
                           file_size));
  }

  // Metadata.
  ValueParser vp{r};
  f.key_order_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    Status s = r.read_string(&key, "key");
    if (!s.ok()) return fail(s.with_context(fmt::format("metadata key #{}", i)));
    auto ctx = [&](const Status& st) {
      return fail(st.with_context(fmt::format("metadata key #{} '{}'", i, key)));
    };
    if (f.metadata_.count(key)) {
      return ctx(make_error(ErrorCode::kCorrupt, "duplicate key"));
    }
    uint32_t type = 0;
    CS_RETURN_IF_ERROR(ctx(r.read(&type, "value type")));
    if (!valid_value_type(type)) {
      return ctx(make_error(ErrorCode::kCorrupt, "value type {} is not a GGUF value type", type));
    }
    GgufValue value;
    CS_RETURN_IF_ERROR(ctx(vp.read_value(static_cast<VType>(type), &value, 0)));
    f.key_order_.push_back(key);
    f.metadata_.emplace(std::move(key), std::move(value));
  }

  // Alignment.
  if (const GgufValue* a = f.find("general.alignment")) {
    if (!is_integer(a->type)) {
      return fail(make_error(ErrorCode::kCorrupt, "general.alignment is a {}, expected an integer",
                             gguf_value_type_name(a->type)));
    }
    const auto v = int_of(*a, "general.alignment");
    if (!v.ok() || *v <= 0 || *v > (int64_t{1} << 30) || !std::has_single_bit(uint64_t(*v))) {
      return fail(make_error(ErrorCode::kCorrupt,
                             "general.alignment must be a power of two up to 2^30, got {}",
                             v.ok() ? fmt::format("{}", *v) : std::string("a huge value")));
    }
    f.alignment_ = static_cast<uint64_t>(*v);
  } else {
    f.alignment_ = kDefaultAlignment;
  }

  // Tensor infos.
  if (n_tensors > r.remaining() / kMinTensorInfoBytes) {
    return fail(make_error(ErrorCode::kCorrupt,
                           "tensor count {} cannot fit in the {} bytes after the metadata",
                           n_tensors, r.remaining()));
  }
  f.tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo info;
    Status s = r.read_string(&info.name, "name");
    if (!s.ok()) return fail(s.with_context(fmt::format("tensor info #{}", i)));
    auto ctx = [&](const Status& st) {
      return fail(st.with_context(fmt::format("tensor #{} '{}'", i, info.name)));
    };
    if (f.tensor_index_.count(info.name)) {
      return ctx(make_error(ErrorCode::kCorrupt, "duplicate tensor name"));
    }
    uint32_t n_dims = 0;
    CS_RETURN_IF_ERROR(ctx(r.read(&n_dims, "n_dims")));
    if (n_dims > kMaxDims) {
      return ctx(
          make_error(ErrorCode::kCorrupt, "n_dims is {}, at most {} allowed", n_dims, kMaxDims));
    }
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = 0;
      CS_RETURN_IF_ERROR(ctx(r.read(&ne, "dimension")));
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return ctx(make_error(ErrorCode::kCorrupt, "dimension ne[{}] = {} is not positive", d,
                              static_cast<int64_t>(ne)));
      }
      if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ne) {
        return ctx(make_error(ErrorCode::kCorrupt, "element count overflows int64 at ne[{}]", d));
      }
      numel *= ne;
      info.ne.push_back(static_cast<int64_t>(ne));
    }
    CS_RETURN_IF_ERROR(ctx(r.read(&info.type, "type")));
    CS_RETURN_IF_ERROR(ctx(r.read(&info.offset, "data offset")));
    if (const auto layout = ggml_type_layout(info.type)) {
      const int64_t row = info.ne.empty() ? 1 : info.ne[0];
      if (row % layout->block_elems != 0) {
        return ctx(make_error(ErrorCode::kCorrupt,
                              "ne[0] = {} is not a multiple of the {} block size {}", row,
                              ggml_type_name(info.type), layout->block_elems));
      }
      const uint64_t blocks = numel / static_cast<uint64_t>(layout->block_elems);
      if (blocks > std::numeric_limits<uint64_t>::max() / layout->block_bytes) {
        return ctx(make_error(ErrorCode::kCorrupt, "byte size overflows"));
      }
      info.nbytes = blocks * layout->block_bytes;
    }
    if (info.offset % f.alignment_ != 0) {
      return ctx(make_error(ErrorCode::kCorrupt,
                            "data offset {} is not a multiple of the alignment {}", info.offset,
                            f.alignment_));
    }
    f.tensor_index_.emplace(info.name, f.tensors_.size());
    f.tensors_.push_back(std::move(info));
  }

  // Data section: starts at the next multiple of the alignment.
  const uint64_t infos_end = r.pos();
  f.data_offset_ = (infos_end + f.alignment_ - 1) / f.alignment_ * f.alignment_;
  if (!f.tensors_.empty() && f.data_offset_ > file_size) {
    return fail(make_error(ErrorCode::kCorrupt,
                           "truncated: data section starts at offset {}, beyond the end of the "
                           "file ({} bytes)",
                           f.data_offset_, file_size));
  }
  const uint64_t data_size = f.tensors_.empty() ? 0 : file_size - f.data_offset_;
  for (const GgufTensorInfo& t : f.tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      return fail(make_error(
          ErrorCode::kCorrupt,
          "tensor '{}' ({} {}): data [{}, {}) lies beyond the end of the data section ({} bytes; "
          "truncated file?)",
          t.name, ggml_type_name(t.type), shape_desc(t.ne), t.offset,
          t.offset + std::min(t.nbytes, ~t.offset), data_size));
    }
  }
  std::vector<size_t> order(f.tensors_.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return f.tensors_[a].offset < f.tensors_[b].offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    const GgufTensorInfo& prev = f.tensors_[order[i - 1]];
    const GgufTensorInfo& cur = f.tensors_[order[i]];
    if (prev.offset + prev.nbytes > cur.offset) {
      return fail(make_error(
          ErrorCode::kCorrupt, "data of tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", prev.name,
          prev.offset, prev.offset + prev.nbytes, cur.name, cur.offset, cur.offset + cur.nbytes));
    }
  }
  return f;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

std::vector<std::string> GgufFile::keys() const {
  return key_order_;
}

namespace {

Status missing_key(const std::string& path, std::string_view key) {
  return make_error(ErrorCode::kNotFound, "GGUF '{}': metadata key '{}' not found", path, key);
}

Status wrong_type(const std::string& path, std::string_view key, const GgufValue& v,
                  std::string_view expected) {
  std::string found = gguf_value_type_name(v.type);
  if (v.type == VType::kArray) found += fmt::format(" of {}", gguf_value_type_name(v.array_type));
  return make_error(ErrorCode::kCorrupt, "GGUF '{}': metadata key '{}' is {}, expected {}", path,
                    key, found, expected);
}

}  // namespace

Result<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing_key(path(), key);
  if (v->type != VType::kString) return wrong_type(path(), key, *v, "a string");
  return std::get<std::string>(v->value);
}

Result<int64_t> GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing_key(path(), key);
  if (!is_integer(v->type)) return wrong_type(path(), key, *v, "an integer");
  return int_of(*v, key);
}

Result<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing_key(path(), key);
  if (v->type == VType::kF32 || v->type == VType::kF64) return std::get<double>(v->value);
  if (!is_integer(v->type)) return wrong_type(path(), key, *v, "a number");
  if (const auto* u = std::get_if<uint64_t>(&v->value)) return static_cast<double>(*u);
  return static_cast<double>(std::get<int64_t>(v->value));
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing_key(path(), key);
  if (v->type != VType::kBool) return wrong_type(path(), key, *v, "a bool");
  return std::get<bool>(v->value);
}

Result<std::vector<std::string>> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing_key(path(), key);
  if (v->type != VType::kArray || v->array_type != VType::kString) {
    return wrong_type(path(), key, *v, "an array of strings");
  }
  const auto& items = std::get<std::vector<GgufValue>>(v->value);
  std::vector<std::string> out;
  out.reserve(items.size());
  for (const GgufValue& e : items)
    out.push_back(std::get<std::string>(e.value));
  return out;
}

Result<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing_key(path(), key);
  if (v->type != VType::kArray || !is_integer(v->array_type)) {
    return wrong_type(path(), key, *v, "an array of integers");
  }
  const auto& items = std::get<std::vector<GgufValue>>(v->value);
  std::vector<int64_t> out;
  out.reserve(items.size());
  for (const GgufValue& e : items) {
    CS_ASSIGN_OR_RETURN(int64_t x, int_of(e, key));
    out.push_back(x);
  }
  return out;
}

Result<std::vector<double>> GgufFile::get_float_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return missing_key(path(), key);
  const bool is_float = v->array_type == VType::kF32 || v->array_type == VType::kF64;
  if (v->type != VType::kArray || !(is_float || is_integer(v->array_type))) {
    return wrong_type(path(), key, *v, "an array of numbers");
  }
  const auto& items = std::get<std::vector<GgufValue>>(v->value);
  std::vector<double> out;
  out.reserve(items.size());
  for (const GgufValue& e : items) {
    if (const auto* d = std::get_if<double>(&e.value)) {
      out.push_back(*d);
    } else if (const auto* u = std::get_if<uint64_t>(&e.value)) {
      out.push_back(static_cast<double>(*u));
    } else {
      out.push_back(static_cast<double>(std::get<int64_t>(e.value)));
    }
  }
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> GgufFile::tensor_bytes(const GgufTensorInfo& info) const {
  const uint64_t size = file_.size();
  // Re-checked so that an info from another file can never over-read.
  if (data_offset_ > size || info.offset > size - data_offset_ ||
      info.nbytes > size - data_offset_ - info.offset) {
    return {};
  }
  return {file_.data() + data_offset_ + info.offset, static_cast<size_t>(info.nbytes)};
}

Result<Tensor> GgufFile::load_f32(const GgufTensorInfo& info) const {
  if (!ggml_type_traits(info.type)) {
    return make_error(ErrorCode::kUnsupported,
                      "GGUF '{}': tensor '{}' has type {}, which cannot be dequantized "
                      "(supported: F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)",
                      path(), info.name, ggml_type_name(info.type));
  }
  const Shape shape = info.shape();
  const auto need = ggml_nbytes(info.type, shape_numel(shape));
  const std::span<const uint8_t> bytes = tensor_bytes(info);
  if (!need || *need != info.nbytes || bytes.size() != info.nbytes) {
    return make_error(ErrorCode::kInvalidArgument,
                      "GGUF '{}': tensor info '{}' does not describe data of this file", path(),
                      info.name);
  }
  Tensor out;
  try {
    out = Tensor(DType::kF32, shape);  // [ne[n-1], ..., ne[0]]
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kResourceExhausted,
                      "GGUF '{}': out of memory for tensor '{}' ({} floats)", path(), info.name,
                      shape_numel(shape));
  }
  CS_RETURN_IF_ERROR(dequantize_parallel(info.type, bytes.data(), out.data<float>(),
                                         shape_numel(shape), ThreadPool::global()));
  return out;
}

Result<Tensor> GgufFile::load_f32(std::string_view name) const {
  const GgufTensorInfo* info = find_tensor(name);
  if (!info) {
    return make_error(ErrorCode::kNotFound, "GGUF '{}': tensor '{}' not found", path(), name);
  }
  return load_f32(*info);
}

}  // namespace cartserve
