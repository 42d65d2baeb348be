#include "formats/torch_pt_writer.h"

#include <algorithm>
#include <filesystem>

#include "core/sha256.h"
#include "formats/pickle_writer.h"
#include "formats/zip_writer.h"

namespace cartserve {

PtValue PtValue::from_bool(bool v) {
  PtValue x;
  x.kind = Kind::kBool;
  x.boolean = v;
  return x;
}
PtValue PtValue::from_int(int64_t v) {
  PtValue x;
  x.kind = Kind::kInt;
  x.integer = v;
  return x;
}
PtValue PtValue::from_float(double v) {
  PtValue x;
  x.kind = Kind::kFloat;
  x.real = v;
  return x;
}
PtValue PtValue::from_str(std::string v) {
  PtValue x;
  x.kind = Kind::kStr;
  x.text = std::move(v);
  return x;
}
PtValue PtValue::list(std::vector<PtValue> items) {
  PtValue x;
  x.kind = Kind::kList;
  x.items = std::move(items);
  return x;
}
PtValue PtValue::tuple(std::vector<PtValue> items) {
  PtValue x;
  x.kind = Kind::kTuple;
  x.items = std::move(items);
  return x;
}
PtValue PtValue::dict(std::vector<std::pair<std::string, PtValue>> entries) {
  PtValue x;
  x.kind = Kind::kDict;
  x.entries = std::move(entries);
  return x;
}
PtValue PtValue::from_tensor(TensorView t, bool requires_grad) {
  PtValue x;
  x.kind = Kind::kTensor;
  x.tensor = std::move(t);
  x.requires_grad = requires_grad;
  return x;
}
PtValue PtValue::parameter_of(TensorView t, bool requires_grad) {
  PtValue x = from_tensor(std::move(t), requires_grad);
  x.parameter = true;
  return x;
}
PtValue PtValue::parameter_list(std::vector<PtValue> params) {
  PtValue x;
  x.kind = Kind::kParameterList;
  x.items = std::move(params);
  return x;
}

namespace {

const char* storage_class(DType t) {
  switch (t) {
    case DType::kF32:
      return "FloatStorage";
    case DType::kF16:
      return "HalfStorage";
    case DType::kBF16:
      return "BFloat16Storage";
    case DType::kF64:
      return "DoubleStorage";
    case DType::kI64:
      return "LongStorage";
    case DType::kI32:
      return "IntStorage";
    case DType::kI16:
      return "ShortStorage";
    case DType::kI8:
      return "CharStorage";
    case DType::kU8:
      return "ByteStorage";
    case DType::kBool:
      return "BoolStorage";
  }
  return "FloatStorage";
}

// Emits values into a PickleWriter and collects storages.
class Emitter {
 public:
  pickle::PickleWriter w;
  std::vector<std::pair<std::string, TensorView>> storages;  // key -> data

  Status emit(const PtValue& v, int depth) {
    if (depth > 64) return make_error(ErrorCode::kInvalidArgument, "value nests deeper than 64");
    using K = PtValue::Kind;
    switch (v.kind) {
      case K::kNone:
        w.none();
        return {};
      case K::kBool:
        w.boolean(v.boolean);
        return {};
      case K::kInt:
        w.integer(v.integer);
        return {};
      case K::kFloat:
        w.real(v.real);
        return {};
      case K::kStr:
        w.str(v.text);
        return {};
      case K::kList:
        w.empty_list();
        w.put();
        if (!v.items.empty()) {
          w.mark();
          for (const auto& x : v.items)
            CS_RETURN_IF_ERROR(emit(x, depth + 1));
          w.appends();
        }
        return {};
      case K::kTuple:
        if (v.items.empty()) {
          w.empty_tuple();
          return {};
        }
        w.mark();
        for (const auto& x : v.items)
          CS_RETURN_IF_ERROR(emit(x, depth + 1));
        w.tuple();
        w.put();
        return {};
      case K::kDict:
        w.empty_dict();
        w.put();
        if (!v.entries.empty()) {
          w.mark();
          for (const auto& [k, x] : v.entries) {
            w.str(k);
            CS_RETURN_IF_ERROR(emit(x, depth + 1));
          }
          w.setitems();
        }
        return {};
      case K::kTensor:
        return v.parameter ? parameter(v) : tensor(v.tensor, v.requires_grad);
      case K::kParameterList:
        return parameter_list(v);
    }
    return make_error(ErrorCode::kInternal, "unknown PtValue kind");
  }

 private:
  void ordered_dict() {
    w.global("collections", "OrderedDict");
    w.empty_tuple();
    w.reduce();
    w.put();
  }

  void int_tuple(const std::vector<int64_t>& xs) {
    if (xs.empty()) {
      w.empty_tuple();
      return;
    }
    w.mark();
    for (int64_t x : xs)
      w.integer(x);
    w.tuple();
    w.put();
  }

  // torch._utils._rebuild_tensor_v2(storage, 0, size, stride, requires_grad, OrderedDict())
  Status tensor(const TensorView& t, bool requires_grad) {
    if (t.nbytes() > 0 && t.data == nullptr) {
      return make_error(ErrorCode::kInvalidArgument, "tensor {} has no data",
                        shape_to_string(t.shape));
    }
    for (int64_t d : t.shape) {
      if (d < 0) {
        return make_error(ErrorCode::kInvalidArgument, "tensor shape {} has a negative size",
                          shape_to_string(t.shape));
      }
    }
    const std::string key = std::to_string(storages.size());
    storages.emplace_back(key, t);
    std::vector<int64_t> strides(t.shape.size());
    int64_t s = 1;
    for (size_t i = t.shape.size(); i-- > 0;) {
      strides[i] = s;
      s *= std::max<int64_t>(t.shape[i], 1);
    }
    w.global("torch._utils", "_rebuild_tensor_v2");
    w.mark();
    w.mark();
    w.str("storage");
    w.global("torch", storage_class(t.dtype));
    w.str(key);
    w.str("cpu");
    w.integer(t.numel());
    w.tuple();
    w.put();
    w.binpersid();
    w.integer(0);
    int_tuple(t.shape);
    int_tuple(strides);
    w.boolean(requires_grad);
    ordered_dict();
    w.tuple();
    w.put();
    w.reduce();
    w.put();
    return {};
  }

