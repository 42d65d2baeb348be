// A hand-made byte-level tokenizer.json for unit tests: the 256 byte
// characters are ids 0..255 (id == byte), extra tokens follow from 256.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "tokenizer/byte_level.h"

namespace cartserve::testing {

inline nlohmann::json tiny_tokenizer_json(const std::vector<std::string>& extra,
                                          const std::vector<std::string>& merges,
                                          const std::string& drop_bytes = "") {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) {
    if (drop_bytes.find(static_cast<char>(b)) != std::string::npos) continue;
    vocab[byte_level::encode(std::string(1, static_cast<char>(b)))] = b;
  }
  for (size_t i = 0; i < extra.size(); ++i)
    vocab[extra[i]] = 256 + i;
  nlohmann::json byte_level_step = {{"type", "ByteLevel"},
                                    {"add_prefix_space", false},
                                    {"trim_offsets", true},
                                    {"use_regex", true}};
  return {{"version", "1.0"},
          {"added_tokens", nlohmann::json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", byte_level_step},
          {"post_processor", nullptr},
          {"decoder", byte_level_step},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", merges}}}};
}

}  // namespace cartserve::testing
