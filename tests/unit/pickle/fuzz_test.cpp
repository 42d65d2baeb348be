// Randomized robustness: mutated pickle streams and mutated .pt archives must
// give a value or an error, never a crash, hang or over-read (run under ASan /
// valgrind to check the latter). Seeds are fixed: failures reproduce.
// CARTSERVE_FUZZ_ITERATIONS=N runs N iterations per loop instead.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <unordered_set>

#include "core/mapped_file.h"
#include "formats/pickle.h"
#include "formats/torch_pt.h"
#include "formats/zip_reader.h"
#include "test_util.h"

namespace cartserve {
namespace {

using cartserve::testing::fixture_path;

// CARTSERVE_FUZZ_ITERATIONS=N overrides the default iteration counts (longer runs).
int iterations_or(int fallback) {
  const std::string v = cartserve::testing::env_or_empty("CARTSERVE_FUZZ_ITERATIONS");
  return v.empty() ? fallback : std::max(1, std::atoi(v.c_str()));
}

std::vector<uint8_t> file_bytes(const std::string& path) {
  auto s = read_file(path);
  EXPECT_TRUE(s.ok()) << path;
  return s.ok() ? std::vector<uint8_t>(s->begin(), s->end()) : std::vector<uint8_t>{};
}

const char* kPtFixtures[] = {
    "params_bf16.pt",  "lists_bf16.pt",           "noncontig_fp16.pt",         "proto4_params.pt",
    "proto5_lists.pt", "deflated_params_bf16.pt", "object_trainable_cache.pt", "token_ids.pt"};

// One random edit: flip bits, overwrite with interesting bytes, insert, delete,
// truncate, or duplicate a slice.
void mutate(std::vector<uint8_t>& b, std::mt19937_64& rng, size_t focus_begin, size_t focus_end) {
  if (b.empty()) {
    b.push_back(static_cast<uint8_t>(rng()));
    return;
  }
  if (focus_end <= focus_begin || focus_end > b.size()) {
    focus_begin = 0;
    focus_end = b.size();
  }
  const size_t pos = focus_begin + rng() % (focus_end - focus_begin);
  static const uint8_t interesting[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, '(',  ')',  '.', 'q',
                                        'h',  'R',  'b',  0x81, 0x93, 0x95, 0x8a, 0x8b, 'X', 'c'};
  switch (rng() % 7) {
    case 0:
      b[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
      break;
    case 1:
      b[pos] = interesting[rng() % sizeof(interesting)];
      break;
    case 2:
      b.insert(b.begin() + static_cast<ptrdiff_t>(pos), static_cast<uint8_t>(rng()));
      break;
    case 3:
      b.erase(b.begin() + static_cast<ptrdiff_t>(pos));
      break;
    case 4:
      b.resize(pos);
      break;
    case 5: {  // 4 random bytes (offsets / sizes / lengths)
      for (size_t i = 0; i < 4 && pos + i < b.size(); ++i)
        b[pos + i] = static_cast<uint8_t>(rng());
      break;
    }
    default: {  // duplicate a short slice
      const size_t len = 1 + rng() % 16;
      const size_t src = rng() % b.size();
      std::vector<uint8_t> slice(b.begin() + static_cast<ptrdiff_t>(src),
                                 b.begin() + static_cast<ptrdiff_t>(std::min(b.size(), src + len)));
      b.insert(b.begin() + static_cast<ptrdiff_t>(pos), slice.begin(), slice.end());
    }
  }
}

// Touches every node once so a malformed tree would trip ASan.
size_t walk(const pickle::Value& root, int) {
  std::unordered_set<const pickle::Value*> seen;
  std::vector<const pickle::Value*> stack = {&root};
  size_t n = 0;
  while (!stack.empty()) {
    const pickle::Value* v = stack.back();
    stack.pop_back();
    if (!seen.insert(v).second) continue;
    n += 1 + v->text.size() % 2;
    for (const auto* x : v->items)
      stack.push_back(x);
    for (const auto& [k, x] : v->entries) {
      stack.push_back(k);
      stack.push_back(x);
    }
    if (v->args) stack.push_back(v->args);
    if (v->state) stack.push_back(v->state);
  }
  return n;
}

TEST(Fuzz, MutatedPickleStreams) {
  // Seeds: data.pkl of every .pt fixture and Python's pickles.
  std::vector<std::vector<uint8_t>> seeds;
  for (const char* f : kPtFixtures) {
    auto zip = ZipReader::open(fixture_path(std::string("cartridge_formats/") + f));
    ASSERT_TRUE(zip.ok()) << f;
    for (const auto& e : zip->entries()) {
      if (e.name.size() > 9 && e.name.substr(e.name.size() - 9) == "/data.pkl") {
        seeds.push_back(*zip->read(e));
      }
    }
  }
  std::ifstream in(fixture_path("pickle/cases.json"));
  for (const auto& c : nlohmann::json::parse(in)) {
    std::vector<uint8_t> b;
    const std::string hex = c["hex"];
    if (hex.size() > 4000) continue;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) {
      b.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    }
    seeds.push_back(std::move(b));
  }
  ASSERT_GT(seeds.size(), 40u);

  const pickle::Allowlist allow =
      torch_pt_allowlist({"cartridges.cache.TrainableCache", "cartridges.cache.AttnConfig"});
  pickle::Options o;
  o.allowlist = &allow;
  o.limits.max_nodes = 200000;
  o.persistent_load = [](pickle::Document& doc,
                         const pickle::Value& pid) -> Result<const pickle::Value*> {
    if (pid.kind != pickle::Kind::kTuple) return make_error(ErrorCode::kCorrupt, "bad pid");
    return doc.make(pickle::Kind::kNone);
  };
  std::mt19937_64 rng(20240611);
  const int iterations = iterations_or(30000);
  int ok = 0, err = 0;
  for (int i = 0; i < iterations; ++i) {
    std::vector<uint8_t> b = seeds[rng() % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits; ++k)
      mutate(b, rng, 0, b.size());
    auto doc = pickle::unpickle(b, o);
    if (doc.ok()) {
      ++ok;
      EXPECT_GT(walk(doc->root(), 0), 0u);
      (void)pickle::to_debug_string(doc->root());
    } else {
      ++err;
      EXPECT_FALSE(doc.status().message().empty());
    }
  }
  // Both outcomes occur (the mutations are neither all fatal nor all harmless).
  EXPECT_GT(ok, iterations / 50);
  EXPECT_GT(err, iterations / 10);
  // Pure random bytes, with and without a PROTO header.
  for (int i = 0; i < 5000; ++i) {
    std::vector<uint8_t> b(rng() % 256);
    for (auto& x : b)
      x = static_cast<uint8_t>(rng());
    if (i % 2) b.insert(b.begin(), {0x80, 0x02});
    auto doc = pickle::unpickle(b, o);
    if (doc.ok()) (void)walk(doc->root(), 0);
  }
}

TEST(Fuzz, MutatedTorchArchives) {
  std::vector<std::vector<uint8_t>> seeds;
  for (const char* f : kPtFixtures) {
    seeds.push_back(file_bytes(fixture_path(std::string("cartridge_formats/") + f)));
  }
  PtOpenOptions opts;
  opts.extra_classes = {"cartridges.cache.TrainableCache", "cartridges.cache.AttnConfig"};
  opts.pickle_limits.max_nodes = 200000;
  std::mt19937_64 rng(77);
  const int iterations = iterations_or(6000);
  int ok = 0;
  size_t tensors = 0;
  for (int i = 0; i < iterations; ++i) {
    std::vector<uint8_t> b = seeds[rng() % seeds.size()];
    // Half the edits hit the pickle (start of the file), the rest anywhere
    // (headers, directory, storages).
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < edits; ++k) {
      if (rng() % 2) {
        mutate(b, rng, 64, std::min<size_t>(b.size(), 1500));
      } else {
        mutate(b, rng, 0, b.size());
      }
    }
    // Sometimes skip the CRC so mutated pickles reach the unpickler.
    opts.verify_crc = rng() % 4 != 0;
    auto f = PtFile::open_bytes(b, "fuzz.pt", opts);
    if (!f.ok()) continue;
    ++ok;
    // Every decoded tensor must be readable (bounds were validated at open).
    std::vector<const pickle::Value*> stack = {&f->root()};
    std::unordered_set<const pickle::Value*> seen;
    while (!stack.empty()) {
      const pickle::Value* v = stack.back();
      stack.pop_back();
      if (!seen.insert(v).second) continue;
      if (const PtTensor* t = f->tensor(*v)) {
        auto dense = pt_materialize(*t, 1 << 20);
        if (dense.ok()) ++tensors;
      }
      for (const auto* x : v->items)
        stack.push_back(x);
      for (const auto& [k, x] : v->entries)
        stack.push_back(x);
      if (v->args) stack.push_back(v->args);
      if (v->state) stack.push_back(v->state);
    }
  }
  // Without the CRC check some mutations keep a loadable file.
  EXPECT_GT(ok, 0);
  EXPECT_GT(tensors, 0u);
}

}  // namespace
}  // namespace cartserve
