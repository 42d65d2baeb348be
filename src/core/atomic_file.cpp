#include "core/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

namespace cartserve {

Result<AtomicFile> AtomicFile::create(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  AtomicFile f;
  f.path_ = path;
  f.tmp_ = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1));
  f.fd_ = ::open(f.tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (f.fd_ < 0) {
    return make_error(ErrorCode::kIo, "cannot create '{}': {}", f.tmp_, std::strerror(errno));
  }
  return f;
}

AtomicFile::AtomicFile(AtomicFile&& o) noexcept
    : path_(std::move(o.path_)), tmp_(std::move(o.tmp_)), fd_(std::exchange(o.fd_, -1)) {}

AtomicFile& AtomicFile::operator=(AtomicFile&& o) noexcept {
  if (this != &o) {
    abandon();
    path_ = std::move(o.path_);
    tmp_ = std::move(o.tmp_);
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}

AtomicFile::~AtomicFile() {
  abandon();
}

void AtomicFile::abandon() {
  if (fd_ < 0) return;
  ::close(fd_);
  ::unlink(tmp_.c_str());
  fd_ = -1;
}

Status AtomicFile::write(const void* data, size_t n) {
  if (fd_ < 0) return make_error(ErrorCode::kIo, "write to '{}' after it was closed", tmp_);
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return make_error(ErrorCode::kIo, "write to '{}' failed: {}", tmp_, std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return {};
}

Status AtomicFile::commit() {
  if (fd_ < 0) return make_error(ErrorCode::kIo, "'{}' was already closed", tmp_);
  if (::fsync(fd_) != 0) {
    const int err = errno;
    abandon();
    return make_error(ErrorCode::kIo, "cannot flush '{}': {}", tmp_, std::strerror(err));
  }
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    return make_error(ErrorCode::kIo, "cannot close '{}': {}", tmp_, std::strerror(err));
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    return make_error(ErrorCode::kIo, "cannot rename '{}' to '{}': {}", tmp_, path_,
                      std::strerror(err));
  }
  return {};
}

}  // namespace cartserve
