#include "chat_template/json.h"

#include <algorithm>
#include <cstdio>

#include "chat_template/text.h"

namespace cartserve::jinja {

namespace {

// The short escapes of json.dumps; false for other characters.
bool append_short_escape(std::string& out, char32_t c) {
  switch (c) {
    case '"':
      out += "\\\"";
      return true;
    case '\\':
      out += "\\\\";
      return true;
    case '\n':
      out += "\\n";
      return true;
    case '\r':
      out += "\\r";
      return true;
    case '\t':
      out += "\\t";
      return true;
    case '\b':
      out += "\\b";
      return true;
    case '\f':
      out += "\\f";
      return true;
    default:
      return false;
  }
}

void append_u_escape(std::string& out, unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "\\u%04x", v & 0xFFFFu);
  out += buf;
}

// ensure_ascii=False escapes only '"', '\\' and control characters;
// ensure_ascii=True also writes every non-ASCII code point as \uXXXX (UTF-16).
void append_json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out.push_back('"');
  if (ensure_ascii) {
    for (char32_t cp : decode_utf8(s)) {
      if (append_short_escape(out, cp)) continue;
      if (cp >= 0x20 && cp < 0x7F) {
        out.push_back(static_cast<char>(cp));
      } else if (cp < 0x10000) {
        append_u_escape(out, static_cast<unsigned>(cp));
      } else {
        const char32_t v = cp - 0x10000;
        append_u_escape(out, static_cast<unsigned>(0xD800 + (v >> 10)));
        append_u_escape(out, static_cast<unsigned>(0xDC00 + (v & 0x3FF)));
      }
    }
  } else {
    for (char ch : s) {
      const auto c = static_cast<unsigned char>(ch);
      if (append_short_escape(out, c)) continue;
      if (c < 0x20) {
        append_u_escape(out, c);
      } else {
        out.push_back(ch);
      }
    }
  }
  out.push_back('"');
}

constexpr int kMaxDepth = 500;  // Python raises RecursionError near 1000

class JsonWriter {
 public:
  explicit JsonWriter(const JsonOptions& o)
      : o_(o), item_sep_(o.item_separator ? *o.item_separator : (o.indent ? "," : ", ")) {}

  Status write(const TemplateValue& v, std::string& out, int level) {
    using K = TemplateValue::Kind;
    if (level > kMaxDepth) {
      return Status(ErrorCode::kInvalidArgument, "maximum recursion depth exceeded in tojson");
    }
    switch (v.kind()) {
      case K::kNone:
        out += "null";
        return {};
      case K::kBool:
        out += v.as_bool() ? "true" : "false";
        return {};
      case K::kInt:
        out += std::to_string(v.as_int());
        return {};
      case K::kFloat:
        out += json_float(v.as_double());
        return {};
      case K::kString:
        append_json_string(out, v.as_string(), o_.ensure_ascii);
        return {};
      case K::kList:
      case K::kTuple:
        return write_list(v.items(), out, level);
      case K::kDict:
        return write_dict(v.dict_items(), out, level);
      default:
        return make_error(ErrorCode::kInvalidArgument, "Object of type {} is not JSON serializable",
                          type_name(v));
    }
  }

 private:
  void newline(std::string& out, int level) {
    out.push_back('\n');
    for (int i = 0; i < level; ++i)
      out += *o_.indent;
  }

  Status write_list(const TemplateValue::Items& items, std::string& out, int level) {
    if (items.empty()) {
      out += "[]";
      return {};
    }
    out.push_back('[');
    if (o_.indent) newline(out, level + 1);
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) {
        out += item_sep_;
        if (o_.indent) newline(out, level + 1);
      }
      CS_RETURN_IF_ERROR(write(items[i], out, level + 1));
    }
    if (o_.indent) newline(out, level);
    out.push_back(']');
    return {};
  }

  static Result<std::string> key_string(const TemplateValue& k) {
    using K = TemplateValue::Kind;
    switch (k.kind()) {
      case K::kString:
        return k.as_string();
      case K::kFloat:
        return json_float(k.as_double());
      case K::kBool:
        return std::string(k.as_bool() ? "true" : "false");
      case K::kNone:
        return std::string("null");
      case K::kInt:
        return std::to_string(k.as_int());
      default:
        return make_error(ErrorCode::kInvalidArgument,
                          "keys must be str, int, float, bool or None, not {}", type_name(k));
    }
  }

  Status write_dict(const TemplateValue::DictItems& entries, std::string& out, int level) {
    if (entries.empty()) {
      out += "{}";
      return {};
    }
    std::vector<const std::pair<TemplateValue, TemplateValue>*> order;
    for (const auto& e : entries)
      order.push_back(&e);
    if (o_.sort_keys) {
      Status failed;
      std::stable_sort(order.begin(), order.end(), [&](const auto* a, const auto* b) {
        auto c = py_compare(a->first, b->first);
        if (!c.ok()) {
          if (failed.ok()) failed = c.status();
          return false;
        }
        return *c < 0;
      });
      CS_RETURN_IF_ERROR(failed);
    }
    out.push_back('{');
    if (o_.indent) newline(out, level + 1);
    bool first = true;
    for (const auto* e : order) {
      if (!first) {
        out += item_sep_;
        if (o_.indent) newline(out, level + 1);
      }
      first = false;
      CS_ASSIGN_OR_RETURN(std::string key, key_string(e->first));
      append_json_string(out, key, o_.ensure_ascii);
      out += o_.key_separator;
      CS_RETURN_IF_ERROR(write(e->second, out, level + 1));
    }
    if (o_.indent) newline(out, level);
    out.push_back('}');
    return {};
  }

  const JsonOptions& o_;
  std::string item_sep_;
};

}  // namespace

Result<std::string> to_json(const TemplateValue& v, const JsonOptions& options) {
  std::string out;
  JsonWriter w(options);
  CS_RETURN_IF_ERROR(w.write(v, out, 0));
  return out;
}

}  // namespace cartserve::jinja
