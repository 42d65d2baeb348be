#include "formats/torch_pt.h"

#include <cctype>
#include <cstring>
#include <new>
#include <unordered_set>

namespace cartserve {

namespace {

using pickle::GlobalRole;
using pickle::Kind;
using pickle::Value;

constexpr size_t kMaxRank = 16;
constexpr int kMaxDepth = 200;

struct StorageType {
  const char* name;
  DType dtype;
};
constexpr StorageType kStorageTypes[] = {
    {"FloatStorage", DType::kF32},  {"HalfStorage", DType::kF16}, {"BFloat16Storage", DType::kBF16},
    {"DoubleStorage", DType::kF64}, {"LongStorage", DType::kI64}, {"IntStorage", DType::kI32},
    {"ShortStorage", DType::kI16},  {"CharStorage", DType::kI8},  {"ByteStorage", DType::kU8},
    {"BoolStorage", DType::kBool},
};
constexpr const char* kDtypeConstants[] = {
    "float32", "float", "float16", "half",  "bfloat16", "float64", "double", "int64",
    "long",    "int32", "int",     "int16", "short",    "int8",    "uint8",  "bool"};

constexpr const char* kRebuildTensorV2 = "torch._utils._rebuild_tensor_v2";
constexpr const char* kRebuildTensor = "torch._utils._rebuild_tensor";
constexpr const char* kRebuildParameter = "torch._utils._rebuild_parameter";
constexpr const char* kRebuildParameterWithState = "torch._utils._rebuild_parameter_with_state";
constexpr const char* kParameter = "torch.nn.parameter.Parameter";
// A tensor with Python attributes: _rebuild_from_type_v2(func, torch.Tensor, args, state).
constexpr const char* kRebuildFromTypeV2 = "torch._tensor._rebuild_from_type_v2";

bool is_tensor_node(const Value& v) {
  return v.kind == Kind::kObject &&
         (v.is_global(kRebuildTensorV2) || v.is_global(kRebuildTensor) ||
          v.is_global(kRebuildParameter) || v.is_global(kRebuildParameterWithState) ||
          v.is_global(kParameter) || v.is_global(kRebuildFromTypeV2));
}

// Storage keys are short decimal-ish names; refuse anything path-like.
bool valid_storage_key(std::string_view k) {
  if (k.empty() || k.size() > 64) return false;
  for (char c : k) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
          c == '-')) {
      return false;
    }
  }
  return true;
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b])))
    ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1])))
    --e;
  return std::string(s.substr(b, e - b));
}

Result<std::vector<int64_t>> int_tuple(const Value& v, const char* what, const std::string& path) {
  if (v.kind != Kind::kTuple && v.kind != Kind::kList) {
    return make_error(ErrorCode::kCorrupt, "tensor at {}: {} is a {}, expected a tuple", path, what,
                      v.describe());
  }
  if (v.items.size() > kMaxRank) {
    return make_error(ErrorCode::kUnsupported, "tensor at {}: rank {} exceeds {}", path,
                      v.items.size(), kMaxRank);
  }
  std::vector<int64_t> out;
  for (const Value* x : v.items) {
    if (x->kind != Kind::kInt || x->integer < 0) {
      return make_error(ErrorCode::kCorrupt, "tensor at {}: {} holds {}, expected ints >= 0", path,
                        what, x->describe());
    }
    out.push_back(x->integer);
  }
  return out;
}

}  // namespace

bool PtTensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

pickle::Allowlist torch_pt_allowlist(const std::vector<std::string>& extra_classes) {
  pickle::Allowlist a;
  a.allow("collections", "OrderedDict", GlobalRole::kDictFactory);
  a.allow("builtins", "set", GlobalRole::kSetFactory);
  a.allow("builtins", "frozenset", GlobalRole::kSetFactory);
  a.allow("torch", "Size", GlobalRole::kTupleFactory);
  a.allow(kRebuildTensorV2, GlobalRole::kFunction);
  a.allow(kRebuildTensor, GlobalRole::kFunction);
  a.allow(kRebuildParameter, GlobalRole::kFunction);
  a.allow(kRebuildParameterWithState, GlobalRole::kFunction);
  a.allow(kParameter, GlobalRole::kFunction);
  a.allow(kRebuildFromTypeV2, GlobalRole::kFunction);
  a.allow("torch", "Tensor", GlobalRole::kReference);
  a.allow("torch.nn.modules.container", "ParameterList", GlobalRole::kClass);
  for (const auto& s : kStorageTypes)
    a.allow("torch", s.name, GlobalRole::kReference);
  for (const char* d : kDtypeConstants)
    a.allow("torch", d, GlobalRole::kReference);
  for (const auto& c : extra_classes)
    a.allow(c, GlobalRole::kClass);
  return a;
}

