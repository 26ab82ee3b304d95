// The whole model on the CPU device (f32 compute) against Hugging Face transformers + PEFT logits.
#define BOOST_TEST_MODULE fixture_cpu
#include <boost/test/unit_test.hpp>

#include "gpu/cpu_device.hpp"
#include "tests/gpu/fixture_checks.hpp"

using namespace loraplex;

namespace {
// f32 weights and compute: the reference is f32 too; 1e-3 is the bound, the measured error is ~1e-5.
const fixture::precision f32{dtype::f32, dtype::f32, 1e-3, 0.0};
// bf16 storage, f32 compute: exact for the bf16 base (its values are bf16 already).
const fixture::precision bf16_storage{dtype::bf16, dtype::f32, 1e-3, 0.0};
}  // namespace

BOOST_AUTO_TEST_CASE(all_cases_one_mixed_batch) {
  gpu::cpu_device dev;
  fixture::all_cases_one_mixed_batch(dev, f32);
}

BOOST_AUTO_TEST_CASE(bf16_sharded_base_f32_and_bf16_storage) {
  gpu::cpu_device dev;
  fixture::bf16_sharded_base(dev, f32);
  fixture::bf16_sharded_base(dev, bf16_storage);
}

BOOST_AUTO_TEST_CASE(mixed_prefill_matches_peft_mixed_batch) {
  gpu::cpu_device dev;
  fixture::mixed_prefill(dev, f32);
}

BOOST_AUTO_TEST_CASE(merged_mode_matches_reference) {
  gpu::cpu_device dev;
  fixture::merged_mode_matches(dev, f32);
}

BOOST_AUTO_TEST_CASE(merged_adapter_in_mixed_batch) {
  gpu::cpu_device dev;
  fixture::merged_with_mixed_batch(dev, f32);
}

BOOST_AUTO_TEST_CASE(merge_unmerge_restores_weights_bit_for_bit) {
  gpu::cpu_device dev;
  fixture::merge_unmerge_bit_exact(dev, dtype::f32, dtype::f32);
  fixture::merge_unmerge_bit_exact(dev, dtype::bf16, dtype::f32);
}

BOOST_AUTO_TEST_CASE(chunked_prefill_and_preemption_match) {
  gpu::cpu_device dev;
  fixture::chunked_prefill_and_preemption(dev, f32);
}

BOOST_AUTO_TEST_CASE(seeded_sampling_is_batch_independent) {
  gpu::cpu_device dev;
  fixture::seeded_sampling_is_batch_independent(dev, f32);
}
