// What the tensor-parallel tests run on any backend (CPU: tp_forward_test,
// GPU: tests/gpu/tp_cuda_test): the logits of a prompt and decode steps, and
// the continuation of a sequence from KV loaded into blocks {4, 5, 6}.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include <gtest/gtest.h>

#include "backend_driver.h"
#include "runtime/backend.h"

namespace cartserve::testing {

// Every prefill row of a 37-token prompt (chunks of 7), then 5 decode steps:
// [42, vocab].
inline std::vector<float> tp_run_logits(Backend& b, int vocab) {
  BackendDriver d(b);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 37; ++i)
    prompt.push_back((i * 31 + 5) % vocab);
  auto out = d.append(prompt, /*all_logits=*/true, /*chunk=*/7);
  EXPECT_TRUE(out.ok()) << out.status().to_string();
  std::vector<float> all = out.ok() ? *out : std::vector<float>{};
  for (int i = 0; i < 5; ++i) {
    const int32_t t = (i * 17 + 3) % vocab;
    auto step = d.append(std::span<const int32_t>(&t, 1));
    EXPECT_TRUE(step.ok()) << step.status().to_string();
    if (step.ok()) all.insert(all.end(), step->begin(), step->end());
  }
  return all;
}

// Rows [n, vocab] of `got` against `ref`: where ref's top-2 gap exceeds
// `margin`, both pick the same top-1 token (a failure per row). Returns the
// rows so decided.
inline int expect_decided_top1(const std::vector<float>& ref, const std::vector<float>& got,
                               int vocab, float margin) {
  EXPECT_EQ(ref.size(), got.size());
  int decided = 0;
  const auto V = static_cast<size_t>(vocab);
  for (size_t r = 0; (r + 1) * V <= std::min(ref.size(), got.size()); ++r) {
    const float* c = ref.data() + r * V;
    const float* g = got.data() + r * V;
    std::vector<float> row(c, c + V);
    std::partial_sort(row.begin(), row.begin() + 2, row.end(), std::greater<>());
    if (row[0] - row[1] <= margin) continue;
    ++decided;
    EXPECT_EQ(std::max_element(g, g + V) - g, std::max_element(c, c + V) - c) << "row " << r;
  }
  return decided;
}

inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0.f;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

// `host` (a prompt's KV, host.num_tokens positions) loaded into blocks
// {4, 5, 6}, then the logits of 3 more tokens after it (block 7 for room).
inline std::vector<float> tp_continue_from(Backend& b, const HostKv& host) {
  auto id = b.start_kv_load(host, KvBlockList::whole({4, 5, 6}));
  EXPECT_TRUE(id.ok()) << id.status().to_string();
  if (id.ok()) {
    EXPECT_TRUE(b.wait_transfer(*id).ok());
  }
  StepInput in;
  const std::vector<int32_t> table = {4, 5, 6, 7};
  const std::vector<int32_t> next = {11, 12, 13};
  in.max_blocks = 4;
  in.append_sequence(table, 16, host.num_tokens, next);
  for (int i = 0; i < 3; ++i) {
    SampleRow r;
    r.row = i;
    in.samples.push_back(r);
  }
  std::vector<float> logits;
  EXPECT_TRUE(b.logits(in, logits).ok());
  return logits;
}

}  // namespace cartserve::testing
