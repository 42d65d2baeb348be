// Errors as values. Every module edge returns Status or Result<T>; user input
// never crashes the process. Result<T> holds either a T or a non-ok Status.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace cartserve {

enum class ErrorCode {
  kOk = 0,
  kInvalidArgument,     // bad request / bad config value
  kNotFound,            // missing file, tensor, key, id
  kAlreadyExists,       // duplicate id
  kIo,                  // read/write failure
  kCorrupt,             // malformed file contents
  kUnsupported,         // valid but not implemented (architecture, dtype, option)
  kOutOfRange,          // index/size beyond limits (e.g. context length)
  kResourceExhausted,   // cannot fit now (memory budget, KV blocks)
  kFailedPrecondition,  // operation not allowed in current state (pinned, in use)
  kPermissionDenied,    // path outside allowed folders, bad API key
  kCancelled,
  kUnavailable,  // shutting down / temporarily unable to serve
  kInternal,
};

const char* error_code_name(ErrorCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return {}; }

  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "NotFound: message"
  std::string to_string() const;

  // Prepends context: "while loading X: <message>".
  Status with_context(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

template <typename... Args>
Status make_error(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
  return Status(code, fmt::format(f, std::forward<Args>(args)...));
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    assert(!std::get<Status>(v_).ok() && "Result from an ok Status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }

  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }

  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }

  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace cartserve

#define CS_CONCAT_INNER(a, b) a##b
#define CS_CONCAT(a, b) CS_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function if `expr` is not ok.
#define CS_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::cartserve::Status cs_status_ = (expr); \
    if (!cs_status_.ok()) return cs_status_; \
  } while (0)

// `CS_ASSIGN_OR_RETURN(auto x, make_x());` declares x or returns the error.
#define CS_ASSIGN_OR_RETURN(lhs, expr) \
  CS_ASSIGN_OR_RETURN_IMPL(CS_CONCAT(cs_result_, __LINE__), lhs, expr)
#define CS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()
