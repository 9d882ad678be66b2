#pragma once
// A fresh, empty directory under /tmp for one test, removed afterwards.

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "ledger/assert.h"

namespace ccal::testing {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "ccal-test") {
    std::string pattern = "/tmp/" + prefix + "-XXXXXX";
    CCAL_ASSERT(::mkdtemp(pattern.data()) != nullptr);
    path = pattern + "/data";  // not yet created: stores create their own directory
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(std::filesystem::path(path).parent_path(), ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string path;
};

}  // namespace ccal::testing
