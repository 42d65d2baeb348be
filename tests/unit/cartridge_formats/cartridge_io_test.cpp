// Cartridge files: every form written by real torch.save
// (tools/make_cartridge_fixtures.py, expectations in expected.json), fault
// cases, the .pt and safetensors writers (incl. byte equality with the
// committed, torch-verified written_by_cartserve* files), casting.
#include "cartridge/cartridge_io.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/mapped_file.h"
#include "formats/safetensors.h"
#include "test_util.h"
#include "unit/cartridge_formats/fixture_values.h"

namespace cartserve {
namespace {

using cartserve::testing::fixture_path;
using cartserve::testing::fixture_value;
using cartserve::testing::TempDir;
using nlohmann::json;

std::string fx(const std::string& name) {
  return fixture_path("cartridge_formats/" + name);
}

json expected() {
  std::ifstream in(fx("expected.json"));
  EXPECT_TRUE(in.good());
  return json::parse(in);
}

float element(const Tensor& t, int64_t i) {
  float f = 0;
  convert_to_f32(t.dtype(), static_cast<const uint8_t*>(t.raw()) + i * dtype_size(t.dtype()), &f,
                 1);
  return f;
}

// keys/values [H, T, D] equal the formula (frozen tokens first).
void expect_formula(const CartridgeData& c) {
  for (int l = 0; l < c.num_layers; ++l) {
    for (int which = 0; which < 2; ++which) {
      const Tensor& t = which ? c.values[l] : c.keys[l];
      ASSERT_EQ(t.shape(), (Shape{c.num_kv_heads, c.num_tokens, c.head_dim}));
      for (int h = 0; h < c.num_kv_heads; ++h) {
        for (int tok = 0; tok < c.num_tokens; ++tok) {
          for (int d = 0; d < c.head_dim; ++d) {
            const int64_t i = (static_cast<int64_t>(h) * c.num_tokens + tok) * c.head_dim + d;
            ASSERT_EQ(element(t, i), fixture_value(which, l, h, tok, d))
                << "which=" << which << " layer=" << l << " head=" << h << " token=" << tok
                << " dim=" << d;
          }
        }
      }
    }
  }
}

// keys/values hold exactly the element bit patterns of expected.json.
void expect_bits(const CartridgeData& c, const json& bits) {
  for (int l = 0; l < c.num_layers; ++l) {
    for (int which = 0; which < 2; ++which) {
      const Tensor& t = which ? c.values[l] : c.keys[l];
      const json& want = bits[which ? "values" : "keys"][l];
      ASSERT_EQ(static_cast<int64_t>(want.size()), t.numel());
      for (int64_t i = 0; i < t.numel(); ++i) {
        uint64_t got = 0;
        std::memcpy(&got, static_cast<const uint8_t*>(t.raw()) + i * dtype_size(t.dtype()),
                    dtype_size(t.dtype()));
        ASSERT_EQ(got, want[i].get<uint64_t>())
            << "which=" << which << " layer=" << l << " i=" << i;
      }
    }
  }
}

ErrorCode code_from_name(const std::string& n) {
  if (n == "Corrupt") return ErrorCode::kCorrupt;
  if (n == "Unsupported") return ErrorCode::kUnsupported;
  if (n == "PermissionDenied") return ErrorCode::kPermissionDenied;
  ADD_FAILURE() << n;
  return ErrorCode::kInternal;
}

TEST(CartridgeFixtures, EveryTorchFileAsExpected) {
  const json exp = expected();
  ASSERT_GE(exp.size(), 30u);
  int ok = 0, errors = 0;
  for (const auto& [name, e] : exp.items()) {
    SCOPED_TRACE(name);
    CartridgeFileInfo info;
    auto c = load_cartridge(fx(name), &info);
    if (!e["ok"].get<bool>()) {
      ASSERT_FALSE(c.ok());
      EXPECT_EQ(c.status().code(), code_from_name(e["code"])) << c.status().to_string();
      EXPECT_NE(c.status().message().find(e["message"].get<std::string>()), std::string::npos)
          << c.status().message();
      EXPECT_NE(c.status().message().find(name), std::string::npos)
          << "the message names the file: " << c.status().message();
      ++errors;
      continue;
    }
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    EXPECT_EQ(c->num_layers, e["num_layers"].get<int>());
    EXPECT_EQ(c->num_kv_heads, e["num_kv_heads"].get<int>());
    EXPECT_EQ(c->head_dim, e["head_dim"].get<int>());
    EXPECT_EQ(c->num_tokens, e["num_tokens"].get<int>());
    EXPECT_EQ(c->num_frozen_tokens, e["num_frozen_tokens"].get<int>());
    EXPECT_EQ(std::string(dtype_name(c->dtype)), e["dtype"].get<std::string>());
    EXPECT_TRUE(c->validate().ok());
    EXPECT_EQ(info.format, CartridgeFormat::kTorchPt);
    EXPECT_EQ(info.pickle_protocol, e["pickle_protocol"].get<int>());
    EXPECT_EQ(info.layout, e["layout"].get<std::string>());
    EXPECT_GT(info.file_bytes, 1000u);
    if (e["values"] == "formula") {
      expect_formula(*c);
    } else {
      expect_bits(*c, e["bits"]);
    }
    if (e.contains("token_ids")) {
      EXPECT_EQ(c->token_ids, e["token_ids"].get<std::vector<int32_t>>());
    } else {
      EXPECT_TRUE(c->token_ids.empty());
    }
    ++ok;
  }
  EXPECT_EQ(ok, 18);
  EXPECT_EQ(errors, 15);
}

TEST(CartridgeFixtures, NanInfAndSignedZeroPassThrough) {
  auto c = load_cartridge(fx("nan_bf16.pt"));
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_TRUE(std::isnan(element(c->keys[0], 0)));
  EXPECT_EQ(element(c->keys[0], 1), INFINITY);
  EXPECT_EQ(element(c->keys[0], 2), -INFINITY);
  EXPECT_TRUE(std::signbit(element(c->keys[0], 3)) && element(c->keys[0], 3) == 0.0f);
  // NaN survives a cast and a write/read cycle in both formats.
  auto f32 = cast_cartridge(*c, DType::kF32);
  ASSERT_TRUE(f32.ok());
  EXPECT_TRUE(std::isnan(f32->keys[0].data<float>()[0]));
  TempDir dir;
  for (const char* file : {"n.pt", "n.safetensors"}) {
    ASSERT_TRUE(save_cartridge(dir.file(file), *c).ok()) << file;
    auto back = load_cartridge(dir.file(file));
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    expect_bits(*back, expected()["nan_bf16.pt"]["bits"]);
  }
}

TEST(CartridgeFixtures, ObjectFormIsReadWithoutRunningAnything) {
  CartridgeFileInfo info;
  auto c = load_cartridge(fx("object_trainable_cache.pt"), &info);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(info.layout,
            "object cartridges.cache.TrainableCache: trainable_* as ParameterList, frozen_* as "
            "ParameterList");
  EXPECT_EQ(c->dtype, DType::kF32);
  expect_formula(*c);
  // Only those two classes are allowlisted.
  EXPECT_EQ(cartridge_object_classes(), (std::vector<std::string>{"cartridges.cache.TrainableCache",
                                                                  "cartridges.cache.AttnConfig"}));
}

TEST(CartridgeFixtures, FileLoaderIsSafeFromSeveralThreads) {
  const CartridgeLoader loader = cartridge_file_loader();
  const char* files[] = {"params_bf16.pt", "noncontig_fp16.pt", "object_trainable_cache.pt",
                         "written_by_cartserve.safetensors"};
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 20; ++k) {
        auto c = loader(fx(files[(i + k) % 4]));
        if (c.ok() && c->num_tokens == 8) ++ok;
      }
    });
  }
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(ok.load(), 160);
  EXPECT_EQ(loader(fx("evil_os_system.pt")).status().code(), ErrorCode::kPermissionDenied);
}

