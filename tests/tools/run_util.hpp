#pragma once
// Running the real loraplex-run binary in tests: temp dirs, the command line, the fixture's requests.

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>

#include "tests/gpu/fixture_util.hpp"

namespace run_util {

namespace fs = std::filesystem;

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("loraplex-run-test-" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() { fs::remove_all(path); }
};

struct outcome {
  int exit_code = -1;
  std::string out;
  std::string err;
};

/// The binary: LORAPLEX_RUN_BIN in the environment (GPU-host bundles) or the build's path.
inline std::string binary() {
  const char* env = std::getenv("LORAPLEX_RUN_BIN");
  return env != nullptr && *env != '\0' ? env : LORAPLEX_RUN_BIN;
}

inline outcome run(const std::string& args, const temp_dir& t) {
  const fs::path out = t.path / "stdout.txt", err = t.path / "stderr.txt";
  const std::string cmd = binary() + " " + args + " >" + out.string() + " 2>" + err.string();
  const int status = std::system(cmd.c_str());
  outcome o;
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  o.out = slurp(out);
  o.err = slurp(err);
  return o;
}

inline std::string model_args() {
  std::string a = "--model " + fixture::data_dir + "/base";
  for (const auto& n : fixture::adapter_names) a += " --adapter " + n + "=" + fixture::data_dir + "/adapters/" + n;
  return a;
}

inline fs::path write_requests(const temp_dir& t, const std::string& text) {
  const fs::path p = t.path / "requests.jsonl";
  std::ofstream(p) << text;
  return p;
}

inline std::string fixture_requests() {
  std::string s;
  for (const auto& c : fixture::ref().select("base")) {
    nlohmann::json j;
    j["id"] = c.name;
    j["adapter"] = c.adapter ? nlohmann::json(*c.adapter) : nlohmann::json(nullptr);
    j["prompt"] = c.prompt;
    j["max_tokens"] = 12;
    s += j.dump() + "\n";
  }
  return s;
}

/// Parses loraplex-run's stdout and --logits file into results, checking ids and order against `cases`.
inline std::vector<loraplex::tools::offline_result> read_results(const std::string& out, const fs::path& logits,
                                                                 const std::vector<fixture::ref_case>& cases) {
  std::vector<loraplex::tools::offline_result> results;
  std::istringstream lines(out);
  std::string line;
  const loraplex::model::safetensors_file lf = loraplex::model::safetensors_file::open(logits);
  std::size_t i = 0;
  while (std::getline(lines, line)) {
    const auto j = nlohmann::json::parse(line);
    BOOST_REQUIRE(i < cases.size());
    BOOST_TEST(j.at("id").get<std::string>() == cases[i].name);  // file order
    BOOST_TEST(j.at("finish_reason").get<std::string>() == "length");
    loraplex::tools::offline_result r;
    r.id = cases[i].name;
    r.tokens = j.at("tokens").get<std::vector<std::int32_t>>();
    for (const std::string part : {"prefill", "decode"}) {
      const loraplex::model::tensor_view* tv = lf.find(r.id + "." + part);
      BOOST_REQUIRE(tv != nullptr);
      BOOST_TEST(tv->shape[1] == 512);
      const float* p = reinterpret_cast<const float*>(tv->data);
      (part == "prefill" ? r.prefill_logits : r.decode_logits).assign(p, p + tv->numel());
    }
    results.push_back(std::move(r));
    ++i;
  }
  BOOST_TEST(i == cases.size());
  return results;
}

}  // namespace run_util
