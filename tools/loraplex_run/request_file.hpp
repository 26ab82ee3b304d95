#pragma once
/// The JSON-lines request file of loraplex-run: one object per line,
/// {"id": str, "adapter": str|null, "prompt": [int], "max_tokens": int,
///  "temperature"?: float, "top_p"?: float, "top_k"?: int, "seed"?: int, "stop"?: [int]}.
/// Greedy unless temperature > 0. Every line is checked before anything runs; an error names the file and
/// line and says what is wrong.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/sequence.hpp"

namespace loraplex::tools {

struct offline_request {
  int line = 0;
  std::string id;
  std::optional<std::string> adapter;
  std::vector<std::int32_t> prompt;
  int max_tokens = 0;
  std::vector<std::int32_t> stop;
  engine::sampling_options sampling;
};

/// What a request is checked against.
struct request_limits {
  int vocab_size = 0;
  int max_context = 0;              // prompt + max_tokens must fit
  std::set<std::string> adapters;   // names given with --adapter
};

class request_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Parses one line (1-based number `line` for messages). Throws request_error "FILE:LINE: message".
[[nodiscard]] offline_request parse_request_line(const std::string& text, const std::string& file, int line,
                                                 const request_limits& limits);
/// Reads and checks every line; blank lines are skipped; ids must be unique. Throws request_error.
[[nodiscard]] std::vector<offline_request> read_request_file(const std::filesystem::path& path, const request_limits& limits);

}  // namespace loraplex::tools
