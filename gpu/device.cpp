#include "gpu/device.hpp"

#include <utility>

namespace loraplex::gpu {

device_memory::device_memory(device_memory&& o) noexcept
    : owner_(std::exchange(o.owner_, nullptr)), ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

device_memory& device_memory::operator=(device_memory&& o) noexcept {
  if (this != &o) {
    release();
    owner_ = std::exchange(o.owner_, nullptr);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

device_memory::~device_memory() { release(); }

void device_memory::release() noexcept {
  if (owner_ != nullptr && ptr_ != nullptr) owner_->free(ptr_);
  ptr_ = nullptr;
  owner_ = nullptr;
  bytes_ = 0;
}

}  // namespace loraplex::gpu
