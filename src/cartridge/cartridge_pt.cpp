// .pt cartridges (torch.save): the forms listed in cartridge_io.h, read
// through PtFile (restricted unpickler) and written with save_torch_pt.
#include <algorithm>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <new>

#include "cartridge/cartridge_io.h"
#include "formats/torch_pt.h"
#include "formats/torch_pt_writer.h"

namespace cartserve {

namespace {

using pickle::Kind;
using pickle::Value;

constexpr int kMaxWrapping = 4;  // {"cache": {"cache": ...}} hops

// Reads the cartridge record of one PtFile.
class PtCartridgeReader {
 public:
  explicit PtCartridgeReader(const PtFile& f) : f_(f) {}

  Result<CartridgeData> read(std::string* layout);

 private:
  template <typename... Args>
  Status error(ErrorCode code, fmt::format_string<Args...> fs, Args&&... args) const {
    return Status(code, fmt::format("cartridge '{}': {}", f_.label(),
                                    fmt::format(fs, std::forward<Args>(args)...)));
  }
  // Attribute of a dict or allowlisted object (instance dict, then nn.Module slots).
  const Value* attr(const Value& rec, std::string_view name) const;
  std::string list_keys(const Value& rec) const;
  Result<std::vector<const PtTensor*>> layers(const Value* v, const std::string& name,
                                              std::string* kind) const;
  Result<std::vector<int32_t>> token_ids(const Value& v) const;

