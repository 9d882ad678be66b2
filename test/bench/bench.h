#pragma once
// A tiny harness for benchmark programs: runs a body repeatedly for a fixed
// time per trial, several trials, and reports the median rate. Medians and
// ratios, not single runs: machines here are shared and noisy.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace ccal::bench {

struct Options {
  int trials = 7;
  double trial_seconds = 0.4;

  static Options fromArgs(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
      if (std::strcmp(argv[i], "--quick") == 0) {
        o.trials = 3;
        o.trial_seconds = 0.02;
      }
    }
    return o;
  }
};

// Median operations per second of body(), which performs `ops_per_call` operations.
template <class Body>
double medianRate(const Options& options, Body&& body, double ops_per_call = 1) {
  using Clock = std::chrono::steady_clock;
  std::vector<double> rates;
  for (int t = 0; t < options.trials; ++t) {
    uint64_t calls = 0;
    auto start = Clock::now();
    auto deadline = start + std::chrono::duration<double>(options.trial_seconds);
    Clock::time_point now;
    do {
      for (int i = 0; i < 16; ++i) body();
      calls += 16;
      now = Clock::now();
    } while (now < deadline);
    double seconds = std::chrono::duration<double>(now - start).count();
    rates.push_back(static_cast<double>(calls) * ops_per_call / seconds);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

// The median over trials of rate(a) / rate(b), with a and b measured back to
// back in each trial, so that load from elsewhere on the machine falls on both.
template <class A, class B>
double medianRatio(const Options& options, A&& a, B&& b) {
  Options one = options;
  one.trials = 1;
  std::vector<double> ratios;
  for (int t = 0; t < options.trials; ++t) {
    double ra = medianRate(one, a);
    double rb = medianRate(one, b);
    ratios.push_back(ra / rb);
  }
  std::sort(ratios.begin(), ratios.end());
  return ratios[ratios.size() / 2];
}

}  // namespace ccal::bench
