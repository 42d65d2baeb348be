#include "tokenizer/normalizer.h"

#include <utf8proc.h>

#include <cstdlib>

namespace cartserve {
namespace {

bool is_ascii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

int options(Normalizer::Form f) {
  switch (f) {
    case Normalizer::Form::kNfc:
      return UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    case Normalizer::Form::kNfd:
      return UTF8PROC_STABLE | UTF8PROC_DECOMPOSE;
    case Normalizer::Form::kNfkc:
      return UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
    case Normalizer::Form::kNfkd:
      return UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
  }
  return UTF8PROC_STABLE;
}

}  // namespace

Normalizer::Normalizer(std::vector<Form> forms) {
  for (Form f : forms)
    steps_.push_back(Step{Kind::kForm, f, {}, {}});
}

std::string Normalizer::apply(std::string_view text) const {
  std::string cur(text);
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Kind::kPrepend:
        if (!cur.empty()) cur.insert(0, step.text);
        break;
      case Kind::kReplace: {
        if (step.text.empty()) break;  // HF: an empty pattern matches nothing
        std::string out;
        size_t pos = 0;
        for (size_t hit; (hit = cur.find(step.text, pos)) != std::string::npos;
             pos = hit + step.text.size()) {
          out.append(cur, pos, hit - pos);
          out += step.content;
        }
        out.append(cur, pos, std::string::npos);
        cur = std::move(out);
        break;
      }
      case Kind::kForm: {
        // Every normalization form leaves ASCII as it is.
        if (is_ascii(cur)) break;
        utf8proc_uint8_t* dst = nullptr;
        // Explicit length (no NULLTERM): text may hold NUL bytes.
        const utf8proc_ssize_t n =
            utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(cur.data()),
                         static_cast<utf8proc_ssize_t>(cur.size()), &dst,
                         static_cast<utf8proc_option_t>(options(step.form)));
        if (n >= 0 && dst != nullptr) cur.assign(reinterpret_cast<const char*>(dst), n);
        // n < 0 only for invalid UTF-8 or out of memory: keep the text as it is.
        std::free(dst);
        break;
      }
    }
  }
  return cur;
}

}  // namespace cartserve