  const PtFile& f_;
};

const Value* PtCartridgeReader::attr(const Value& rec, std::string_view name) const {
  if (rec.kind == Kind::kDict) return rec.find(name);
  if (rec.kind != Kind::kObject || !rec.state || rec.state->kind != Kind::kDict) return nullptr;
  if (const Value* v = rec.state->find(name)) return v;
  for (const char* slot : {"_modules", "_parameters", "_buffers"}) {
    const Value* d = rec.state->find(slot);
    if (d && d->kind == Kind::kDict) {
      if (const Value* v = d->find(name)) return v;
    }
  }
  return nullptr;
}

std::string PtCartridgeReader::list_keys(const Value& rec) const {
  const Value* d = rec.kind == Kind::kDict ? &rec : rec.state;
  if (!d || d->kind != Kind::kDict) return "none";
  std::string s;
  size_t n = 0;
  for (const auto& [k, v] : d->entries) {
    if (k->kind != Kind::kStr) continue;
    if (n++ == 12) {
      s += ", ...";
      break;
    }
    if (!s.empty()) s += ", ";
    s += k->text.substr(0, 40);
  }
  return s.empty() ? "none" : s;
}

// A list/tuple of tensors, an nn.ParameterList, or None (no layers).
Result<std::vector<const PtTensor*>> PtCartridgeReader::layers(const Value* v,
                                                               const std::string& name,
                                                               std::string* kind) const {
  std::vector<const PtTensor*> out;
  if (!v || v->kind == Kind::kNone) return out;
  std::vector<const Value*> items;
  if (v->kind == Kind::kList || v->kind == Kind::kTuple) {
    items = v->items;
    *kind = "list";
  } else if (v->is_global("torch.nn.modules.container.ParameterList")) {
    *kind = "ParameterList";
    const Value* params = attr(*v, "_parameters");
    if (!params || params->kind != Kind::kDict) {
      return error(ErrorCode::kCorrupt, "{} is a ParameterList without a _parameters dict", name);
    }
    items.assign(params->entries.size(), nullptr);
    for (const auto& [k, p] : params->entries) {
      // Keys are "0", "1", ... (str of the index); each exactly once.
      size_t idx = 0;
      const bool is_index =
          k->kind == Kind::kStr && !k->text.empty() && k->text.size() < 10 &&
          std::from_chars(k->text.data(), k->text.data() + k->text.size(), idx).ptr ==
              k->text.data() + k->text.size();
      if (!is_index || idx >= items.size() || items[idx]) {
        return error(ErrorCode::kCorrupt, "{} has parameter key {}, expected '0'..'{}'", name,
                     k->describe(), items.size() - 1);
      }
      items[idx] = p;
    }
  } else {
    return error(ErrorCode::kCorrupt, "{} is {}, expected a list of tensors or a ParameterList",
                 name, v->describe());
  }
  for (size_t i = 0; i < items.size(); ++i) {
    const PtTensor* t = f_.tensor(*items[i]);
    if (!t) {
      return error(ErrorCode::kCorrupt, "{}[{}] is {}, expected a tensor", name, i,
                   items[i]->describe());
    }
    out.push_back(t);
  }
  return out;
}

Result<std::vector<int32_t>> PtCartridgeReader::token_ids(const Value& v) const {
  std::vector<int32_t> ids;
  const auto push = [&](int64_t x) -> Status {
    if (x < 0 || x > INT32_MAX) {
      return error(ErrorCode::kCorrupt, "token_ids holds {} (not a token id)", x);
    }
    ids.push_back(static_cast<int32_t>(x));
    return {};
  };
  if (v.kind == Kind::kList || v.kind == Kind::kTuple) {
    for (const Value* x : v.items) {
      if (x->kind != Kind::kInt) {
        return error(ErrorCode::kCorrupt, "token_ids holds {}, expected ints", x->describe());
      }
      CS_RETURN_IF_ERROR(push(x->integer));
    }
    return ids;
  }
  const PtTensor* t = f_.tensor(v);
  if (!t || t->shape.size() != 1 || (t->dtype != DType::kI32 && t->dtype != DType::kI64)) {
    return error(ErrorCode::kCorrupt,
                 "token_ids is {}, expected a 1-D int32/int64 tensor or a "
                 "list of ints",
                 t ? fmt::format("a {} tensor {}", dtype_name(t->dtype), shape_to_string(t->shape))
                   : v.describe());
  }
  CS_ASSIGN_OR_RETURN(Tensor dense, pt_materialize(*t));
  for (int64_t i = 0; i < dense.numel(); ++i) {
    CS_RETURN_IF_ERROR(
        push(t->dtype == DType::kI32 ? dense.data<int32_t>()[i] : dense.data<int64_t>()[i]));
  }
  return ids;
}

struct LayerShape {
  int64_t heads, tokens, dim;
};

Result<CartridgeData> PtCartridgeReader::read(std::string* layout) {
  // Find the record: the root, possibly wrapped in {"cache": ...}.
  const Value* rec = &f_.root();
  std::string where;
  for (int hop = 0;; ++hop) {
    if (rec->kind == Kind::kDict && !rec->find("trainable_keys") && rec->find("cache") &&
        hop < kMaxWrapping) {
      rec = rec->find("cache");
      where += "cache.";
      continue;
    }
    break;
  }
  if (rec->kind != Kind::kDict && rec->kind != Kind::kObject) {
    return error(ErrorCode::kCorrupt,
                 "{}top-level value is {}, expected a dict (trainable_keys, ...), {{\"cache\": "
                 "...}} or a cache object",
                 where, rec->describe());
  }
  const std::string record =
      rec->kind == Kind::kDict ? std::string("dict") : "object " + rec->global->qualified();

  const char* frozen_k = "frozen_keys";
  const char* frozen_v = "frozen_values";
  if (!attr(*rec, frozen_k) && !attr(*rec, frozen_v) &&
      (attr(*rec, "fixed_keys") || attr(*rec, "fixed_values"))) {
    frozen_k = "fixed_keys";
    frozen_v = "fixed_values";
  }
  for (const char* required : {"trainable_keys", "trainable_values"}) {
    if (!attr(*rec, required)) {
      return error(ErrorCode::kCorrupt, "{}{} has no '{}' (keys: {})", where, record, required,
                   list_keys(*rec));
    }
  }
  if (!attr(*rec, frozen_k) != !attr(*rec, frozen_v)) {
    return error(ErrorCode::kCorrupt, "{}{} has '{}' without '{}'", where, record,
                 attr(*rec, frozen_k) ? frozen_k : frozen_v,
                 attr(*rec, frozen_k) ? frozen_v : frozen_k);
  }
  std::string kind_tk, kind_tv, kind_fk, kind_fv;
  CS_ASSIGN_OR_RETURN(auto tk, layers(attr(*rec, "trainable_keys"), "trainable_keys", &kind_tk));
  CS_ASSIGN_OR_RETURN(auto tv,
                      layers(attr(*rec, "trainable_values"), "trainable_values", &kind_tv));
  CS_ASSIGN_OR_RETURN(auto fk, layers(attr(*rec, frozen_k), frozen_k, &kind_fk));
  CS_ASSIGN_OR_RETURN(auto fv, layers(attr(*rec, frozen_v), frozen_v, &kind_fv));

  if (tk.empty()) return error(ErrorCode::kCorrupt, "trainable_keys has no layers");
  const size_t n_layers = tk.size();
  if (tv.size() != n_layers) {
    return error(ErrorCode::kCorrupt, "trainable_keys has {} layers but trainable_values has {}",
                 n_layers, tv.size());
  }
  const bool has_frozen = !fk.empty() || !fv.empty();
  if (has_frozen && (fk.size() != n_layers || fv.size() != n_layers)) {
    return error(ErrorCode::kCorrupt,
                 "{} has {} layers and {} has {}, expected {} (as trainable_keys)", frozen_k,
                 fk.size(), frozen_v, fv.size(), n_layers);
  }
  if (n_layers > 4096) {
    return error(ErrorCode::kUnsupported, "{} layers (at most 4096)", n_layers);
  }

  // Shapes: (1, H, T, D) or (H, T, D); H and D common, T common per group.
  const auto shape_of = [&](const PtTensor& t, const std::string& name,
                            size_t layer) -> Result<LayerShape> {
    const Shape& s = t.shape;
    if (!((s.size() == 4 && s[0] == 1) || s.size() == 3)) {
      return error(ErrorCode::kCorrupt, "{}[{}] has shape {}, expected (1, heads, tokens, dim)",
                   name, layer, shape_to_string(s));
    }
    const size_t o = s.size() - 3;
    return LayerShape{s[o], s[o + 1], s[o + 2]};
  };
  const DType dtype = tk[0]->dtype;
  if (dtype != DType::kBF16 && dtype != DType::kF16 && dtype != DType::kF32) {
    return error(ErrorCode::kUnsupported,
                 "trainable_keys[0] has dtype {} (cartridges are bfloat16, float16 or float32)",
                 dtype_name(dtype));
  }
  CS_ASSIGN_OR_RETURN(const LayerShape first, shape_of(*tk[0], "trainable_keys", 0));
  int64_t frozen_tokens = 0;
  if (has_frozen) {
    CS_ASSIGN_OR_RETURN(const LayerShape fs, shape_of(*fk[0], frozen_k, 0));
    frozen_tokens = fs.tokens;
  }
  struct Group {
    const std::vector<const PtTensor*>* tensors;
    const char* name;
    int64_t tokens;
  };
  const Group groups[] = {{&tk, "trainable_keys", first.tokens},
                          {&tv, "trainable_values", first.tokens},
                          {&fk, frozen_k, frozen_tokens},
                          {&fv, frozen_v, frozen_tokens}};
  for (const auto& g : groups) {
    for (size_t l = 0; l < g.tensors->size(); ++l) {
      const PtTensor& t = *(*g.tensors)[l];
      CS_ASSIGN_OR_RETURN(const LayerShape s, shape_of(t, g.name, l));
      if (s.heads != first.heads || s.dim != first.dim || s.tokens != g.tokens) {
        return error(ErrorCode::kCorrupt,
                     "{}[{}] has shape {}, expected (1, {}, {}, {}) like trainable_keys[0]{}",
                     g.name, l, shape_to_string(t.shape), first.heads, g.tokens, first.dim,
                     g.tokens == frozen_tokens && g.tokens != first.tokens
                         ? fmt::format(" / {}[0]", frozen_k)
                         : "");
      }
      if (t.dtype != dtype) {
        return error(ErrorCode::kCorrupt, "{}[{}] has dtype {}, trainable_keys[0] has {}", g.name,
                     l, dtype_name(t.dtype), dtype_name(dtype));
      }
    }
  }
  const int64_t total = frozen_tokens + first.tokens;
  if (first.heads <= 0 || first.dim <= 0 || total <= 0 || total > INT32_MAX ||
      first.heads > INT32_MAX || first.dim > INT32_MAX) {
    return error(ErrorCode::kCorrupt, "cartridge dimensions heads={} tokens={} head_dim={}",
                 first.heads, total, first.dim);
  }

  CartridgeData out;
  out.num_layers = static_cast<int32_t>(n_layers);
  out.num_kv_heads = static_cast<int32_t>(first.heads);
  out.head_dim = static_cast<int32_t>(first.dim);
  out.num_tokens = static_cast<int32_t>(total);
  out.num_frozen_tokens = static_cast<int32_t>(frozen_tokens);
  out.dtype = dtype;
  const uint64_t layer_bytes =
      static_cast<uint64_t>(first.heads) * total * first.dim * dtype_size(dtype);
  if (layer_bytes > (uint64_t{16} << 30)) {
    return error(ErrorCode::kResourceExhausted, "a layer needs {} bytes", layer_bytes);
  }
  // K = cat(frozen, trainable, dim=2), written straight into [H, T, D] buffers.
  const auto assemble = [&](const PtTensor* frozen, const PtTensor& trainable) {
    Tensor dst(dtype, {first.heads, total, first.dim});  // [H, T, D]
    auto* base = static_cast<uint8_t*>(dst.raw());
    for (const auto& [src, token0] :
         {std::pair{frozen, int64_t{0}}, std::pair{&trainable, frozen_tokens}}) {
      if (!src) continue;
      // Destination strides for the source's rank (a leading batch dim of 1 has any stride).
      std::vector<int64_t> strides = {total * first.dim, first.dim, 1};
      if (src->shape.size() == 4) strides.insert(strides.begin(), 0);
      pt_copy_strided(*src, base + token0 * first.dim * dtype_size(dtype), strides);
    }
    return dst;
  };
  try {
    for (size_t l = 0; l < n_layers; ++l) {
      out.keys.push_back(assemble(has_frozen ? fk[l] : nullptr, *tk[l]));
      out.values.push_back(assemble(has_frozen ? fv[l] : nullptr, *tv[l]));
    }
  } catch (const std::bad_alloc&) {
    return error(ErrorCode::kResourceExhausted, "out of memory for {} layers of {} bytes", n_layers,
                 layer_bytes);
  }
  if (const Value* ids = attr(*rec, "token_ids"); ids && ids->kind != Kind::kNone) {
    CS_ASSIGN_OR_RETURN(out.token_ids, token_ids(*ids));
  }
  CS_RETURN_IF_ERROR(out.validate().with_context(fmt::format("cartridge '{}'", f_.label())));
  if (layout) {
    const std::string prefix = std::string(frozen_k).substr(0, std::string(frozen_k).find('_'));
    *layout = fmt::format("{}{}: trainable_* as {}{}", where, record, kind_tk,
                          has_frozen ? fmt::format(", {}_* as {}", prefix, kind_fk) : "");
  }
  return out;
}

}  // namespace

namespace {

Result<CartridgeData> read_pt(Result<PtFile> opened, CartridgeFileInfo* info) {
  CS_ASSIGN_OR_RETURN(PtFile f, std::move(opened));
  PtCartridgeReader reader(f);
  std::string layout;
  CS_ASSIGN_OR_RETURN(CartridgeData data, reader.read(&layout));
  if (info) {
    info->format = CartridgeFormat::kTorchPt;
    info->layout = layout;
    info->pickle_protocol = f.pickle_protocol();
  }
  return data;
}

PtOpenOptions open_options(const CartridgeLoadOptions& options) {
  PtOpenOptions po;
  po.extra_classes = cartridge_object_classes();
  po.verify_crc = options.verify_crc;
  return po;
}

}  // namespace

Result<CartridgeData> load_cartridge_pt(const std::string& path, CartridgeFileInfo* info,
                                        const CartridgeLoadOptions& options) {
  CS_ASSIGN_OR_RETURN(CartridgeData data, read_pt(PtFile::open(path, open_options(options)), info));
  if (info) {
    std::error_code ec;
    info->file_bytes = std::filesystem::file_size(path, ec);
  }
  return data;
}

Result<CartridgeData> load_cartridge_pt_bytes(std::span<const uint8_t> bytes,
                                              const std::string& label, CartridgeFileInfo* info,
                                              const CartridgeLoadOptions& options) {
  CS_ASSIGN_OR_RETURN(CartridgeData data,
                      read_pt(PtFile::open_bytes(bytes, label, open_options(options)), info));
  if (info) info->file_bytes = bytes.size();
  return data;
}

Status save_cartridge_pt(const std::string& path, const CartridgeData& data,
                         PtCartridgeLayout layout) {
  CS_RETURN_IF_ERROR(data.validate().with_context(fmt::format("saving cartridge '{}'", path)));
  const int64_t h = data.num_kv_heads, t = data.num_tokens, d = data.head_dim;
  const int64_t tf = data.num_frozen_tokens, tt = t - tf;
  const size_t es = dtype_size(data.dtype);
  const bool plist = layout == PtCartridgeLayout::kParameterList;

  // Split each [H, T, D] layer into contiguous (1, H, Tf, D) and (1, H, Tt, D) parts.
  std::vector<Tensor> parts;  // owns the split copies
  parts.reserve(data.keys.size() * 4);
  const auto split = [&](const Tensor& src, int64_t t0, int64_t n) -> TensorView {
    Tensor part(data.dtype, {1, h, n, d});  // [1, H, n, D]
    for (int64_t head = 0; head < h && n > 0; ++head) {
      std::memcpy(
          static_cast<uint8_t*>(part.raw()) + static_cast<size_t>(head * n * d) * es,
          static_cast<const uint8_t*>(src.raw()) + static_cast<size_t>((head * t + t0) * d) * es,
          static_cast<size_t>(n * d) * es);
    }
    parts.push_back(std::move(part));
    return parts.back().view();
  };
  const auto group = [&](const std::vector<Tensor>& layers, int64_t t0, int64_t n, bool trainable) {
    std::vector<PtValue> items;
    if (n > 0 || trainable) {  // (1, H, 0, D) trainable tensors when every token is frozen
      for (const auto& layer : layers) {
        TensorView v = split(layer, t0, n);
        items.push_back(plist ? PtValue::parameter_of(v, trainable) : PtValue::from_tensor(v));
      }
    }
    return plist ? PtValue::parameter_list(std::move(items)) : PtValue::list(std::move(items));
  };
  try {
    std::vector<std::pair<std::string, PtValue>> root;
    root.emplace_back("trainable_keys", group(data.keys, tf, tt, true));
    root.emplace_back("trainable_values", group(data.values, tf, tt, true));
    root.emplace_back("frozen_keys", group(data.keys, 0, tf, false));
    root.emplace_back("frozen_values", group(data.values, 0, tf, false));
    if (!data.token_ids.empty()) {
      TensorView ids{
          DType::kI32, {static_cast<int64_t>(data.token_ids.size())}, data.token_ids.data()};
      root.emplace_back("token_ids", PtValue::from_tensor(ids));
    }
    return save_torch_pt(path, PtValue::dict(std::move(root)));
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kResourceExhausted, "out of memory saving cartridge '{}'", path);
  }
}

}  // namespace cartserve