  // torch._utils._rebuild_parameter(data, requires_grad, OrderedDict())
  Status parameter(const PtValue& v) {
    w.global("torch._utils", "_rebuild_parameter");
    CS_RETURN_IF_ERROR(tensor(v.tensor, false));
    w.boolean(v.requires_grad);
    ordered_dict();
    w.tuple_n(3);
    w.put();
    w.reduce();
    w.put();
    return {};
  }

  // nn.ParameterList pickled as torch 2.x pickles an nn.Module: NEWOBJ + BUILD(__dict__).
  Status parameter_list(const PtValue& v) {
    w.global("torch.nn.modules.container", "ParameterList");
    w.empty_tuple();
    w.newobj();
    w.put();
    w.empty_dict();
    w.put();
    w.mark();
    w.str("training");
    w.boolean(true);
    w.str("_parameters");
    w.empty_dict();
    w.put();
    if (!v.items.empty()) {
      w.mark();
      for (size_t i = 0; i < v.items.size(); ++i) {
        const PtValue& p = v.items[i];
        if (p.kind != PtValue::Kind::kTensor) {
          return make_error(ErrorCode::kInvalidArgument, "ParameterList item {} is not a tensor",
                            i);
        }
        w.str(std::to_string(i));
        PtValue as_param = p;
        as_param.parameter = true;
        CS_RETURN_IF_ERROR(parameter(as_param));
      }
      w.setitems();
    }
    w.str("_buffers");
    w.empty_dict();
    w.put();
    w.str("_non_persistent_buffers_set");
    w.global("__builtin__", "set");
    w.empty_list();
    w.put();
    w.tuple_n(1);
    w.put();
    w.reduce();
    w.put();
    for (const char* hooks : {"_backward_pre_hooks", "_backward_hooks"}) {
      w.str(hooks);
      ordered_dict();
    }
    w.str("_is_full_backward_hook");
    w.none();
    for (const char* hooks :
         {"_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
          "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
          "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"}) {
      w.str(hooks);
      ordered_dict();
    }
    w.str("_modules");
    w.empty_dict();
    w.put();
    w.str("_size");
    w.integer(static_cast<int64_t>(v.items.size()));
    w.setitems();
    w.build();
    return {};
  }
};

std::string archive_name_for(const std::string& path, const PtSaveOptions& options) {
  std::string name = options.archive_name;
  if (name.empty() && !path.empty()) name = std::filesystem::path(path).stem().string();
  // Keep it a plain record prefix.
  std::string clean;
  for (char c : name) {
    clean +=
        (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.') ? c : '_';
  }
  return clean.empty() ? "archive" : clean;
}

Status write_archive(ZipWriter& zip, const PtValue& root, const std::string& archive) {
  Emitter e;
  CS_RETURN_IF_ERROR(e.emit(root, 0));
  const std::string pkl = e.w.finish();
  const std::string p = archive + "/";
  CS_RETURN_IF_ERROR(zip.add(p + "data.pkl", pkl));
  CS_RETURN_IF_ERROR(zip.add(p + ".format_version", std::string_view("1")));
  CS_RETURN_IF_ERROR(zip.add(p + ".storage_alignment", std::string_view("64")));
  CS_RETURN_IF_ERROR(zip.add(p + "byteorder", std::string_view("little")));
  // torch writes the storages in the order of their keys as strings.
  auto storages = e.storages;
  std::sort(storages.begin(), storages.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  Sha256 id_hash;
  id_hash.update(pkl);
  for (const auto& [key, t] : storages) {
    const std::span<const uint8_t> bytes(static_cast<const uint8_t*>(t.data), t.nbytes());
    CS_RETURN_IF_ERROR(zip.add(p + "data/" + key, bytes));
    if (!bytes.empty()) id_hash.update(bytes.data(), bytes.size());
  }
  CS_RETURN_IF_ERROR(zip.add(p + "version", std::string_view("3\n")));
  // A 40-digit decimal id, as torch writes; derived from the content.
  const auto digest = id_hash.finish();
  std::string id;
  for (size_t i = 0; id.size() < 40; ++i)
    id += static_cast<char>('0' + digest[i % 32] % 10);
  CS_RETURN_IF_ERROR(zip.add(p + ".data/serialization_id", id));
  return zip.finish();
}

}  // namespace

Status save_torch_pt(const std::string& path, const PtValue& root, const PtSaveOptions& options) {
  CS_ASSIGN_OR_RETURN(ZipWriter zip, ZipWriter::create(path));
  return write_archive(zip, root, archive_name_for(path, options))
      .with_context(fmt::format("writing '{}'", path));
}

Result<std::vector<uint8_t>> torch_pt_bytes(const PtValue& root, const PtSaveOptions& options) {
  ZipWriter zip = ZipWriter::to_memory();
  CS_RETURN_IF_ERROR(write_archive(zip, root, archive_name_for("", options)));
  return zip.buffer();
}

}  // namespace cartserve