Result<PtFile> PtFile::open(const std::string& path, const PtOpenOptions& options) {
  PtFile f;
  CS_ASSIGN_OR_RETURN(f.zip_, ZipReader::open(path, options.zip_limits));
  CS_RETURN_IF_ERROR(f.load(options));
  return f;
}

Result<PtFile> PtFile::open_bytes(std::span<const uint8_t> bytes, std::string label,
                                  const PtOpenOptions& options) {
  PtFile f;
  CS_ASSIGN_OR_RETURN(f.zip_, ZipReader::open_bytes(bytes, std::move(label), options.zip_limits));
  CS_RETURN_IF_ERROR(f.load(options));
  return f;
}

const PtTensor* PtFile::tensor(const Value& v) const {
  auto it = tensors_.find(&v);
  return it == tensors_.end() ? nullptr : &it->second;
}

Status PtFile::load(const PtOpenOptions& options) {
  verify_crc_ = options.verify_crc;
  const std::string& label = zip_.label();
  // <archive>/data.pkl, exactly one.
  const ZipEntry* pkl = nullptr;
  for (const auto& e : zip_.entries()) {
    const size_t slash = e.name.find('/');
    if (slash != std::string::npos && slash > 0 && e.name.substr(slash) == "/data.pkl") {
      if (pkl) {
        return make_error(ErrorCode::kCorrupt, "'{}': more than one data.pkl ('{}' and '{}')",
                          label, pkl->name, e.name);
      }
      pkl = &e;
    }
  }
  if (!pkl) {
    return make_error(ErrorCode::kCorrupt,
                      "'{}': zip archive has no <archive>/data.pkl (not a torch.save file)", label);
  }
  archive_name_ = pkl->name.substr(0, pkl->name.find('/'));
  const std::string prefix = archive_name_ + "/";

  if (const ZipEntry* bo = zip_.find(prefix + "byteorder")) {
    CS_ASSIGN_OR_RETURN(auto bytes, zip_.read(*bo));
    const std::string order =
        trim(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    if (order != "little") {
      return make_error(ErrorCode::kUnsupported, "'{}': byte order '{}' (only little-endian)",
                        label, order.substr(0, 16));
    }
  }
  if (const ZipEntry* ve = zip_.find(prefix + "version")) {
    CS_ASSIGN_OR_RETURN(auto bytes, zip_.read(*ve));
    version_ = trim(std::string_view(reinterpret_cast<const char*>(bytes.data()),
                                     std::min<size_t>(bytes.size(), 32)));
  }

  std::span<const uint8_t> pkl_bytes;
  if (pkl->method == 0) {
    CS_ASSIGN_OR_RETURN(pkl_bytes, zip_.stored_span(*pkl));
    CS_RETURN_IF_ERROR(zip_.verify_crc(*pkl));
  } else {
    if (pkl->uncompressed_size > options.pickle_limits.max_bytes) {
      return make_error(ErrorCode::kResourceExhausted, "'{}': data.pkl of {} bytes exceeds {}",
                        label, pkl->uncompressed_size, options.pickle_limits.max_bytes);
    }
    CS_ASSIGN_OR_RETURN(auto bytes, zip_.read(*pkl));
    owned_.push_back(std::move(bytes));
    pkl_bytes = owned_.back();
  }

  const pickle::Allowlist allowlist = torch_pt_allowlist(options.extra_classes);
  pickle::Options po;
  po.allowlist = &allowlist;
  po.limits = options.pickle_limits;
  po.label = label + ": data.pkl";
  po.persistent_load = [&](pickle::Document& doc, const Value& pid) -> Result<const Value*> {
    if (pid.kind != Kind::kTuple || pid.items.size() != 5 || !pid.items[0]->is_str("storage")) {
      return make_error(ErrorCode::kCorrupt,
                        "persistent id {} is not ('storage', type, key, location, numel)",
                        pid.describe());
    }
    const Value& type = *pid.items[1];
    const Value& key = *pid.items[2];
    const Value& numel = *pid.items[4];
    if (type.kind != Kind::kGlobal || type.global->module != "torch") {
      return make_error(ErrorCode::kCorrupt, "storage type is {}, expected a torch storage class",
                        type.describe());
    }
    const StorageType* st = nullptr;
    for (const auto& s : kStorageTypes) {
      if (type.global->name == s.name) st = &s;
    }
    if (!st) {
      return make_error(ErrorCode::kUnsupported, "storage type torch.{} is not supported",
                        type.global->name);
    }
    if (key.kind != Kind::kStr || !valid_storage_key(key.text)) {
      return make_error(ErrorCode::kCorrupt, "storage key {} is not a valid record name",
                        key.describe());
    }
    if (numel.kind != Kind::kInt || numel.integer < 0) {
      return make_error(ErrorCode::kCorrupt, "storage '{}' has element count {}", key.text,
                        numel.describe());
    }
    std::span<const uint8_t> bytes;
    if (auto it = storage_bytes_.find(key.text); it != storage_bytes_.end()) {
      bytes = it->second;
    } else {
      const ZipEntry* e = zip_.find(prefix + "data/" + key.text);
      if (!e) {
        return make_error(ErrorCode::kCorrupt, "storage '{}' has no record {}data/{}", key.text,
                          prefix, key.text);
      }
      if (e->method == 0) {
        CS_ASSIGN_OR_RETURN(bytes, zip_.stored_span(*e));
        if (verify_crc_) CS_RETURN_IF_ERROR(zip_.verify_crc(*e));
      } else {
        CS_ASSIGN_OR_RETURN(auto inflated, zip_.read(*e));
        owned_.push_back(std::move(inflated));
        bytes = owned_.back();
      }
      storage_bytes_.emplace(key.text, bytes);
    }
    const uint64_t es = dtype_size(st->dtype);
    const uint64_t n = static_cast<uint64_t>(numel.integer);
    if (n > UINT64_MAX / es || n * es != bytes.size()) {
      return make_error(ErrorCode::kCorrupt,
                        "storage '{}' declares {} {} elements but its record has {} bytes",
                        key.text, n, dtype_name(st->dtype), bytes.size());
    }
    Value* node = doc.make(Kind::kObject);
    node->global = doc.intern(*type.global);
    Value* args = doc.make(Kind::kTuple);
    args->items = {&key, &numel};
    node->args = args;
    storages_.emplace(node, Storage{st->dtype, key.text, n, bytes});
    return node;
  };
  CS_ASSIGN_OR_RETURN(doc_, pickle::unpickle(pkl_bytes, po));
  std::unordered_set<const Value*> seen;
  // Walk (iteratively over siblings, recursively over depth) and decode every tensor node.
  struct Walker {
    PtFile& f;
    std::unordered_set<const Value*>& seen;
    Status walk(const Value& v, int depth, const std::string& path) {
      if (depth > kMaxDepth) {
        return make_error(ErrorCode::kCorrupt, "'{}': data.pkl nests deeper than {} at {}",
                          f.label(), kMaxDepth, path);
      }
      if (!seen.insert(&v).second) return {};
      if (is_tensor_node(v)) return f.decode_tensors(v, depth, path);
      switch (v.kind) {
        case Kind::kTuple:
        case Kind::kList:
        case Kind::kSet:
          for (size_t i = 0; i < v.items.size(); ++i) {
            CS_RETURN_IF_ERROR(walk(*v.items[i], depth + 1, fmt::format("{}[{}]", path, i)));
          }
          return {};
        case Kind::kDict:
          for (const auto& [k, x] : v.entries) {
            const std::string sub = k->kind == Kind::kStr
                                        ? fmt::format("{}['{}']", path, k->text.substr(0, 64))
                                        : fmt::format("{}[{}]", path, k->describe());
            CS_RETURN_IF_ERROR(walk(*x, depth + 1, sub));
          }
          return {};
        case Kind::kObject:
          if (v.args) CS_RETURN_IF_ERROR(walk(*v.args, depth + 1, path + ".args"));
          if (v.state) CS_RETURN_IF_ERROR(walk(*v.state, depth + 1, path + ".state"));
          return {};
        default:
          return {};
      }
    }
  };
  Walker w{*this, seen};
  try {
    return w.walk(doc_.root(), 0, "root");
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kResourceExhausted, "'{}': out of memory", label);
  }
}

