// A file written whole or not at all: bytes go to a temporary file beside
// the target (unique per process and call), and commit() flushes it to disk
// and renames it over the target. Dropped without a commit, the temporary
// file is removed and the target is untouched. Movable.
#pragma once

#include <cstddef>
#include <string>

#include "core/status.h"

namespace cartserve {

class AtomicFile {
 public:
  static Result<AtomicFile> create(const std::string& path);
  AtomicFile(AtomicFile&& o) noexcept;
  AtomicFile& operator=(AtomicFile&& o) noexcept;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  // Appends n bytes (an error names the temporary file).
  Status write(const void* data, size_t n);
  // fsync, close, rename over the target. Once only.
  Status commit();

  const std::string& path() const { return path_; }

 private:
  AtomicFile() = default;
  void abandon();  // closes and removes the temporary file

  std::string path_, tmp_;
  int fd_ = -1;
};

}  // namespace cartserve
