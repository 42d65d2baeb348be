// A fuzz smoke for the normal (gcc) build and `make test`: the same
// LLVMFuzzerTestOneInput as the libFuzzer target, driven without coverage
// feedback: every seed of the corpus, then random mutations of them (bit
// flips, byte edits, truncation, duplication, splices of two seeds) for a
// time budget. Fails on a crash (the process dies) or an input slower than
// the limit. `make fuzz` (libFuzzer, ASan + UBSan) is the real fuzzing.
//
//   NAME_smoke CORPUS_DIR [SECONDS] [SLOW_LIMIT_SECONDS]
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

using Bytes = std::vector<uint8_t>;
using Clock = std::chrono::steady_clock;

Bytes mutate(const std::vector<Bytes>& seeds, std::mt19937_64& rng) {
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % (n ? n : 1)); };
  Bytes b = seeds[pick(seeds.size())];
  const int edits = 1 + static_cast<int>(pick(8));
  for (int e = 0; e < edits; ++e) {
    switch (pick(7)) {
      case 0:  // flip a bit
        if (!b.empty()) b[pick(b.size())] ^= static_cast<uint8_t>(1u << pick(8));
        break;
      case 1:  // an interesting byte
        if (!b.empty()) {
          static constexpr uint8_t kVals[] = {0, 1, 0x7f, 0x80, 0xff, '{', '"', '\\', '%', '\n'};
          b[pick(b.size())] = kVals[pick(std::size(kVals))];
        }
        break;
      case 2:  // insert a random byte
        b.insert(b.begin() + static_cast<ptrdiff_t>(pick(b.size() + 1)),
                 static_cast<uint8_t>(rng()));
        break;
      case 3:  // erase a run
        if (!b.empty()) {
          const size_t at = pick(b.size());
          const size_t n = 1 + pick(std::min<size_t>(64, b.size() - at));
          b.erase(b.begin() + static_cast<ptrdiff_t>(at),
                  b.begin() + static_cast<ptrdiff_t>(at + n));
        }
        break;
      case 4:  // truncate
        b.resize(pick(b.size() + 1));
        break;
      case 5:  // duplicate a run
        if (!b.empty() && b.size() < (1u << 20)) {
          const size_t at = pick(b.size());
          const size_t n = 1 + pick(std::min<size_t>(256, b.size() - at));
          Bytes run(b.begin() + static_cast<ptrdiff_t>(at),
                    b.begin() + static_cast<ptrdiff_t>(at + n));
          b.insert(b.begin() + static_cast<ptrdiff_t>(pick(b.size() + 1)), run.begin(), run.end());
        }
        break;
      default: {  // splice: this seed's head, another's tail
        const Bytes& o = seeds[pick(seeds.size())];
        const size_t h = pick(b.size() + 1), t = pick(o.size() + 1);
        b.resize(h);
        b.insert(b.end(), o.begin() + static_cast<ptrdiff_t>(t), o.end());
        break;
      }
    }
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [SECONDS] [SLOW_LIMIT_SECONDS]\n", argv[0]);
    return 2;
  }
  const double seconds = argc > 2 ? std::atof(argv[2]) : 5.0;
  const double slow_limit = argc > 3 ? std::atof(argv[3]) : 1.0;
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  std::vector<Bytes> seeds;
  for (const auto& e : std::filesystem::directory_iterator(argv[1])) {
    std::ifstream f(e.path(), std::ios::binary);
    seeds.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  if (seeds.empty()) seeds.emplace_back();
  std::mt19937_64 rng(0x5eed);
  double slowest = 0;
  Bytes slowest_input;
  uint64_t runs = 0;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  auto run = [&](const Bytes& b) {
    const auto t0 = Clock::now();
    LLVMFuzzerTestOneInput(b.data(), b.size());
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    ++runs;
    if (dt > slowest) {
      slowest = dt;
      slowest_input = b;
    }
  };
  for (const auto& s : seeds)
    run(s);
  while (Clock::now() < end)
    run(mutate(seeds, rng));
  std::printf("%s: %llu inputs (%zu seeds), slowest %.3f s\n", argv[0],
              static_cast<unsigned long long>(runs), seeds.size(), slowest);
  if (slowest > slow_limit) {
    const std::string path = "slow-input-" + std::to_string(getpid());
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(slowest_input.data()),
               static_cast<std::streamsize>(slowest_input.size()));
    std::fprintf(stderr, "an input took %.3f s (limit %.1f s); saved as %s\n", slowest, slow_limit,
                 path.c_str());
    return 1;
  }
  return 0;
}
