#include "tools/loraplex_run/request_file.hpp"

#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_set>

namespace loraplex::tools {

namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& file, int line, const std::string& msg) {
  throw request_error(file + ":" + std::to_string(line) + ": " + msg);
}

std::int64_t integer(const json& v, const std::string& file, int line, const char* field) {
  if (!v.is_number_integer()) fail(file, line, std::string("\"") + field + "\" must be an integer");
  return v.get<std::int64_t>();
}

std::vector<std::int32_t> token_list(const json& v, const std::string& file, int line, const char* field, int vocab) {
  if (!v.is_array()) fail(file, line, std::string("\"") + field + "\" must be a list of token ids");
  std::vector<std::int32_t> out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_integer()) fail(file, line, std::string("\"") + field + "\"[" + std::to_string(i) + "] is not an integer");
    const std::int64_t t = v[i].get<std::int64_t>();
    if (t < 0 || t >= vocab)
      fail(file, line, std::string("\"") + field + "\"[" + std::to_string(i) + "] = " + std::to_string(t) +
                           " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    out.push_back(static_cast<std::int32_t>(t));
  }
  return out;
}

}  // namespace

offline_request parse_request_line(const std::string& text, const std::string& file, int line, const request_limits& lim) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    fail(file, line, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(file, line, "expected a JSON object");
  static const std::unordered_set<std::string> known = {"id", "adapter", "prompt", "max_tokens", "temperature",
                                                        "top_p", "top_k", "seed", "stop"};
  for (const auto& [k, v] : j.items())
    if (!known.contains(k)) fail(file, line, "unknown field \"" + k + "\"");
  offline_request r;
  r.line = line;
  if (!j.contains("id") || !j["id"].is_string() || j["id"].get<std::string>().empty())
    fail(file, line, "\"id\" must be a non-empty string");
  r.id = j["id"].get<std::string>();
  if (j.contains("adapter") && !j["adapter"].is_null()) {
    if (!j["adapter"].is_string()) fail(file, line, "\"adapter\" must be a string or null");
    r.adapter = j["adapter"].get<std::string>();
    if (!lim.adapters.contains(*r.adapter)) {
      std::string names;
      for (const auto& n : lim.adapters) names += (names.empty() ? "" : ", ") + n;
      fail(file, line, "unknown adapter \"" + *r.adapter + "\" (loaded with --adapter: " + (names.empty() ? "none" : names) + ")");
    }
  }
  if (!j.contains("prompt")) fail(file, line, "missing \"prompt\"");
  r.prompt = token_list(j["prompt"], file, line, "prompt", lim.vocab_size);
  if (r.prompt.empty()) fail(file, line, "\"prompt\" is empty");
  if (!j.contains("max_tokens")) fail(file, line, "missing \"max_tokens\"");
  const std::int64_t mt = integer(j["max_tokens"], file, line, "max_tokens");
  if (mt < 1) fail(file, line, "\"max_tokens\" must be at least 1");
  if (static_cast<std::int64_t>(r.prompt.size()) + mt > lim.max_context)
    fail(file, line, "prompt (" + std::to_string(r.prompt.size()) + " tokens) + max_tokens (" + std::to_string(mt) +
                         ") exceeds the model's context of " + std::to_string(lim.max_context) + " tokens");
  r.max_tokens = static_cast<int>(mt);
  if (j.contains("temperature")) {
    if (!j["temperature"].is_number()) fail(file, line, "\"temperature\" must be a number");
    r.sampling.temperature = j["temperature"].get<float>();
    if (!(r.sampling.temperature >= 0.0f)) fail(file, line, "\"temperature\" must be >= 0");
  }
  if (j.contains("top_p")) {
    if (!j["top_p"].is_number()) fail(file, line, "\"top_p\" must be a number");
    r.sampling.top_p = j["top_p"].get<float>();
    if (!(r.sampling.top_p > 0.0f && r.sampling.top_p <= 1.0f)) fail(file, line, "\"top_p\" must be in (0, 1]");
  }
  if (j.contains("top_k")) {
    const std::int64_t k = integer(j["top_k"], file, line, "top_k");
    if (k < 0 || k > std::numeric_limits<std::int32_t>::max()) fail(file, line, "\"top_k\" must be >= 0");
    r.sampling.top_k = static_cast<int>(k);
  }
  if (j.contains("seed")) {
    if (!j["seed"].is_number_integer()) fail(file, line, "\"seed\" must be an integer");
    r.sampling.seed = j["seed"].is_number_unsigned() ? j["seed"].get<std::uint64_t>()
                                                     : static_cast<std::uint64_t>(j["seed"].get<std::int64_t>());
  }
  if (j.contains("stop")) r.stop = token_list(j["stop"], file, line, "stop", lim.vocab_size);
  return r;
}

std::vector<offline_request> read_request_file(const std::filesystem::path& path, const request_limits& lim) {
  std::ifstream in(path);
  if (!in) throw request_error(path.string() + ": cannot open the request file");
  std::vector<offline_request> out;
  std::unordered_set<std::string> ids;
  std::string text;
  int line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    offline_request r = parse_request_line(text, path.string(), line, lim);
    if (!ids.insert(r.id).second) fail(path.string(), line, "duplicate id \"" + r.id + "\"");
    out.push_back(std::move(r));
  }
  if (out.empty()) throw request_error(path.string() + ": no requests");
  return out;
}

}  // namespace loraplex::tools
