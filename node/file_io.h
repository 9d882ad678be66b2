#pragma once
// Writing small files (configs, keys, pid and ready files, node infos) so
// that a reader or a crash never sees half a file: the bytes go to a
// temporary file beside the target, are fsynced, and replace the target by
// rename; the folder is fsynced so the rename itself is durable.

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <string_view>

#include "ledger/bytes.h"
#include "ledger/result.h"

namespace ccal::node {

// Replaces (or creates) `file` with `bytes`, with exactly `mode` whatever the
// umask. On failure the target is unchanged, no temporary file is left, and
// the error names the file and the reason.
Status writeFileAtomically(const std::filesystem::path& file, ByteView bytes, mode_t mode = 0644);
Status writeFileAtomically(const std::filesystem::path& file, std::string_view text,
                           mode_t mode = 0644);

// The whole of `file` if it is at most `bytes_max` bytes; errors name the file
// (not_found: missing or unreadable; too_large: over the limit, not read).
Result<std::string> readFileBounded(const std::filesystem::path& file, size_t bytes_max);

}  // namespace ccal::node