// --- faults ---------------------------------------------------------------------

std::vector<uint8_t> bytes_of(const std::string& path) {
  auto s = read_file(path);
  EXPECT_TRUE(s.ok());
  return std::vector<uint8_t>(s->begin(), s->end());
}

TEST(CartridgeFaults, TruncatedEmptyRandomMissing) {
  const auto good = bytes_of(fx("params_bf16.pt"));
  ASSERT_TRUE(load_cartridge_pt_bytes(good, "mem").ok());
  for (size_t n = 0; n < good.size(); n += (n + 100 > good.size() ? 1 : 7)) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<ptrdiff_t>(n));
    auto c = load_cartridge_pt_bytes(cut, "cut.pt");
    ASSERT_FALSE(c.ok()) << n;
    EXPECT_NE(c.status().message().find("cut.pt"), std::string::npos);
  }
  TempDir dir;
  cartserve::testing::write_bytes(dir.file("trunc.pt"),
                                  std::string(good.begin(), good.begin() + 3000));
  auto c = load_cartridge(dir.file("trunc.pt"));
  EXPECT_EQ(c.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(c.status().message().find("trunc.pt"), std::string::npos);

  cartserve::testing::write_bytes(dir.file("empty.pt"), "");
  c = load_cartridge(dir.file("empty.pt"));
  EXPECT_EQ(c.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(c.status().message().find("is empty"), std::string::npos);

  std::mt19937 rng(3);
  std::string noise(5000, '\0');
  for (auto& ch : noise)
    ch = static_cast<char>(rng());
  cartserve::testing::write_bytes(dir.file("noise.pt"), noise);
  c = load_cartridge(dir.file("noise.pt"));
  EXPECT_EQ(c.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(c.status().message().find("not a zip archive"), std::string::npos);
  cartserve::testing::write_bytes(dir.file("noise.safetensors"), noise);
  EXPECT_FALSE(load_cartridge(dir.file("noise.safetensors")).ok());
  noise[0] = 'P';
  noise[1] = 'K';
  noise[2] = 3;
  noise[3] = 4;
  cartserve::testing::write_bytes(dir.file("pk.pt"), noise);
  EXPECT_EQ(load_cartridge(dir.file("pk.pt")).status().code(), ErrorCode::kCorrupt);

  EXPECT_EQ(load_cartridge(dir.file("missing.pt")).status().code(), ErrorCode::kNotFound);
}

TEST(CartridgeFaults, ZipEntryOutOfBounds) {
  auto b = bytes_of(fx("params_bf16.pt"));
  // Central directory entry of params_bf16/data/0: move its data past the directory.
  const std::string name = "params_bf16/data/0";
  size_t central = 0;
  for (size_t i = 0; i + 46 + name.size() <= b.size(); ++i) {
    if (b[i] == 'P' && b[i + 1] == 'K' && b[i + 2] == 1 && b[i + 3] == 2 &&
        std::memcmp(&b[i + 46], name.data(), name.size()) == 0) {
      central = i;
    }
  }
  ASSERT_GT(central, 0u);
  auto forged = b;
  forged[central + 20] = 0xf0;  // compressed size -> ~4 GB
  forged[central + 23] = 0xf0;
  forged[central + 24] = 0xf0;
  forged[central + 27] = 0xf0;
  auto c = load_cartridge_pt_bytes(forged, "oob.pt");
  EXPECT_EQ(c.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(c.status().message().find("outside the entry region"), std::string::npos)
      << c.status().message();
  forged = b;
  forged[central + 42] = 0xff;  // local header offset
  forged[central + 45] = 0x7f;
  c = load_cartridge_pt_bytes(forged, "oob.pt");
  EXPECT_EQ(c.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(c.status().message().find("no local header"), std::string::npos)
      << c.status().message();
}

TEST(CartridgeFaults, MutatedFilesNeverCrash) {
  std::vector<std::vector<uint8_t>> seeds;
  for (const char* f : {"params_bf16.pt", "lists_bf16.pt", "noncontig_fp16.pt",
                        "object_trainable_cache.pt", "token_ids.pt", "proto5_lists.pt"}) {
    seeds.push_back(bytes_of(fx(f)));
  }
  std::mt19937_64 rng(99);
  CartridgeLoadOptions no_crc;
  no_crc.verify_crc = false;
  int ok = 0;
  for (int i = 0; i < 4000; ++i) {
    auto b = seeds[rng() % seeds.size()];
    for (int k = 0, n = 1 + static_cast<int>(rng() % 3); k < n; ++k) {
      const size_t pos = rng() % b.size();
      switch (rng() % 3) {
        case 0:
          b[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        case 1:
          b[pos] = static_cast<uint8_t>(rng());
          break;
        default:
          b.resize(pos);
          break;
      }
      if (b.empty()) b.push_back(0);
    }
    auto c = load_cartridge_pt_bytes(b, "fuzz.pt", nullptr, no_crc);
    if (c.ok()) {
      ++ok;
      EXPECT_TRUE(c->validate().ok());
    } else {
      EXPECT_FALSE(c.status().message().empty());
    }
  }
  EXPECT_GT(ok, 0);  // mutations of storage bytes keep a valid cartridge
}

// --- writers --------------------------------------------------------------------

CartridgeData synthetic(DType dtype, int frozen, int tokens, bool ids) {
  CartridgeData c;
  c.num_layers = 3;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.num_tokens = tokens;
  c.num_frozen_tokens = frozen;
  c.dtype = dtype;
  std::mt19937 rng(static_cast<unsigned>(frozen * 100 + tokens));
  std::normal_distribution<float> nd;
  for (int l = 0; l < c.num_layers; ++l) {
    for (auto* dst : {&c.keys, &c.values}) {
      std::vector<float> v(static_cast<size_t>(2 * tokens * 8));
      for (auto& x : v)
        x = nd(rng);
      dst->push_back(Tensor::from_f32({2, tokens, 8}, v).to(dtype));
    }
  }
  if (ids) {
    for (int t = 0; t < tokens; ++t)
      c.token_ids.push_back(1000 + t * 3);
  }
  return c;
}

void expect_same(const CartridgeData& a, const CartridgeData& b) {
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.num_tokens, b.num_tokens);
  EXPECT_EQ(a.num_frozen_tokens, b.num_frozen_tokens);
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.token_ids, b.token_ids);
  ASSERT_EQ(a.keys.size(), b.keys.size());
  for (size_t l = 0; l < a.keys.size(); ++l) {
    ASSERT_EQ(a.keys[l].nbytes(), b.keys[l].nbytes());
    EXPECT_EQ(std::memcmp(a.keys[l].raw(), b.keys[l].raw(), a.keys[l].nbytes()), 0) << l;
    EXPECT_EQ(std::memcmp(a.values[l].raw(), b.values[l].raw(), a.values[l].nbytes()), 0) << l;
  }
}

TEST(CartridgeWriters, RoundTripEveryDtypeLayoutAndFormat) {
  TempDir dir;
  int n = 0;
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (auto [frozen, tokens] :
         {std::pair{0, 6}, std::pair{1, 6}, std::pair{4, 9}, std::pair{5, 5}}) {
      for (bool ids : {false, true}) {
        const CartridgeData c = synthetic(dt, frozen, tokens, ids);
        ASSERT_TRUE(c.validate().ok());
        for (auto layout : {PtCartridgeLayout::kParameterList, PtCartridgeLayout::kTensorList}) {
          const std::string path = dir.file(fmt::format("c{}.pt", n++));
          ASSERT_TRUE(save_cartridge_pt(path, c, layout).ok());
          CartridgeFileInfo info;
          auto back = load_cartridge(path, &info);
          ASSERT_TRUE(back.ok()) << back.status().to_string();
          expect_same(c, *back);
          EXPECT_NE(info.layout.find(layout == PtCartridgeLayout::kParameterList ? "ParameterList"
                                                                                 : "list"),
                    std::string::npos);
        }
        const std::string st = dir.file(fmt::format("c{}.safetensors", n++));
        ASSERT_TRUE(save_cartridge_safetensors(st, c).ok());
        CartridgeFileInfo info;
        auto back = load_cartridge(st, &info);
        ASSERT_TRUE(back.ok()) << back.status().to_string();
        EXPECT_EQ(info.format, CartridgeFormat::kSafetensors);
        expect_same(c, *back);
      }
    }
  }
}

TEST(CartridgeWriters, RefuseInvalidData) {
  TempDir dir;
  CartridgeData c = synthetic(DType::kBF16, 1, 4, false);
  c.values.pop_back();
  EXPECT_EQ(save_cartridge_pt(dir.file("x.pt"), c).code(), ErrorCode::kCorrupt);
  EXPECT_EQ(save_cartridge_safetensors(dir.file("x.safetensors"), c).code(), ErrorCode::kCorrupt);
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.pt")));
  EXPECT_EQ(save_cartridge(dir.file("x.npz"), synthetic(DType::kBF16, 1, 4, false)).code(),
            ErrorCode::kInvalidArgument);
}

// The committed written_by_cartserve* files were produced by `cartserve cartridge
// convert` and verified with torch.load / safetensors by
// tools/make_cartridge_fixtures.py --cartserve. The current writer must still
// produce exactly those bytes.
TEST(CartridgeWriters, OutputIsByteIdenticalToTheTorchVerifiedFiles) {
  struct Case {
    const char* written;
    const char* source;
    std::optional<DType> cast;
    PtCartridgeLayout layout;
  };
  const Case cases[] = {
      {"written_by_cartserve.pt", "params_bf16.pt", std::nullopt,
       PtCartridgeLayout::kParameterList},
      {"written_by_cartserve_lists.pt", "params_bf16.pt", std::nullopt,
       PtCartridgeLayout::kTensorList},
      {"written_by_cartserve_fp32.pt", "nan_bf16.pt", DType::kF32,
       PtCartridgeLayout::kParameterList},
      {"written_by_cartserve_ids.pt", "token_ids.pt", std::nullopt,
       PtCartridgeLayout::kParameterList},
      {"written_by_cartserve.safetensors", "params_bf16.pt", std::nullopt,
       PtCartridgeLayout::kParameterList},
  };
  TempDir dir;
  for (const auto& cs : cases) {
    SCOPED_TRACE(cs.written);
    auto c = load_cartridge(fx(cs.source));
    ASSERT_TRUE(c.ok());
    CartridgeData data = std::move(*c);
    if (cs.cast) data = *cast_cartridge(data, *cs.cast);
    const std::string out = dir.file(cs.written);  // same file name: same archive prefix
    const std::string name = cs.written;
    const Status s = name.ends_with(".pt") ? save_cartridge_pt(out, data, cs.layout)
                                           : save_cartridge_safetensors(out, data);
    ASSERT_TRUE(s.ok()) << s.to_string();
    ASSERT_TRUE(std::filesystem::exists(fx(cs.written)))
        << "run: python tools/make_cartridge_fixtures.py --cartserve build/bin/cartserve";
    EXPECT_EQ(bytes_of(out), bytes_of(fx(cs.written)));
    auto back = load_cartridge(fx(cs.written));
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    expect_same(data, *back);
  }
}

TEST(CartridgeWriters, CastKeepsValuesAndRejectsOtherTypes) {
  const CartridgeData c = synthetic(DType::kBF16, 1, 4, true);
  auto f32 = cast_cartridge(c, DType::kF32);
  ASSERT_TRUE(f32.ok());
  EXPECT_EQ(f32->dtype, DType::kF32);
  EXPECT_EQ(f32->keys[0].dtype(), DType::kF32);
  auto back = cast_cartridge(*f32, DType::kBF16);
  ASSERT_TRUE(back.ok());
  expect_same(c, *back);  // bf16 -> f32 -> bf16 is exact
  EXPECT_EQ(cast_cartridge(c, DType::kI32).status().code(), ErrorCode::kUnsupported);
}

// --- safetensors format checks ----------------------------------------------------

TEST(CartridgeSafetensors, ManifestIsCheckedAgainstTheTensors) {
  TempDir dir;
  const CartridgeData c = synthetic(DType::kF16, 2, 6, false);
  std::vector<std::pair<std::string, TensorView>> tensors;
  for (int l = 0; l < c.num_layers; ++l) {
    tensors.emplace_back(fmt::format("keys.{}", l), c.keys[l].view());
    tensors.emplace_back(fmt::format("values.{}", l), c.values[l].view());
  }
  const auto manifest = [](json patch) {
    json m = {{"format_version", 1}, {"num_layers", 3},       {"num_kv_heads", 2},
              {"head_dim", 8},       {"num_tokens", 6},       {"num_frozen_tokens", 2},
              {"dtype", "float16"},  {"has_token_ids", false}};
    if (!patch.is_null()) m.merge_patch(patch);  // `{}` converts to null
    return m.dump();
  };
  const auto check = [&](const std::map<std::string, std::string>& meta,
                         const std::vector<std::pair<std::string, TensorView>>& ts, ErrorCode code,
                         const char* needle) {
    const std::string path = dir.file("m.safetensors");
    ASSERT_TRUE(write_safetensors(path, ts, meta).ok());
    auto r = load_cartridge(path);
    if (code == ErrorCode::kOk) {
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      return;
    }
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.status().code(), code) << r.status().to_string();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  };
  const std::string fmt_key = "format", fmt_val = "cartserve.cartridge";
  check({{fmt_key, fmt_val}, {"cartridge", manifest({})}}, tensors, ErrorCode::kOk, "");
  check({}, tensors, ErrorCode::kCorrupt, "not a cartserve cartridge");
  check({{fmt_key, "other"}, {"cartridge", manifest({})}}, tensors, ErrorCode::kCorrupt,
        "not a cartserve cartridge");
  check({{fmt_key, fmt_val}, {"cartridge", "{not json"}}, tensors, ErrorCode::kCorrupt,
        "not a JSON object");
  check({{fmt_key, fmt_val}, {"cartridge", manifest({{"format_version", 2}})}}, tensors,
        ErrorCode::kUnsupported, "format_version 2");
  check({{fmt_key, fmt_val}, {"cartridge", manifest({{"num_layers", 4}})}}, tensors,
        ErrorCode::kCorrupt, "6 tensors, the manifest announces 8");
  check({{fmt_key, fmt_val}, {"cartridge", manifest({{"num_tokens", 7}})}}, tensors,
        ErrorCode::kCorrupt,
        "tensor 'keys.0' is float16 [2, 6, 8], the manifest says float16 [2, 7, 8]");
  check({{fmt_key, fmt_val}, {"cartridge", manifest({{"dtype", "bfloat16"}})}}, tensors,
        ErrorCode::kCorrupt, "the manifest says bfloat16");
  check({{fmt_key, fmt_val}, {"cartridge", manifest({{"dtype", "int8"}})}}, tensors,
        ErrorCode::kCorrupt, "dtype 'int8'");
  check({{fmt_key, fmt_val}, {"cartridge", manifest({{"num_frozen_tokens", 9}})}}, tensors,
        ErrorCode::kCorrupt, "frozen=9");
  check({{fmt_key, fmt_val}, {"cartridge", manifest({{"head_dim", nullptr}})}}, tensors,
        ErrorCode::kCorrupt, "no integer 'head_dim'");
  auto renamed = tensors;
  renamed[3].first = "values.9";
  check({{fmt_key, fmt_val}, {"cartridge", manifest({})}}, renamed, ErrorCode::kCorrupt,
        "tensor 'values.1' is missing");
  // token ids announced but stored as float.
  auto with_ids = tensors;
  std::vector<float> fake(6, 1.0f);
  with_ids.emplace_back("token_ids", TensorView{DType::kF32, {6}, fake.data()});
  check({{fmt_key, fmt_val}, {"cartridge", manifest({{"has_token_ids", true}})}}, with_ids,
        ErrorCode::kCorrupt, "'token_ids' must be int32 [6]");
}

}  // namespace
}  // namespace cartserve
