// Where a persistent decode step's time goes (cuda/decode_persistent.cu with
// PersistentDecode::timeline set): per phase kind, the CTAs' work between
// barriers and the barriers' own latency, from the global-timer stamps the
// kernel's CTAs write. Plain C++ (gpu_bench reports it; the CPU tests check
// it on made-up stamps).
//
// Stamps: t[(2 e + r) * ctas + c] in ns, CTA c, event e of 0 .. 5 L: e = 0
// the CTA's start, e = 1 .. 5 L - 1 its arrival (r = 0) at barrier e and its
// release (r = 1) from it, e = 5 L its end (r = 0). Barrier e ends phase
// (e - 1) % 5 of layer (e - 1) / 5: QKV, attention, o, gate/up, down.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace cartserve::ops {

inline constexpr int kPersistentPhases = 5;

inline size_t persistent_timeline_stamps(int num_layers, int ctas) {
  return 2 * (static_cast<size_t>(kPersistentPhases) * num_layers + 1) * ctas;
}

struct PersistentPhaseTimes {
  const char* phase = "";
  double work_max_us = 0;   // the slowest CTA's work, mean over layers
  double work_mean_us = 0;  // a CTA's work, mean over layers and CTAs
  // From the last arrival to a CTA's release, mean over the phase's
  // barriers and the CTAs (the last layer's down phase has none: 0).
  double barrier_us = 0;
};

struct PersistentTimeline {
  double step_us = 0;  // the last CTA's end less the first one's start
  std::array<PersistentPhaseTimes, kPersistentPhases> phases;
};

inline PersistentTimeline summarize_persistent_timeline(const std::vector<uint64_t>& t,
                                                        int num_layers, int ctas) {
  PersistentTimeline out;
  static constexpr const char* kNames[kPersistentPhases] = {"qkv", "attention", "o", "gate_up",
                                                            "down"};
  for (int k = 0; k < kPersistentPhases; ++k)
    out.phases[static_cast<size_t>(k)].phase = kNames[k];
  const int last = kPersistentPhases * num_layers;
  if (num_layers < 1 || ctas < 1 || t.size() < persistent_timeline_stamps(num_layers, ctas)) {
    return out;
  }
  // Stamps are ns since the epoch (~1.8e18): a double holds them only to
  // 256 ns, so they are read relative to the first start.
  uint64_t base = t[0];
  for (int c = 1; c < ctas; ++c)
    base = std::min<uint64_t>(base, t[static_cast<size_t>(c)]);
  auto at = [&](int e, int r, int c) {
    const uint64_t v =
        t[(2 * static_cast<size_t>(e) + static_cast<size_t>(r)) * ctas + static_cast<size_t>(c)];
    return static_cast<double>(static_cast<int64_t>(v - base));
  };
  double first = at(0, 0, 0), end = at(last, 0, 0);
  for (int c = 1; c < ctas; ++c) {
    first = std::min(first, at(0, 0, c));
    end = std::max(end, at(last, 0, c));
  }
  out.step_us = (end - first) / 1e3;
  std::array<int, kPersistentPhases> barriers{};
  for (int e = 1; e <= last; ++e) {
    PersistentPhaseTimes& ph = out.phases[static_cast<size_t>((e - 1) % kPersistentPhases)];
    double most = 0, sum = 0, last_arrival = 0;
    for (int c = 0; c < ctas; ++c) {
      const double from = e == 1 ? at(0, 0, c) : at(e - 1, 1, c);
      const double work = at(e, 0, c) - from;
      most = std::max(most, work);
      sum += work;
      last_arrival = std::max(last_arrival, at(e, 0, c));
    }
    ph.work_max_us += most / 1e3 / num_layers;
    ph.work_mean_us += sum / ctas / 1e3 / num_layers;
    if (e < last) {
      double wait = 0;
      for (int c = 0; c < ctas; ++c)
        wait += at(e, 1, c) - last_arrival;
      ph.barrier_us += wait / ctas / 1e3;
      ++barriers[static_cast<size_t>((e - 1) % kPersistentPhases)];
    }
  }
  for (int k = 0; k < kPersistentPhases; ++k) {
    if (barriers[static_cast<size_t>(k)] > 0)
      out.phases[static_cast<size_t>(k)].barrier_us /= barriers[static_cast<size_t>(k)];
  }
  return out;
}

}  // namespace cartserve::ops
