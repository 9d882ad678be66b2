#pragma once
// Always-on assertions. A failed assertion is a bug in CCAL itself, never a
// reaction to bad input: untrusted bytes get an Error value instead.

#include <cstdio>
#include <cstdlib>

namespace ccal::detail {
[[noreturn]] inline void assertionFailed(const char* expr, const char* file, int line,
                                         const char* message) {
  std::fprintf(stderr, "CCAL assertion failed: %s (%s) at %s:%d\n", expr, message, file, line);
  std::abort();
}
}  // namespace ccal::detail

#define CCAL_ASSERT(expr)                                                      \
  do {                                                                         \
    if (!(expr)) ::ccal::detail::assertionFailed(#expr, __FILE__, __LINE__, ""); \
  } while (false)

#define CCAL_ASSERT_MSG(expr, message)                                                \
  do {                                                                                \
    if (!(expr)) ::ccal::detail::assertionFailed(#expr, __FILE__, __LINE__, message); \
  } while (false)
