#include "core/metrics.h"

#include <gtest/gtest.h>

namespace cartserve {
namespace {

TEST(Metrics, RendersPrometheusText) {
  MetricsRegistry reg;
  reg.counter("cartserve:tokens_total", "Tokens").inc(3);
  reg.counter("cartserve:finished_total", "Finished", "reason=\"stop\"").inc();
  reg.gauge("cartserve:running", "Running").set(2);
  auto& h = reg.histogram("cartserve:ttft_seconds", "TTFT", {0.1, 1.0});
  h.observe(0.05);
  h.observe(0.5);
  h.observe(5.0);
  const std::string s = reg.render();
  EXPECT_NE(s.find("# TYPE cartserve:tokens_total counter\ncartserve:tokens_total 3\n"),
            std::string::npos);
  EXPECT_NE(s.find("cartserve:finished_total{reason=\"stop\"} 1\n"), std::string::npos);
  EXPECT_NE(s.find("cartserve:running 2\n"), std::string::npos);
  EXPECT_NE(s.find("cartserve:ttft_seconds_bucket{le=\"0.1\"} 1\n"), std::string::npos);
  EXPECT_NE(s.find("cartserve:ttft_seconds_bucket{le=\"1\"} 2\n"), std::string::npos);
  EXPECT_NE(s.find("cartserve:ttft_seconds_bucket{le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(s.find("cartserve:ttft_seconds_count 3\n"), std::string::npos);
}

}  // namespace
}  // namespace cartserve
