// loraplex-run as a user runs it: the real binary on real files. It reproduces the fixture from the command
// line, and every bad input ends with a message naming the line, a non-zero exit and nothing written.
#define BOOST_TEST_MODULE loraplex_run
#include <boost/test/unit_test.hpp>

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>

#include "tests/tools/run_util.hpp"

using namespace loraplex;
using namespace run_util;
namespace fs = std::filesystem;

namespace {

/// A bad input: exit non-zero, the message contains `expect`, nothing on stdout, no logits file.
void expect_refused(const std::string& requests, const std::string& expect, const std::string& extra = "") {
  temp_dir t;
  const fs::path req = write_requests(t, requests);
  const fs::path logits = t.path / "logits.safetensors";
  const outcome o = run(model_args() + " --requests " + req.string() + " --logits " + logits.string() + " " + extra, t);
  BOOST_TEST(o.exit_code != 0);
  BOOST_TEST(o.err.find(expect) != std::string::npos, "stderr was: " << o.err);
  BOOST_TEST(o.out.empty(), "stdout was: " << o.out);
  BOOST_TEST(!fs::exists(logits));
  BOOST_TEST(!fs::exists(logits.string() + ".tmp"));
}

}  // namespace

BOOST_AUTO_TEST_CASE(reproduces_the_fixture_from_the_command_line) {
  for (const std::string mode : {"unmerged", "merged"}) {
    BOOST_TEST_CONTEXT("mode " << mode) {
      temp_dir t;
      const fs::path req = write_requests(t, fixture_requests());
      const fs::path logits = t.path / "logits.safetensors";
      const outcome o = run(model_args() + " --requests " + req.string() + " --logits " + logits.string() + " --mode " + mode, t);
      BOOST_REQUIRE_MESSAGE(o.exit_code == 0, o.err);
      const auto cases = fixture::ref().select("base");
      const auto results = read_results(o.out, logits, cases);
      fixture::check_cases(cases, results, 1e-3);
    }
  }
}

BOOST_AUTO_TEST_CASE(sharded_bf16_base_with_bf16_storage) {
  temp_dir t;
  std::string reqs;
  for (const auto& c : fixture::ref().select("base-bf16")) {
    nlohmann::json j{{"id", c.name}, {"adapter", nullptr}, {"prompt", c.prompt}, {"max_tokens", 12}};
    reqs += j.dump() + "\n";
  }
  const fs::path req = write_requests(t, reqs);
  const outcome o = run("--model " + fixture::data_dir + "/base-bf16 --dtype bf16 --requests " + req.string(), t);
  BOOST_REQUIRE_MESSAGE(o.exit_code == 0, o.err);
  std::istringstream lines(o.out);
  std::string line;
  for (const auto& c : fixture::ref().select("base-bf16")) {
    BOOST_REQUIRE(std::getline(lines, line));
    BOOST_TEST(nlohmann::json::parse(line).at("tokens").get<std::vector<std::int32_t>>() == c.greedy, boost::test_tools::per_element());
  }
}

BOOST_AUTO_TEST_CASE(stop_tokens_and_sampling_fields) {
  temp_dir t;
  const auto c = fixture::ref().select("base")[0];  // p0.base: greedy 42, 42, 482, …
  nlohmann::json a{{"id", "stops"}, {"adapter", nullptr}, {"prompt", c.prompt}, {"max_tokens", 12}, {"stop", {482}}};
  nlohmann::json b{{"id", "sampled"}, {"adapter", "chat-r16"}, {"prompt", c.prompt}, {"max_tokens", 8},
                   {"temperature", 0.8}, {"top_k", 20}, {"top_p", 0.95}, {"seed", 7}};
  const fs::path req = write_requests(t, a.dump() + "\n" + b.dump() + "\n");
  const outcome o1 = run(model_args() + " --requests " + req.string(), t);
  const outcome o2 = run(model_args() + " --requests " + req.string(), t);
  BOOST_REQUIRE_MESSAGE(o1.exit_code == 0, o1.err);
  std::istringstream lines(o1.out);
  std::string line;
  std::getline(lines, line);
  auto j = nlohmann::json::parse(line);
  BOOST_TEST(j.at("finish_reason").get<std::string>() == "stop");
  BOOST_TEST(j.at("tokens").get<std::vector<int>>() == (std::vector<int>{42, 42, 482}), boost::test_tools::per_element());
  std::getline(lines, line);
  j = nlohmann::json::parse(line);
  BOOST_TEST(j.at("tokens").size() == 8u);
  BOOST_TEST(o1.out == o2.out);  // the same seed draws the same tokens
}

