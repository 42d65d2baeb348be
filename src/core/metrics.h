// Prometheus-style metrics: counters, gauges and histograms, optionally with
// one label dimension, rendered in the text exposition format (0.0.4).
// Thread-safe; the engine updates, the HTTP layer renders.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace cartserve {

class Counter {
 public:
  void inc(double v = 1.0);
  double value() const;

 private:
  mutable std::mutex mu_;
  double v_ = 0.0;
};

class Gauge {
 public:
  void set(double v);
  void add(double v);
  double value() const;

 private:
  mutable std::mutex mu_;
  double v_ = 0.0;
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);
  // Cumulative counts per bound (+Inf last), sum and count.
  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // [bounds.size() + 1]
    double sum = 0.0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // [bounds_.size() + 1], not cumulative
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

// Owns metrics by name; metrics live as long as the registry.
class MetricsRegistry {
 public:
  Counter& counter(const std::string& name, const std::string& help, const std::string& label = "");
  Gauge& gauge(const std::string& name, const std::string& help, const std::string& label = "");
  Histogram& histogram(const std::string& name, const std::string& help,
                       std::vector<double> bounds);
  // `label` is `key="value"` (already escaped), or "" for none.

  // Runs before every render (e.g. to copy counters kept elsewhere into gauges).
  void add_collector(std::function<void()> fn);

  std::string render() const;

 private:
  mutable std::mutex collectors_mu_;
  std::vector<std::function<void()>> collectors_;
  struct Family {
    std::string type;  // counter | gauge | histogram
    std::string help;
    std::map<std::string, std::unique_ptr<Counter>> counters;  // by label
    std::map<std::string, std::unique_ptr<Gauge>> gauges;
    std::unique_ptr<Histogram> histogram;
  };
  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
};

// Latency buckets in seconds used for TTFT / inter-token / end-to-end.
std::vector<double> latency_buckets_seconds();

}  // namespace cartserve
