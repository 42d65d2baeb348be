// The key-split rule of shared-prefix ("cascade") attention, one definition
// for the host plan (runtime/cascade_plan) and the CUDA kernel.
//
// A shared prefix of P positions is cut into cascade_num_splits(P) splits of
// cascade_split_len(P) positions (the last one shorter): a function of P
// alone, so a sequence's prefix partials do not depend on what it is
// batched with.
#pragma once

#ifdef __CUDACC__
#define CS_CASCADE_HD __host__ __device__
#else
#define CS_CASCADE_HD
#endif

namespace cartserve::ops {

// (query row, query head) rows of one cascade work item: the tensor-core
// tile of the attention kernels. A tile holds kCascadeTileRows / group
// sequences of a group.
inline constexpr int kCascadeTileRows = 64;
// Partial softmaxes per (sequence, head) that a prefix may produce.
inline constexpr int kMaxCascadeSplits = 16;
// Shortest split: a tile's Q load and partial write stay small beside the
// keys it reads. (256 left a lone sequence's 2048-position prefix 8 CTAs per
// KV head of 8 tiles each: 3.19 ms per 3B decode step on an H200 against
// 2.84 without the cascade.)
inline constexpr int kCascadeMinSplitLen = 128;

// Positions of each split: at least kCascadeMinSplitLen, few enough for
// kMaxCascadeSplits splits, a multiple of 64 (whole K/V tiles).
CS_CASCADE_HD inline int cascade_split_len(int prefix) {
  const int per = (prefix + kMaxCascadeSplits - 1) / kMaxCascadeSplits;
  const int len = (per + 63) / 64 * 64;
  return len > kCascadeMinSplitLen ? len : kCascadeMinSplitLen;
}
CS_CASCADE_HD inline int cascade_num_splits(int prefix) {
  if (prefix <= 0) return 0;
  const int len = cascade_split_len(prefix);
  return (prefix + len - 1) / len;
}

}  // namespace cartserve::ops

#undef CS_CASCADE_HD
