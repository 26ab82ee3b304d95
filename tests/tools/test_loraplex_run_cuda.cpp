// The whole fixture through the real loraplex-run binary with --device cuda (label gpu): one mixed batch over
// every adapter, unmerged and --mode merged, bf16 (2e-2 of the largest logit of each tensor; greedy tokens
// where the reference margin exceeds twice the measured error) and f32 (1e-3 absolute, tokens exact).
#define BOOST_TEST_MODULE loraplex_run_cuda
#include <boost/test/unit_test.hpp>

#include "tests/tools/run_util.hpp"

using namespace loraplex;
using namespace run_util;

BOOST_AUTO_TEST_CASE(fixture_through_loraplex_run_on_the_gpu) {
  const auto cases = fixture::ref().select("base");
  for (const std::string dtype : {"bf16", "f32"}) {
    for (const std::string mode : {"unmerged", "merged"}) {
      BOOST_TEST_CONTEXT("--dtype " << dtype << " --mode " << mode) {
        temp_dir t;
        const fs::path req = write_requests(t, fixture_requests());
        const fs::path logits = t.path / "logits.safetensors";
        const outcome o = run(model_args() + " --device cuda --dtype " + dtype + " --mode " + mode + " --requests " +
                                  req.string() + " --logits " + logits.string(),
                              t);
        BOOST_REQUIRE_MESSAGE(o.exit_code == 0, o.err);
        BOOST_TEST(o.err.find("on cuda:") != std::string::npos, o.err);
        const auto results = read_results(o.out, logits, cases);
        const double worst = dtype == "bf16" ? fixture::check_cases(cases, results, 0.0, 2e-2) : fixture::check_cases(cases, results, 1e-3);
        BOOST_TEST_MESSAGE("loraplex-run --device cuda --dtype " << dtype << " --mode " << mode << ": worst error " << worst);
      }
    }
  }
}