// Decodes the tensor node `v` (and a parameter's inner tensor) into tensors_.
Status PtFile::decode_tensors(const Value& v, int depth, const std::string& path) {
  if (tensors_.count(&v)) return {};
  const auto bad = [&](std::string what) {
    return make_error(ErrorCode::kCorrupt, "'{}': tensor at {}: {}", label(), path, what);
  };
  std::vector<const Value*> args = v.args->items;
  if (v.is_global(kRebuildParameter) || v.is_global(kRebuildParameterWithState) ||
      v.is_global(kParameter)) {
    const size_t want = v.is_global(kRebuildParameter)            ? 3
                        : v.is_global(kRebuildParameterWithState) ? 4
                                                                  : 0;
    if ((want && args.size() != want) || (!want && (args.empty() || args.size() > 2))) {
      return bad(fmt::format("{} takes {} arguments, got {}", v.global->qualified(),
                             want ? std::to_string(want) : "1 or 2", args.size()));
    }
    const Value& data = *args[0];
    if (data.kind != Kind::kObject ||
        !(data.is_global(kRebuildTensorV2) || data.is_global(kRebuildTensor) ||
          data.is_global(kRebuildFromTypeV2))) {
      return bad(fmt::format("parameter data is {}, expected a tensor", data.describe()));
    }
    if (depth > kMaxDepth) return bad("nested too deeply");
    CS_RETURN_IF_ERROR(decode_tensors(data, depth + 1, path));
    PtTensor t = tensors_.at(&data);
    t.is_parameter = true;
    t.requires_grad = true;
    if (args.size() >= 2) {
      if (args[1]->kind != Kind::kBool) return bad("requires_grad is not a bool");
      t.requires_grad = args[1]->boolean;
    }
    tensors_.emplace(&v, std::move(t));
    return {};
  }

  bool v2 = v.is_global(kRebuildTensorV2);
  std::string fn = v.global->qualified();
  if (v.is_global(kRebuildFromTypeV2)) {
    // The state (the tensor's Python attributes) is ignored.
    if (args.size() != 4 ||
        !(args[0]->kind == Kind::kGlobal &&
          (args[0]->is_global(kRebuildTensorV2) || args[0]->is_global(kRebuildTensor))) ||
        !(args[1]->kind == Kind::kGlobal && args[1]->is_global("torch.Tensor")) ||
        args[2]->kind != Kind::kTuple) {
      return bad(fmt::format("{} must rebuild a torch.Tensor with {} or {}", fn, kRebuildTensorV2,
                             kRebuildTensor));
    }
    v2 = args[0]->is_global(kRebuildTensorV2);
    fn = args[0]->global->qualified();
    args = args[2]->items;
  }
  if (v2 ? (args.size() != 6 && args.size() != 7) : args.size() != 4) {
    return bad(fmt::format("{} with {} arguments", fn, args.size()));
  }
  auto st = storages_.find(args[0]);
  if (st == storages_.end()) {
    return bad(
        fmt::format("storage argument is {}, expected a persistent storage", args[0]->describe()));
  }
  const Storage& storage = st->second;
  if (args[1]->kind != Kind::kInt || args[1]->integer < 0) {
    return bad(fmt::format("storage offset is {}", args[1]->describe()));
  }
  PtTensor t;
  t.dtype = storage.dtype;
  t.storage_key = storage.key;
  t.storage = storage.bytes;
  t.storage_offset = args[1]->integer;
  CS_ASSIGN_OR_RETURN(t.shape, int_tuple(*args[2], "size", path));
  CS_ASSIGN_OR_RETURN(t.strides, int_tuple(*args[3], "stride", path));
  if (t.shape.size() != t.strides.size()) {
    return bad(fmt::format("size {} and stride {} differ in rank", shape_to_string(t.shape),
                           shape_to_string(t.strides)));
  }
  if (v2) {
    if (args[4]->kind != Kind::kBool) return bad("requires_grad is not a bool");
    t.requires_grad = args[4]->boolean;
  }
  // Extent: numel and the furthest element addressed, with overflow checks.
  uint64_t numel = 1;
  uint64_t last = static_cast<uint64_t>(t.storage_offset);
  bool empty = false;
  for (size_t i = 0; i < t.shape.size(); ++i) {
    const uint64_t n = static_cast<uint64_t>(t.shape[i]);
    if (n == 0) empty = true;
    uint64_t span = 0;
    if (__builtin_mul_overflow(numel, n, &numel) ||
        (n > 0 && __builtin_mul_overflow(n - 1, static_cast<uint64_t>(t.strides[i]), &span)) ||
        __builtin_add_overflow(last, span, &last) || numel > (uint64_t{1} << 62)) {
      return bad(fmt::format("size {} / stride {} overflow", shape_to_string(t.shape),
                             shape_to_string(t.strides)));
    }
  }
  if (!empty && last >= storage.numel) {
    return bad(fmt::format("offset {} size {} stride {} reaches element {} of a {}-element storage",
                           t.storage_offset, shape_to_string(t.shape), shape_to_string(t.strides),
                           last, storage.numel));
  }
  tensors_.emplace(&v, std::move(t));
  return {};
}

