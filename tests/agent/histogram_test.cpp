#include "agent/api/histogram.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "agent/api/event_metrics.h"

using namespace std::chrono_literals;
using omniedge::Channel;
using omniedge::ChannelTally;
using omniedge::EventMetrics;
using omniedge::LatencyHistogram;
using omniedge::RejectReason;

TEST_CASE("the latency histogram puts each duration in the first bucket whose bound holds it",
          "[unit][metrics]") {
  LatencyHistogram h;
  h.observe(1ms);     // le 0.005
  h.observe(5ms);     // le 0.005: a bound is inclusive
  h.observe(5001us);  // le 0.01
  h.observe(300ms);   // le 0.5
  h.observe(2min);    // only +Inf
  h.observe(-3ms);    // a clock step counts as 0
  const auto s = h.snapshot();
  CHECK(s.count == 6);
  CHECK(s.cumulative[0] == 3);   // 0.005
  CHECK(s.cumulative[1] == 4);   // 0.01
  CHECK(s.cumulative[5] == 4);   // 0.25
  CHECK(s.cumulative[6] == 5);   // 0.5
  CHECK(s.cumulative[13] == 5);  // 60
  CHECK(s.cumulative[14] == 6);  // +Inf
  CHECK(s.sum_seconds == Approx(0.001 + 0.005 + 0.005001 + 0.3 + 120.0));
}

TEST_CASE("the latency histogram writes Prometheus samples with cumulative le buckets",
          "[unit][metrics]") {
  LatencyHistogram h;
  h.observe(20ms);
  h.observe(2s);
  std::string out;
  h.appendSamples(out, "omniedge_x_seconds", "link=\"mqtt\"");
  CHECK_THAT(out, Catch::StartsWith("omniedge_x_seconds_bucket{link=\"mqtt\",le=\"0.005\"} 0\n"));
  CHECK_THAT(out, Catch::Contains("omniedge_x_seconds_bucket{link=\"mqtt\",le=\"0.025\"} 1\n"));
  CHECK_THAT(out, Catch::Contains("omniedge_x_seconds_bucket{link=\"mqtt\",le=\"1\"} 1\n"));
  CHECK_THAT(out, Catch::Contains("omniedge_x_seconds_bucket{link=\"mqtt\",le=\"2.5\"} 2\n"));
  CHECK_THAT(out, Catch::Contains("omniedge_x_seconds_bucket{link=\"mqtt\",le=\"+Inf\"} 2\n"));
  CHECK_THAT(out, Catch::Contains("omniedge_x_seconds_sum{link=\"mqtt\"} 2.02"));
  CHECK_THAT(out, Catch::EndsWith("omniedge_x_seconds_count{link=\"mqtt\"} 2\n"));

  std::string bare;
  LatencyHistogram().appendSamples(bare, "omniedge_y_seconds", "");
  CHECK_THAT(bare, Catch::StartsWith("omniedge_y_seconds_bucket{le=\"0.005\"} 0\n"));
  CHECK_THAT(bare, Catch::Contains("omniedge_y_seconds_sum 0"));
  CHECK_THAT(bare, Catch::EndsWith("omniedge_y_seconds_count 0\n"));
}

TEST_CASE("the latency histogram loses no observation when threads observe at once",
          "[unit][metrics]") {
  LatencyHistogram h;
  constexpr int kThreads = 4;
  constexpr int kEach = 20000;
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&h, t] {
        for (int i = 0; i < kEach; ++i) {
          h.observe(std::chrono::milliseconds(t * 40));  // 0, 40, 80, 120 ms
        }
      });
    }
  }
  const auto s = h.snapshot();
  CHECK(s.count == kThreads * kEach);
  CHECK(s.cumulative[0] == kEach);      // the 0 ms ones, le 0.005
  CHECK(s.cumulative[3] == 2 * kEach);  // 40 ms, le 0.05
  CHECK(s.cumulative[4] == 3 * kEach);  // 80 ms, le 0.1
  CHECK(s.cumulative[5] == 4 * kEach);  // 120 ms, le 0.25
  CHECK(s.sum_seconds == Approx(kEach * (0.04 + 0.08 + 0.12)));
}

TEST_CASE("a channel label comes from a fixed set whatever type a client invents",
          "[unit][metrics]") {
  CHECK(omniedge::channelOf("pos.transaction") == Channel::kPos);
  CHECK(omniedge::channelOf("kiosk.view") == Channel::kKiosk);
  CHECK(omniedge::channelOf("beacon.enter") == Channel::kBeacon);
  CHECK(omniedge::channelOf("agent.data_dropped") == Channel::kAgent);
  CHECK(omniedge::channelOf("posx.sale") == Channel::kOther);
  CHECK(omniedge::channelOf("kiosk") == Channel::kOther);
  CHECK(omniedge::channelOf("") == Channel::kOther);
  CHECK(omniedge::channelOfBody(R"({"id":"a:b@c","type":"pos.transaction","source":"x"})") ==
        Channel::kPos);
  CHECK(omniedge::channelOfBody("not json") == Channel::kOther);
  CHECK(omniedge::channelOfBody(R"({"id":"x","type":"kiosk.v)") == Channel::kKiosk);
}

TEST_CASE("event metrics add a batch's tally per channel and reasons outside the set as other",
          "[unit][metrics]") {
  EventMetrics m;
  ChannelTally t;
  t.add(Channel::kKiosk, 3);
  t.add(Channel::kPos);
  m.ingested(t);
  m.delivered(t);
  m.delivered(t);
  m.rejected(Channel::kKiosk, omniedge::rejectReasonOf("invalid"));
  m.rejected(t, omniedge::rejectReasonOf("permission"));
  m.consentDropped(Channel::kBeacon);
  CHECK(m.ingestedCount(Channel::kKiosk) == 3);
  CHECK(m.ingestedCount(Channel::kPos) == 1);
  CHECK(m.ingestedCount(Channel::kBeacon) == 0);
  CHECK(m.deliveredCount(Channel::kKiosk) == 6);
  CHECK(m.rejectedCount(Channel::kKiosk, RejectReason::kInvalid) == 1);
  CHECK(m.rejectedCount(Channel::kKiosk, RejectReason::kOther) == 3);
  CHECK(m.rejectedCount(Channel::kPos, RejectReason::kOther) == 1);
  CHECK(m.consentDroppedCount(Channel::kBeacon) == 1);
}
