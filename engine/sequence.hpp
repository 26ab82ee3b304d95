#pragma once
/// One request's state inside the engine.
///
///   waiting ──schedule──▶ running ──last token──▶ finished
///      ▲                     │
///      └──── preempted ◀─────┘  (out of KV pages: its pages are freed, its tokens recomputed later)

#include <cstdint>
#include <string>
#include <vector>

namespace loraplex::engine {

enum class sequence_state : std::uint8_t { waiting, running, finished };
enum class finish_reason : std::uint8_t { none, length, stop };

[[nodiscard]] constexpr const char* finish_reason_name(finish_reason r) noexcept {
  return r == finish_reason::length ? "length" : r == finish_reason::stop ? "stop" : "none";
}

struct sampling_options {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  std::uint64_t seed = 0;
};

struct sequence {
  std::string id;
  int adapter = -1;  // adapter slot of the model runner, -1 for the base model
  std::vector<std::int32_t> prompt;
  std::vector<std::int32_t> output;
  int max_tokens = 16;
  std::vector<std::int32_t> stop_tokens;
  sampling_options sampling;
  bool want_prompt_logits = false;  // every prompt position's logits (offline runs)

  sequence_state state = sequence_state::waiting;
  finish_reason finished_by = finish_reason::none;
  int num_cached = 0;                     // tokens whose K/V are in the cache
  std::vector<std::int32_t> block_table;  // pages of the KV cache, in order
  int times_preempted = 0;

  /// Every token the model has seen or produced: prompt then output.
  [[nodiscard]] int total_tokens() const noexcept { return static_cast<int>(prompt.size() + output.size()); }
  [[nodiscard]] std::int32_t token_at(int i) const noexcept {
    const int p = static_cast<int>(prompt.size());
    return i < p ? prompt[static_cast<std::size_t>(i)] : output[static_cast<std::size_t>(i - p)];
  }
};

}  // namespace loraplex::engine
