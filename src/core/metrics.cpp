#include "core/metrics.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include <fmt/format.h>

namespace cartserve {

void Counter::inc(double v) {
  std::lock_guard<std::mutex> lk(mu_);
  v_ += v;
}
double Counter::value() const {
  std::lock_guard<std::mutex> lk(mu_);
  return v_;
}

void Gauge::set(double v) {
  std::lock_guard<std::mutex> lk(mu_);
  v_ = v;
}
void Gauge::add(double v) {
  std::lock_guard<std::mutex> lk(mu_);
  v_ += v;
}
double Gauge::value() const {
  std::lock_guard<std::mutex> lk(mu_);
  return v_;
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {
  std::sort(bounds_.begin(), bounds_.end());
}

void Histogram::observe(double v) {
  std::lock_guard<std::mutex> lk(mu_);
  const size_t i =
      static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  ++counts_[i];
  sum_ += v;
  ++count_;
}

Histogram::Snapshot Histogram::snapshot() const {
  std::lock_guard<std::mutex> lk(mu_);
  Snapshot s;
  s.bounds = bounds_;
  s.cumulative.resize(counts_.size());
  uint64_t run = 0;
  for (size_t i = 0; i < counts_.size(); ++i)
    s.cumulative[i] = (run += counts_[i]);
  s.sum = sum_;
  s.count = count_;
  return s;
}

Counter& MetricsRegistry::counter(const std::string& name, const std::string& help,
                                  const std::string& label) {
  std::lock_guard<std::mutex> lk(mu_);
  Family& f = families_[name];
  f.type = "counter";
  f.help = help;
  auto& slot = f.counters[label];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help,
                              const std::string& label) {
  std::lock_guard<std::mutex> lk(mu_);
  Family& f = families_[name];
  f.type = "gauge";
  f.help = help;
  auto& slot = f.gauges[label];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                      std::vector<double> bounds) {
  std::lock_guard<std::mutex> lk(mu_);
  Family& f = families_[name];
  f.type = "histogram";
  f.help = help;
  if (!f.histogram) f.histogram = std::make_unique<Histogram>(std::move(bounds));
  return *f.histogram;
}

namespace {
std::string num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  return fmt::format("{}", v);  // shortest round-trip form: 0.1, 2.5, 3
}
std::string with_label(const std::string& name, const std::string& label) {
  return label.empty() ? name : name + "{" + label + "}";
}
}  // namespace

void MetricsRegistry::add_collector(std::function<void()> fn) {
  std::lock_guard<std::mutex> lk(collectors_mu_);
  collectors_.push_back(std::move(fn));
}

std::string MetricsRegistry::render() const {
  {
    std::lock_guard<std::mutex> clk(collectors_mu_);
    for (const auto& c : collectors_)
      c();
  }
  std::lock_guard<std::mutex> lk(mu_);
  std::ostringstream out;
  for (const auto& [name, f] : families_) {
    out << "# HELP " << name << " " << f.help << "\n# TYPE " << name << " " << f.type << "\n";
    for (const auto& [label, c] : f.counters)
      out << with_label(name, label) << " " << num(c->value()) << "\n";
    for (const auto& [label, g] : f.gauges)
      out << with_label(name, label) << " " << num(g->value()) << "\n";
    if (f.histogram) {
      const auto s = f.histogram->snapshot();
      for (size_t i = 0; i < s.bounds.size(); ++i) {
        out << name << "_bucket{le=\"" << num(s.bounds[i]) << "\"} " << s.cumulative[i] << "\n";
      }
      out << name << "_bucket{le=\"+Inf\"} " << s.cumulative.back() << "\n";
      out << name << "_sum " << num(s.sum) << "\n" << name << "_count " << s.count << "\n";
    }
  }
  return out.str();
}

std::vector<double> latency_buckets_seconds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,
          0.5,   0.75,   1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
}

}  // namespace cartserve