void pt_copy_strided(const PtTensor& t, void* dst, std::span<const int64_t> dst_strides) {
  const size_t es = dtype_size(t.dtype);
  const size_t nd = t.shape.size();
  for (int64_t n : t.shape) {
    if (n == 0) return;
  }
  const uint8_t* src = t.storage.data() + static_cast<size_t>(t.storage_offset) * es;
  auto* out = static_cast<uint8_t*>(dst);
  if (nd == 0) {
    std::memcpy(out, src, es);
    return;
  }
  const int64_t inner = t.shape[nd - 1];
  const int64_t s_in = t.strides[nd - 1], d_in = dst_strides[nd - 1];
  const bool row_copy = s_in == 1 && d_in == 1;
  std::vector<int64_t> idx(nd, 0);
  int64_t s_off = 0, d_off = 0;  // elements, for the current outer index
  for (;;) {
    if (row_copy) {
      std::memcpy(out + d_off * es, src + s_off * es, static_cast<size_t>(inner) * es);
    } else {
      for (int64_t j = 0; j < inner; ++j) {
        std::memcpy(out + (d_off + j * d_in) * es, src + (s_off + j * s_in) * es, es);
      }
    }
    // Odometer over the outer dimensions.
    size_t k = nd - 1;
    for (;;) {
      if (k == 0) return;
      --k;
      ++idx[k];
      s_off += t.strides[k];
      d_off += dst_strides[k];
      if (idx[k] < t.shape[k]) break;
      s_off -= t.strides[k] * idx[k];
      d_off -= dst_strides[k] * idx[k];
      idx[k] = 0;
    }
  }
}

Result<Tensor> pt_materialize(const PtTensor& t, uint64_t max_bytes) {
  const uint64_t bytes = static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype);
  if (bytes > max_bytes) {
    return make_error(ErrorCode::kResourceExhausted,
                      "tensor {} of {} needs {} bytes, more than the {}-byte limit",
                      shape_to_string(t.shape), dtype_name(t.dtype), bytes, max_bytes);
  }
  try {
    Tensor out(t.dtype, t.shape);
    std::vector<int64_t> strides(t.shape.size());
    int64_t s = 1;
    for (size_t i = t.shape.size(); i-- > 0;) {
      strides[i] = s;
      s *= t.shape[i];
    }
    pt_copy_strided(t, out.raw(), strides);
    return out;
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kResourceExhausted, "out of memory materialising tensor {}",
                      shape_to_string(t.shape));
  }
}

}  // namespace cartserve
