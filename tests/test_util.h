// Helpers shared by the gtest suites: fixture paths, temporary folders,
// environment-provided model paths.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

namespace cartserve::testing {

// <repo>/tests/fixtures/<rel>
inline std::string fixture_path(const std::string& rel) {
  return std::string(CARTSERVE_SOURCE_DIR) + "/tests/fixtures/" + rel;
}

// Value of an environment variable set by ctest (tests/CMakeLists.txt), or "".
inline std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// The SmolLM2 GGUF (scripts/fetch_model.sh). Tests that need it fail, not
// skip, when it is missing: `make test` always fetches it.
// The device model tests run on: CARTSERVE_TEST_DEVICE (cpu by default; the
// GPU machine's script sets cuda).
inline std::string test_device() {
  std::string d = env_or_empty("CARTSERVE_TEST_DEVICE");
  return d.empty() ? "cpu" : d;
}

inline std::string test_model_path() {
  std::string p = env_or_empty("CARTSERVE_TEST_MODEL");
  if (p.empty()) {
    p = env_or_empty("HOME") + "/.cache/cartserve/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  }
  return p;
}

// Reference data from scripts/fetch_refs.sh (vocabularies, chat templates).
inline std::string ref_path(const std::string& rel) {
  std::string d = env_or_empty("CARTSERVE_REF_DIR");
  if (d.empty()) d = env_or_empty("HOME") + "/.cache/cartserve/ref";
  return d + "/" + rel;
}

// A fresh temporary folder, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("cartserve-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace cartserve::testing
