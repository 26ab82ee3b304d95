#include "engine/block_allocator.hpp"

#include <stdexcept>
#include <string>

namespace loraplex::engine {

block_allocator::block_allocator(int num_pages, int page_size)
    : num_pages_(num_pages), page_size_(page_size), in_use_(static_cast<std::size_t>(num_pages), false) {
  if (num_pages <= 0 || page_size <= 0) throw std::invalid_argument("block_allocator: num_pages and page_size must be positive");
  free_.reserve(static_cast<std::size_t>(num_pages));
  for (int p = num_pages - 1; p >= 0; --p) free_.push_back(p);  // page 0 handed out first
}

bool block_allocator::grow(std::vector<std::int32_t>& table, int tokens) {
  const int need = pages_for(tokens) - static_cast<int>(table.size());
  if (need <= 0) return true;
  if (need > num_free()) return false;
  for (int i = 0; i < need; ++i) {
    const std::int32_t p = free_.back();
    free_.pop_back();
    in_use_[static_cast<std::size_t>(p)] = true;
    table.push_back(p);
  }
  return true;
}

void block_allocator::release(std::vector<std::int32_t>& table) {
  for (const std::int32_t p : table) {
    if (p < 0 || p >= num_pages_ || !in_use_[static_cast<std::size_t>(p)])
      throw std::logic_error("block_allocator: page " + std::to_string(p) + " released twice or never allocated");
    in_use_[static_cast<std::size_t>(p)] = false;
    free_.push_back(p);
  }
  table.clear();
}

}  // namespace loraplex::engine
