// Chained content hashes of full KV blocks, the keys of automatic prefix
// caching.
//
// NOTE: the hash of block j covers every token before it: it is
// XXH3-128(parent || token ids of block j), where parent is the hash of block
// j-1, and for the first block the root: XXH3-128("cartserve-prefix-root" ||
// num_external_tokens || salt). Two blocks share a hash only if the whole
// prefix up to their end is equal, under the same salt and the same number of
// externally provided leading KV positions. The salt is the cartridge's content
// hash (empty without a cartridge), so cached blocks are never shared across
// different cartridges, nor between a cartridge and none.
//
// Byte layout (little-endian): parent as lo (8 bytes) then hi (8 bytes);
// token ids as int32; num_external_tokens as int64. XXH3-128 with seed 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

namespace cartserve {

struct BlockHash {
  uint64_t lo = 0;
  uint64_t hi = 0;
  friend bool operator==(const BlockHash&, const BlockHash&) = default;
};

struct BlockHashHasher {
  size_t operator()(const BlockHash& h) const noexcept { return static_cast<size_t>(h.lo ^ h.hi); }
};

// The parent of a request's first hashed block.
BlockHash prefix_hash_root(std::string_view salt, int64_t num_external_tokens = 0);

// Key of block `block_index` of a cartridge (its KV is fixed by the content
// hash): XXH3-128("cartserve-cartridge-block" || block_size (int32) ||
// block_index (int32) || content_hash). A domain of its own: never equal to a
// prompt block's hash.
BlockHash cartridge_block_hash(std::string_view content_hash, int32_t block_size,
                               int32_t block_index);

// Hash of one block from its parent's hash and its token ids.
BlockHash hash_block(const BlockHash& parent, std::span<const int32_t> token_ids);

// Appends to `hashes` the hashes of the full blocks of `tokens` not hashed yet
// (`hashes` holds the first ones already). The first hashed block holds
// `block_size - leading_offset` tokens (its first `leading_offset` slots are
// positions without token ids, e.g. the tail of a virtual cartridge prefix);
// every later block holds `block_size`. Requires 0 <= leading_offset < block_size.
void append_block_hashes(const BlockHash& root, std::span<const int32_t> tokens,
                         int32_t leading_offset, int32_t block_size,
                         std::vector<BlockHash>& hashes);

}  // namespace cartserve

template <>
struct std::hash<cartserve::BlockHash> {
  size_t operator()(const cartserve::BlockHash& h) const noexcept {
    return cartserve::BlockHashHasher{}(h);
  }
};
