#include "kv/prefix_hash.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <bit>
#include <cstring>

namespace cartserve {
namespace {

static_assert(std::endian::native == std::endian::little, "hash layout assumes little-endian");

constexpr std::string_view kRootTag = "cartserve-prefix-root";
constexpr std::string_view kCartridgeTag = "cartserve-cartridge-block";

void put_hash(XXH3_state_t* st, const BlockHash& h) {
  XXH3_128bits_update(st, &h.lo, sizeof(h.lo));
  XXH3_128bits_update(st, &h.hi, sizeof(h.hi));
}

BlockHash digest(XXH3_state_t* st) {
  const XXH128_hash_t d = XXH3_128bits_digest(st);
  return BlockHash{d.low64, d.high64};
}

}  // namespace

BlockHash prefix_hash_root(std::string_view salt, int64_t num_external_tokens) {
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_state_t* st = &state;
  XXH3_128bits_reset(st);
  XXH3_128bits_update(st, kRootTag.data(), kRootTag.size());
  XXH3_128bits_update(st, &num_external_tokens, sizeof(num_external_tokens));
  XXH3_128bits_update(st, salt.data(), salt.size());
  const BlockHash h = digest(st);
  return h;
}

BlockHash cartridge_block_hash(std::string_view content_hash, int32_t block_size,
                               int32_t block_index) {
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_state_t* st = &state;
  XXH3_128bits_reset(st);
  XXH3_128bits_update(st, kCartridgeTag.data(), kCartridgeTag.size());
  XXH3_128bits_update(st, &block_size, sizeof(block_size));
  XXH3_128bits_update(st, &block_index, sizeof(block_index));
  XXH3_128bits_update(st, content_hash.data(), content_hash.size());
  return digest(st);
}

BlockHash hash_block(const BlockHash& parent, std::span<const int32_t> token_ids) {
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_state_t* st = &state;
  XXH3_128bits_reset(st);
  put_hash(st, parent);
  XXH3_128bits_update(st, token_ids.data(), token_ids.size_bytes());
  const BlockHash h = digest(st);
  return h;
}

void append_block_hashes(const BlockHash& root, std::span<const int32_t> tokens,
                         int32_t leading_offset, int32_t block_size,
                         std::vector<BlockHash>& hashes) {
  if (block_size <= 0 || leading_offset < 0 || leading_offset >= block_size) return;
  // Token range of hashed block j: [start(j), start(j) + len(j)).
  const auto start = [&](size_t j) -> size_t {
    return j == 0 ? 0
                  : static_cast<size_t>(block_size - leading_offset) +
                        (j - 1) * static_cast<size_t>(block_size);
  };
  for (size_t j = hashes.size();; ++j) {
    const size_t b = start(j);
    const size_t len = static_cast<size_t>(j == 0 ? block_size - leading_offset : block_size);
    if (b + len > tokens.size()) break;
    const BlockHash& parent = j == 0 ? root : hashes[j - 1];
    hashes.push_back(hash_block(parent, tokens.subspan(b, len)));
  }
}

}  // namespace cartserve
