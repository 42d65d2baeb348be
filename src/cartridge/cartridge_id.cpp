#include "cartridge/cartridge_id.h"

namespace cartserve {

namespace {

bool unreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

// The id as it can be shown in a message: printable ASCII kept, the rest
// escaped, cut after 64 characters.
std::string shown(std::string_view id) {
  std::string out;
  for (size_t i = 0; i < id.size() && i < 64; ++i) {
    const auto c = static_cast<unsigned char>(id[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (id.size() > 64) out += "...";
  return out;
}

}  // namespace

Status validate_cartridge_id(std::string_view id, std::string_view what) {
  if (id.empty()) return make_error(ErrorCode::kInvalidArgument, "{} is empty", what);
  if (id.size() > kMaxCartridgeIdBytes) {
    return make_error(ErrorCode::kInvalidArgument, "{} '{}' is {} bytes long (at most {})", what,
                      shown(id), id.size(), kMaxCartridgeIdBytes);
  }
  if (id == "." || id == "..") {
    return make_error(ErrorCode::kInvalidArgument, "{} must not be '{}'", what, id);
  }
  for (unsigned char c : id) {
    if (!unreserved(c)) {
      return make_error(ErrorCode::kInvalidArgument,
                        "{} '{}' holds {}: an id is letters, digits and - . _ ~ only", what,
                        shown(id),
                        c >= 0x20 && c < 0x7f ? fmt::format("'{}'", static_cast<char>(c))
                                              : fmt::format("byte 0x{:02x}", c));
    }
  }
  return {};
}

bool is_valid_cartridge_id(std::string_view id) {
  return validate_cartridge_id(id).ok();
}

}  // namespace cartserve
