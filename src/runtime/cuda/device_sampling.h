// What the device sampler (kernels/sampling_ops.h) needs for one row of a
// step, built on the host from the row's parameters and histories.
#pragma once

#include <vector>

#include "kernels/sampling_ops.h"
#include "runtime/step.h"

namespace cartserve::cuda {

// The row's parameters, with its token edits (min_tokens mask, repetition,
// frequency and presence penalties) appended to `edits`.
ops::cuda::SampleRowParams device_sample_row(const SampleRow& row, int32_t vocab,
                                             std::vector<ops::cuda::TokenEdit>& edits);

}  // namespace cartserve::cuda
