// torch .pt reader on files written by real torch.save (fixtures from
// tools/make_cartridge_fixtures.py), crafted archives for every tensor/storage
// validation, and the .pt writer read back by the reader.
#include "formats/torch_pt.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "formats/pickle_writer.h"
#include "formats/torch_pt_writer.h"
#include "formats/zip_writer.h"
#include "test_util.h"
#include "unit/cartridge_formats/fixture_values.h"

namespace cartserve {
namespace {

using cartserve::testing::fixture_path;
using cartserve::testing::fixture_value;
using pickle::Kind;
using pickle::Value;

std::string fx(const std::string& name) {
  return fixture_path("cartridge_formats/" + name);
}

float as_f32(DType t, const void* p, int64_t i) {
  float f = 0;
  convert_to_f32(t, static_cast<const uint8_t*>(p) + i * dtype_size(t), &f, 1);
  return f;
}

// Checks a (1, H, n, D) tensor against the formula for tokens token0..token0+n-1.
void expect_formula(const PtTensor& t, int which, int layer, int token0) {
  auto dense = pt_materialize(t);
  ASSERT_TRUE(dense.ok()) << dense.status().to_string();
  ASSERT_EQ(dense->ndim(), 4u);
  const int64_t h = dense->dim(1), n = dense->dim(2), d = dense->dim(3);
  for (int64_t hh = 0; hh < h; ++hh) {
    for (int64_t tt = 0; tt < n; ++tt) {
      for (int64_t dd = 0; dd < d; ++dd) {
        const int64_t i = (hh * n + tt) * d + dd;
        ASSERT_EQ(as_f32(dense->dtype(), dense->raw(), i),
                  fixture_value(which, layer, static_cast<int>(hh), static_cast<int>(token0 + tt),
                                static_cast<int>(dd)))
            << "which=" << which << " layer=" << layer << " h=" << hh << " t=" << tt;
      }
    }
  }
}

std::vector<const PtTensor*> param_list(const PtFile& f, const Value& pl) {
  std::vector<const PtTensor*> out;
  EXPECT_TRUE(pl.is_global("torch.nn.modules.container.ParameterList"));
  const Value* params = pl.state ? pl.state->find("_parameters") : nullptr;
  if (!params) return out;
  for (const auto& [k, v] : params->entries)
    out.push_back(f.tensor(*v));
  return out;
}

TEST(TorchPt, ReadsParameterListFileAsCartridgesWritesIt) {
  auto f = PtFile::open(fx("params_bf16.pt"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->archive_name(), "params_bf16");
  EXPECT_EQ(f->pickle_protocol(), 2);
  EXPECT_EQ(f->version(), "3");
  EXPECT_EQ(f->tensor_count(), 16u);  // 8 parameters + their 8 data tensors
  const Value& root = f->root();
  ASSERT_EQ(root.kind, Kind::kDict);
  std::vector<std::string> keys;
  for (const auto& [k, v] : root.entries)
    keys.push_back(k->text);
  EXPECT_EQ(keys, (std::vector<std::string>{"trainable_keys", "trainable_values", "frozen_keys",
                                            "frozen_values"}));
  for (const char* name : {"trainable_keys", "trainable_values", "frozen_keys", "frozen_values"}) {
    SCOPED_TRACE(name);
    const bool trainable = name[0] == 't';
    const auto ts = param_list(*f, *root.find(name));
    ASSERT_EQ(ts.size(), 2u);
    for (int l = 0; l < 2; ++l) {
      const PtTensor& t = *ts[l];
      EXPECT_EQ(t.dtype, DType::kBF16);
      EXPECT_TRUE(t.is_parameter);
      EXPECT_EQ(t.requires_grad, trainable);
      const int64_t n = trainable ? 5 : 3;
      EXPECT_EQ(t.shape, (Shape{1, 2, n, 4}));
      EXPECT_EQ(t.strides, (std::vector<int64_t>{2 * n * 4, n * 4, 4, 1}));
      EXPECT_TRUE(t.is_contiguous());
      EXPECT_EQ(t.storage.size(), static_cast<size_t>(2 * n * 4 * 2));
      expect_formula(t, std::string(name).find("values") != std::string::npos, l,
                     trainable ? 3 : 0);
    }
  }
}

TEST(TorchPt, NonContiguousViewsAndSharedStorage) {
  auto f = PtFile::open(fx("noncontig_fp16.pt"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  const Value& root = f->root();
  std::set<std::string> value_storages;
  for (const char* name : {"frozen_keys", "trainable_keys", "frozen_values", "trainable_values"}) {
    const Value* list = root.find(name);
    ASSERT_NE(list, nullptr);
    ASSERT_EQ(list->items.size(), 2u);
    for (int l = 0; l < 2; ++l) {
      const PtTensor* t = f->tensor(*list->items[l]);
      ASSERT_NE(t, nullptr);
      EXPECT_FALSE(t->is_parameter);
      EXPECT_FALSE(t->is_contiguous()) << name << l;
      const bool values = std::string(name).find("values") != std::string::npos;
      if (values) value_storages.insert(t->storage_key);
      if (values && name[0] == 't') {
        EXPECT_GT(t->storage_offset, 0);
      }
      expect_formula(*t, values, l, name[0] == 't' ? 3 : 0);
    }
  }
  EXPECT_EQ(value_storages.size(), 1u);  // every value view shares one storage
}

TEST(TorchPt, Protocols4And5AndDeflate) {
  for (const char* file : {"proto4_params.pt", "proto5_lists.pt", "deflated_params_bf16.pt"}) {
    SCOPED_TRACE(file);
    auto f = PtFile::open(fx(file));
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    const Value* tk = f->root().find("trainable_keys");
    ASSERT_NE(tk, nullptr);
    const PtTensor* t =
        tk->kind == Kind::kList ? f->tensor(*tk->items[1]) : param_list(*f, *tk).at(1);
    ASSERT_NE(t, nullptr);
    expect_formula(*t, 0, 1, 3);
  }
  EXPECT_EQ(PtFile::open(fx("proto4_params.pt"))->pickle_protocol(), 4);
  EXPECT_EQ(PtFile::open(fx("proto5_lists.pt"))->pickle_protocol(), 5);
}

TEST(TorchPt, ObjectFormNeedsItsClassAllowlisted) {
  auto f = PtFile::open(fx("object_trainable_cache.pt"));
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), ErrorCode::kPermissionDenied);
  EXPECT_NE(f.status().message().find("'cartridges.cache.TrainableCache'"), std::string::npos);
  PtOpenOptions o;
  o.extra_classes = {"cartridges.cache.TrainableCache", "cartridges.cache.AttnConfig"};
  f = PtFile::open(fx("object_trainable_cache.pt"), o);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  const Value& root = f->root();
  EXPECT_TRUE(root.is_global("cartridges.cache.TrainableCache"));
  ASSERT_NE(root.state, nullptr);
  EXPECT_TRUE(root.state->find("config")->is_global("cartridges.cache.AttnConfig"));
  EXPECT_EQ(root.state->find("config")->state->find("n_layers")->integer, 2);
  // The _seq_ids buffer is an int64 tensor.
  const PtTensor* seq = f->tensor(*root.state->find("_buffers")->find("_seq_ids"));
  ASSERT_NE(seq, nullptr);
  EXPECT_EQ(seq->dtype, DType::kI64);
  auto dense = pt_materialize(*seq);
  ASSERT_TRUE(dense.ok());
  EXPECT_EQ(dense->data<int64_t>()[7], -1);
}

TEST(TorchPt, MaliciousGlobalsAreRefusedByName) {
  const std::pair<const char*, const char*> cases[] = {
      {"evil_os_system.pt", "'posix.system'"},
      {"evil_builtins_eval.pt", "'builtins.eval'"},
      {"evil_unknown_class.pt", "'payload.Gadget'"},
      {"evil_torch_function.pt", "'torch.random.manual_seed'"},
  };
  for (const auto& [file, name] : cases) {
    auto f = PtFile::open(fx(file));
    ASSERT_FALSE(f.ok()) << file;
    EXPECT_EQ(f.status().code(), ErrorCode::kPermissionDenied) << file;
    EXPECT_NE(f.status().message().find(name), std::string::npos) << f.status().message();
    EXPECT_NE(f.status().message().find("data.pkl: byte "), std::string::npos);
  }
}

// --- crafted archives -----------------------------------------------------------

using Records = std::vector<std::pair<std::string, std::string>>;

std::vector<uint8_t> make_pt(const std::string& pkl, const Records& records,
                             const std::string& archive = "a") {
  ZipWriter w = ZipWriter::to_memory();
  EXPECT_TRUE(w.add(archive + "/data.pkl", std::string_view(pkl)).ok());
  for (const auto& [name, bytes] : records) {
    EXPECT_TRUE(w.add(archive + "/" + name, std::string_view(bytes)).ok());
  }
  EXPECT_TRUE(w.finish().ok());
  return w.buffer();
}

struct TensorSpec {
  std::string storage_type = "FloatStorage";
  std::string key = "0";
  int64_t numel = 6;
  int64_t offset = 0;
  std::vector<int64_t> size = {2, 3};
  std::vector<int64_t> stride = {3, 1};
  int n_args = 6;
};

std::string tensor_pickle(const TensorSpec& s) {
  pickle::PickleWriter w;
  w.global("torch._utils", "_rebuild_tensor_v2");
  w.mark();
  w.mark();
  w.str("storage");
  w.global("torch", s.storage_type);
  w.str(s.key);
  w.str("cpu");
  w.integer(s.numel);
  w.tuple();
  w.binpersid();
  w.integer(s.offset);
  w.mark();
  for (int64_t x : s.size)
    w.integer(x);
  w.tuple();
  w.mark();
  for (int64_t x : s.stride)
    w.integer(x);
  w.tuple();
  if (s.n_args >= 5) w.boolean(false);
  if (s.n_args >= 6) {
    w.global("collections", "OrderedDict");
    w.empty_tuple();
    w.reduce();
  }
  w.tuple();
  w.reduce();
  return w.finish();
}

std::string floats(int n) {
  std::string b(static_cast<size_t>(n) * 4, '\0');
  for (int i = 0; i < n; ++i) {
    const float f = static_cast<float>(i);
    std::memcpy(&b[static_cast<size_t>(i) * 4], &f, 4);
  }
  return b;
}

Result<PtFile> open_crafted(const std::vector<uint8_t>& bytes) {
  return PtFile::open_bytes(bytes, "crafted.pt");
}

void expect_bad(const TensorSpec& s, const Records& records, ErrorCode code, const char* needle) {
  const auto bytes = make_pt(tensor_pickle(s), records);
  auto f = open_crafted(bytes);
  ASSERT_FALSE(f.ok()) << needle;
  EXPECT_EQ(f.status().code(), code) << f.status().to_string();
  EXPECT_NE(f.status().message().find(needle), std::string::npos) << f.status().message();
}

TEST(TorchPtCrafted, ValidTensorAndStridedViews) {
  TensorSpec s;
  auto bytes = make_pt(tensor_pickle(s), {{"data/0", floats(6)}});
  auto f = open_crafted(bytes);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  const PtTensor* t = f->tensor(f->root());
  ASSERT_NE(t, nullptr);
  // Zero-copy: the storage span lies inside the archive bytes.
  EXPECT_GE(t->storage.data(), bytes.data());
  EXPECT_LE(t->storage.data() + 24, bytes.data() + bytes.size());
  EXPECT_EQ(t->storage.size(), 24u);
  // Transposed view: size (3, 2), stride (1, 3) -> [[0,3],[1,4],[2,5]].
  s.size = {3, 2};
  s.stride = {1, 3};
  bytes = make_pt(tensor_pickle(s), {{"data/0", floats(6)}});
  f = open_crafted(bytes);
  ASSERT_TRUE(f.ok());
  auto dense = pt_materialize(*f->tensor(f->root()));
  ASSERT_TRUE(dense.ok());
  const float want[] = {0, 3, 1, 4, 2, 5};
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(dense->data<float>()[i], want[i]);
  // Broadcast (stride 0) with an offset: size (2, 2), stride (0, 1), offset 4 -> [4,5,4,5].
  s.size = {2, 2};
  s.stride = {0, 1};
  s.offset = 4;
  bytes = make_pt(tensor_pickle(s), {{"data/0", floats(6)}});
  f = open_crafted(bytes);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  dense = pt_materialize(*f->tensor(f->root()));
  const float want2[] = {4, 5, 4, 5};
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(dense->data<float>()[i], want2[i]);
  // A 0-d scalar and an empty tensor.
  s = {};
  s.size = {};
  s.stride = {};
  s.offset = 5;
  bytes = make_pt(tensor_pickle(s), {{"data/0", floats(6)}});
  f = open_crafted(bytes);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(pt_materialize(*f->tensor(f->root()))->data<float>()[0], 5.0f);
  s = {};
  s.size = {0, 3};
  s.offset = 100;  // never addressed
  bytes = make_pt(tensor_pickle(s), {{"data/0", floats(6)}});
  f = open_crafted(bytes);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(pt_materialize(*f->tensor(f->root()))->numel(), 0);
  // Materialisation limit.
  s = {};
  bytes = make_pt(tensor_pickle(s), {{"data/0", floats(6)}});
  f = open_crafted(bytes);
  EXPECT_EQ(pt_materialize(*f->tensor(f->root()), 8).status().code(),
            ErrorCode::kResourceExhausted);
}

TEST(TorchPtCrafted, TensorValidation) {
  const Records six = {{"data/0", floats(6)}};
  TensorSpec s;
  s.stride = {3, 2};  // last element 3 + 4 = 7 >= 6
  expect_bad(s, six, ErrorCode::kCorrupt, "reaches element 7 of a 6-element storage");
  s = {};
  s.offset = 1;  // last element 6
  expect_bad(s, six, ErrorCode::kCorrupt, "reaches element 6");
  s = {};
  s.numel = 7;  // record has 24 bytes
  expect_bad(s, six, ErrorCode::kCorrupt,
             "declares 7 float32 elements but its record has 24 bytes");
  s = {};
  s.key = "1";
  expect_bad(s, six, ErrorCode::kCorrupt, "has no record a/data/1");
  s = {};
  s.key = "../0";
  expect_bad(s, six, ErrorCode::kCorrupt, "not a valid record name");
  s = {};
  s.storage_type = "ComplexFloatStorage";
  expect_bad(s, six, ErrorCode::kPermissionDenied, "'torch.ComplexFloatStorage'");
  s = {};
  s.stride = {1};
  expect_bad(s, six, ErrorCode::kCorrupt, "differ in rank");
  s = {};
  s.size = {int64_t{1} << 40, int64_t{1} << 40};
  s.stride = {1, 1};
  expect_bad(s, six, ErrorCode::kCorrupt, "overflow");
  s = {};
  s.size = {2, -3};
  expect_bad(s, six, ErrorCode::kCorrupt, "expected ints >= 0");
  s = {};
  s.n_args = 5;
  expect_bad(s, six, ErrorCode::kCorrupt, "_rebuild_tensor_v2 with 5 arguments");
  s = {};
  s.size = std::vector<int64_t>(17, 1);
  s.stride = std::vector<int64_t>(17, 1);
  expect_bad(s, six, ErrorCode::kUnsupported, "rank 17");
}

TEST(TorchPtCrafted, ArchiveLevelErrors) {
  const std::string pkl = tensor_pickle({});
  const Records six = {{"data/0", floats(6)}};
  auto f = open_crafted(make_pt(pkl, {{"data/0", floats(6)}, {"byteorder", "big"}}));
  EXPECT_EQ(f.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(f.status().message().find("byte order 'big'"), std::string::npos);
  EXPECT_TRUE(open_crafted(make_pt(pkl, {{"data/0", floats(6)}, {"byteorder", "little"}})).ok());
  // No data.pkl / two of them.
  ZipWriter w = ZipWriter::to_memory();
  ASSERT_TRUE(w.add("a/other", std::string_view("x")).ok());
  ASSERT_TRUE(w.finish().ok());
  f = open_crafted(w.buffer());
  EXPECT_EQ(f.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(f.status().message().find("not a torch.save file"), std::string::npos);
  ZipWriter w2 = ZipWriter::to_memory();
  ASSERT_TRUE(w2.add("a/data.pkl", std::string_view(pkl)).ok());
  ASSERT_TRUE(w2.add("b/data.pkl", std::string_view(pkl)).ok());
  ASSERT_TRUE(w2.finish().ok());
  f = open_crafted(w2.buffer());
  EXPECT_NE(f.status().message().find("more than one data.pkl"), std::string::npos);
  // Persistent ids other than storages.
  pickle::PickleWriter pw;
  pw.str("not a storage tuple");
  pw.binpersid();
  f = open_crafted(make_pt(pw.finish(), six));
  EXPECT_EQ(f.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(f.status().message().find("is not ('storage'"), std::string::npos);
  // A parameter around something that is not a tensor.
  pickle::PickleWriter pp;
  pp.global("torch._utils", "_rebuild_parameter");
  pp.integer(3);
  pp.boolean(true);
  pp.global("collections", "OrderedDict");
  pp.empty_tuple();
  pp.reduce();
  pp.tuple_n(3);
  pp.reduce();
  f = open_crafted(make_pt(pp.finish(), six));
  EXPECT_EQ(f.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(f.status().message().find("parameter data is int 3"), std::string::npos);
  // CRC mismatch in a storage (data changed after writing) is caught; can be skipped.
  auto bytes = make_pt(pkl, six);
  const std::string m = floats(6).substr(4, 8);
  const std::vector<uint8_t> marker(m.begin(), m.end());
  const auto pos = std::search(bytes.begin(), bytes.end(), marker.begin(), marker.end());
  ASSERT_NE(pos, bytes.end());
  *pos ^= 1;
  f = open_crafted(bytes);
  EXPECT_EQ(f.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(f.status().message().find("CRC-32"), std::string::npos);
  PtOpenOptions no_crc;
  no_crc.verify_crc = false;
  EXPECT_TRUE(PtFile::open_bytes(bytes, "crafted.pt", no_crc).ok());
}

// --- writer -------------------------------------------------------------------

TEST(TorchPtWriter, RoundTripThroughTheReader) {
  Tensor a = Tensor::from_f32({2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});
  Tensor ids(DType::kI64, {4});
  for (int i = 0; i < 4; ++i)
    ids.data<int64_t>()[i] = (int64_t{1} << 40) + i;
  Tensor p = a.to(DType::kBF16);
  const PtValue root = PtValue::dict({
      {"tensors",
       PtValue::list({PtValue::from_tensor(a.view()), PtValue::from_tensor(ids.view())})},
      {"misc",
       PtValue::tuple({PtValue::from_int(-7), PtValue::from_str("x"), PtValue::from_float(2.5),
                       PtValue::none(), PtValue::from_bool(true)})},
      {"params", PtValue::parameter_list({PtValue::parameter_of(p.view(), true)})},
      {"empty", PtValue::parameter_list({})},
  });
  auto bytes = torch_pt_bytes(root);
  ASSERT_TRUE(bytes.ok()) << bytes.status().to_string();
  EXPECT_EQ(*bytes, *torch_pt_bytes(root));  // deterministic
  auto zip = ZipReader::open_bytes(*bytes, "written");
  ASSERT_TRUE(zip.ok());
  std::vector<std::string> names;
  for (const auto& e : zip->entries()) {
    names.push_back(e.name);
    EXPECT_EQ(e.data_offset % 64, 0u);
  }
  EXPECT_EQ(names, (std::vector<std::string>{"archive/data.pkl", "archive/.format_version",
                                             "archive/.storage_alignment", "archive/byteorder",
                                             "archive/data/0", "archive/data/1", "archive/data/2",
                                             "archive/version", "archive/.data/serialization_id"}));
  auto f = PtFile::open_bytes(*bytes, "written");
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  const Value& r = f->root();
  const Value* tensors = r.find("tensors");
  ASSERT_NE(tensors, nullptr);
  const PtTensor* ta = f->tensor(*tensors->items[0]);
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->shape, (Shape{2, 3}));
  EXPECT_EQ(std::memcmp(ta->storage.data(), a.raw(), 24), 0);
  const PtTensor* tid = f->tensor(*tensors->items[1]);
  EXPECT_EQ(tid->dtype, DType::kI64);
  EXPECT_EQ(pt_materialize(*tid)->data<int64_t>()[3], (int64_t{1} << 40) + 3);
  const Value* misc = r.find("misc");
  EXPECT_EQ(pickle::to_debug_string(*misc), "(-7, 'x', 2.5, None, True)");
  const auto params = param_list(*f, *r.find("params"));
  ASSERT_EQ(params.size(), 1u);
  EXPECT_TRUE(params[0]->is_parameter);
  EXPECT_TRUE(params[0]->requires_grad);
  EXPECT_EQ(params[0]->dtype, DType::kBF16);
  EXPECT_EQ(param_list(*f, *r.find("empty")).size(), 0u);
  EXPECT_EQ(r.find("params")->state->find("_size")->integer, 1);
}

TEST(TorchPtWriter, FileNameGivesTheArchivePrefix) {
  cartserve::testing::TempDir dir;
  Tensor a = Tensor::from_f32({1}, std::vector<float>{1});
  const std::string path = dir.file("my cart.v2.pt");
  ASSERT_TRUE(save_torch_pt(path, PtValue::from_tensor(a.view())).ok());
  auto f = PtFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->archive_name(), "my_cart.v2");
}

}  // namespace
}  // namespace cartserve
