// Randomized corruption of valid GGUF and safetensors files (byte flips,
// random u64 overwrites in the header, truncation): every outcome must be a
// non-ok status or a valid parse whose tensors stay inside the file, never a
// crash. Deterministic seeds; run under ASan/valgrind to catch over-reads.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "formats_test_util.h"

namespace cartserve {
namespace {

// 400 per format in the suite; CARTSERVE_FUZZ_ITERATIONS=N for a longer run.
const int kIterations = [] {
  const std::string v = testing::env_or_empty("CARTSERVE_FUZZ_ITERATIONS");
  return v.empty() ? 400 : std::max(1, std::atoi(v.c_str()));
}();

// A mutated copy of `src`: mostly in the first `hot` bytes (header/metadata),
// where corruption matters.
std::string mutate(const std::string& src, size_t hot, std::mt19937_64& rng) {
  std::string s = src;
  const int kind = static_cast<int>(rng() % 6);
  auto pos_in = [&](size_t n) { return static_cast<size_t>(rng() % std::max<size_t>(n, 1)); };
  auto flip = [&](size_t p) { s[p] ^= static_cast<char>(1 + rng() % 255); };
  if (kind == 0) {  // flip 1..8 bytes, mostly in the header
    const int n = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < n; ++i)
      flip(pos_in(rng() % 4 ? hot : s.size()));
  } else if (kind == 1) {  // overwrite a u64 with a boundary-ish value
    static constexpr uint64_t kVals[] = {
        0, 1, 7, 0xff, 0xffffffffull, 0x7fffffffffffffffull, ~uint64_t{0}, uint64_t{1} << 40};
    const uint64_t v = kVals[rng() % std::size(kVals)] + (rng() % 3);
    const size_t p = pos_in(hot > 8 ? hot - 8 : 1);
    if (p + 8 <= s.size()) std::memcpy(&s[p], &v, 8);
  } else if (kind == 2) {  // truncate
    s.resize(pos_in(s.size()));
  } else if (kind == 3) {  // flip + truncate
    flip(pos_in(hot));
    s.resize(s.size() - pos_in(s.size() / 4 + 1));
  } else if (kind == 4) {  // change 1..3 ASCII digits in the header (JSON numbers, names)
    std::vector<size_t> digits;
    for (size_t i = 0; i < std::min(hot, s.size()); ++i) {
      if (s[i] >= '0' && s[i] <= '9') digits.push_back(i);
    }
    const int n = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < n && !digits.empty(); ++i) {
      s[digits[pos_in(digits.size())]] = static_cast<char>('0' + rng() % 10);
    }
  } else if (hot < s.size()) {  // flip bytes of the data only: must still parse
    for (int i = 0; i < 4; ++i)
      flip(hot + pos_in(s.size() - hot));
  }
  return s;
}

TEST(CorruptionFuzz, Gguf) {
  const std::string valid = testing::slurp(testing::fixture_path("formats/types.gguf"));
  const auto ref = testing::load_json(testing::fixture_path("formats/types.gguf.json"));
  const size_t hot = ref["data_offset"].get<size_t>();
  std::mt19937_64 rng(0xC0FFEE);
  testing::TempDir dir;
  int parsed = 0, loaded = 0;
  for (int it = 0; it < kIterations; ++it) {
    const std::string bytes = mutate(valid, hot, rng);
    const std::string path = dir.file("fuzz.gguf");
    testing::write_bytes(path, bytes);
    auto f = GgufFile::open(path);
    if (!f.ok()) {
      EXPECT_FALSE(f.status().message().empty());
      continue;
    }
    ++parsed;
    for (const std::string& k : f->keys()) {
      ASSERT_NE(f->find(k), nullptr);
      (void)f->get_int(k);
      (void)f->get_float(k);
      (void)f->get_string_array(k);
      (void)f->get_float_array(k);
    }
    for (const GgufTensorInfo& t : f->tensors()) {
      ASSERT_LE(f->data_offset() + t.offset + t.nbytes, bytes.size()) << t.name;
      auto x = f->load_f32(t);
      if (x.ok()) {
        ++loaded;
        EXPECT_EQ(x->numel(), shape_numel(t.shape()));
      } else {
        EXPECT_TRUE(x.status().code() == ErrorCode::kUnsupported ||
                    x.status().code() == ErrorCode::kResourceExhausted)
            << x.status().to_string();
      }
    }
  }
  std::cout << "[   info   ] GGUF: " << parsed << "/" << kIterations << " mutants parsed, "
            << loaded << " tensors loaded\n";
}

TEST(CorruptionFuzz, Safetensors) {
  const std::string valid = testing::slurp(testing::fixture_path("formats/st_types.safetensors"));
  uint64_t header_len = 0;
  std::memcpy(&header_len, valid.data(), 8);
  std::mt19937_64 rng(0xBADF00D);
  testing::TempDir dir;
  int parsed = 0;
  for (int it = 0; it < kIterations; ++it) {
    const std::string bytes = mutate(valid, 8 + header_len, rng);
    const std::string path = dir.file("fuzz.safetensors");
    testing::write_bytes(path, bytes);
    auto f = SafetensorsFile::open(path);
    if (!f.ok()) {
      EXPECT_FALSE(f.status().message().empty());
      continue;
    }
    ++parsed;
    const uint64_t data_start = 8 + [&] {
      uint64_t n = 0;
      std::memcpy(&n, bytes.data(), 8);
      return n;
    }();
    for (const SafetensorsEntry& e : f->entries()) {
      ASSERT_LE(e.begin, e.end);
      ASSERT_LE(data_start + e.end, bytes.size()) << e.name;
      const TensorView v = f->view(e);
      ASSERT_EQ(v.nbytes(), e.end - e.begin);
      // Touch every byte (an over-read would show under ASan/valgrind).
      unsigned sum = 0;
      const auto* p = static_cast<const uint8_t*>(v.data);
      for (size_t i = 0; i < v.nbytes(); ++i)
        sum += p[i];
      (void)sum;
    }
  }
  std::cout << "[   info   ] safetensors: " << parsed << "/" << kIterations << " mutants parsed\n";
}

}  // namespace
}  // namespace cartserve
