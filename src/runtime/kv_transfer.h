// KV moving between host memory and a backend's KV blocks: cartridge
// promotion (host -> blocks), export of a prefill's KV (blocks -> host), and
// the partial-block copies the scheduler asks for.
//
// NOTE: host KV is in the cartridge file layout, any float dtype: per layer
// one K and one V tensor [num_kv_heads, num_tokens, head_dim]. The backend
// converts to and from its own dtype and block layout. A transfer moves whole
// blocks of positions: block i of the list receives (or gives) positions
// [index[i] * B, min(num_tokens, (index[i] + 1) * B)), B the block size.
// Transfers are asynchronous: start one, keep its id, poll or wait. The host
// buffers must stay alive and unchanged until the transfer is done, and the
// blocks must not be written by anything else meanwhile.
#pragma once

#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "runtime/kv_spec.h"

namespace cartserve {

struct HostKv {
  DType dtype = DType::kF32;
  int32_t num_tokens = 0;
  std::vector<void*> keys;    // [num_layers] each [num_kv_heads, num_tokens, head_dim]
  std::vector<void*> values;  // [num_layers] each [num_kv_heads, num_tokens, head_dim]
};

// Which blocks a transfer touches: block_ids[i] holds the positions of the
// cartridge's (or sequence's) block block_index[i].
struct KvBlockList {
  std::vector<int32_t> block_ids;
  std::vector<int32_t> block_index;
  // Every block of positions [0, num_blocks * B) in order.
  static KvBlockList whole(std::vector<int32_t> blocks) {
    KvBlockList l;
    l.block_index.resize(blocks.size());
    for (size_t i = 0; i < blocks.size(); ++i)
      l.block_index[i] = static_cast<int32_t>(i);
    l.block_ids = std::move(blocks);
    return l;
  }
};

// Copy the first num_slots slots of src into dst (every layer, K and V): the
// partial last block of a cartridge into a request's own block.
struct BlockCopy {
  int32_t src_block = 0;
  int32_t dst_block = 0;
  int32_t num_slots = 0;
};

using TransferId = uint64_t;

// Checks a transfer against a backend's KV: a layer count that matches, a
// float dtype, block ids inside the cache (never the null block), block
// indices increasing and inside the host KV's tokens.
Status validate_transfer(const HostKv& kv, const KvBlockList& blocks, const KvSpec& spec);

}  // namespace cartserve