BOOST_AUTO_TEST_CASE(unknown_adapter_is_refused) {
  expect_refused("{\"id\": \"a\", \"adapter\": \"nope\", \"prompt\": [1, 2], \"max_tokens\": 2}\n",
                 "requests.jsonl:1: unknown adapter \"nope\"");
}

BOOST_AUTO_TEST_CASE(token_out_of_range_is_refused) {
  expect_refused("{\"id\": \"a\", \"adapter\": null, \"prompt\": [1, 2], \"max_tokens\": 2}\n"
                 "{\"id\": \"b\", \"adapter\": null, \"prompt\": [1, 512], \"max_tokens\": 2}\n",
                 "requests.jsonl:2: \"prompt\"[1] = 512 is outside the vocabulary [0, 512)");
}

BOOST_AUTO_TEST_CASE(prompt_longer_than_the_context_is_refused) {
  std::vector<int> long_prompt(250, 5);
  nlohmann::json j{{"id", "long"}, {"adapter", nullptr}, {"prompt", long_prompt}, {"max_tokens", 10}};
  expect_refused(j.dump() + "\n", "requests.jsonl:1: prompt (250 tokens) + max_tokens (10) exceeds the model's context of 256");
}

BOOST_AUTO_TEST_CASE(malformed_lines_are_refused) {
  expect_refused("{\"id\": \"a\", \"prompt\": [1], \"max_tokens\": 1}\n{not json\n", "requests.jsonl:2: not valid JSON");
  expect_refused("{\"id\": \"a\", \"prompt\": [1]}\n", "requests.jsonl:1: missing \"max_tokens\"");
  expect_refused("{\"id\": \"a\", \"prompt\": [], \"max_tokens\": 1}\n", "requests.jsonl:1: \"prompt\" is empty");
  expect_refused("{\"id\": \"a\", \"prompt\": [1], \"max_tokens\": 1, \"temprature\": 1}\n", "unknown field \"temprature\"");
  expect_refused("{\"id\": \"a\", \"prompt\": [1], \"max_tokens\": 1}\n{\"id\": \"a\", \"prompt\": [1], \"max_tokens\": 1}\n",
                 "requests.jsonl:2: duplicate id \"a\"");
  expect_refused("[1, 2]\n", "requests.jsonl:1: expected a JSON object");
}

BOOST_AUTO_TEST_CASE(bad_command_lines_are_refused) {
  temp_dir t;
  const fs::path req = write_requests(t, "{\"id\": \"a\", \"prompt\": [1], \"max_tokens\": 1}\n");
  outcome o = run("--requests " + req.string(), t);  // no --model
  BOOST_TEST(o.exit_code != 0);
  BOOST_TEST(o.err.find("--model") != std::string::npos, o.err);
  o = run(model_args() + " --requests " + req.string() + " --adapter broken", t);
  BOOST_TEST(o.exit_code != 0);
  BOOST_TEST(o.err.find("expected NAME=DIR") != std::string::npos, o.err);
  o = run("--model " + (t.path / "missing").string() + " --requests " + req.string(), t);
  BOOST_TEST(o.exit_code != 0);
  BOOST_TEST(o.err.find("config.json") != std::string::npos, o.err);
  BOOST_TEST(o.out.empty());
}
