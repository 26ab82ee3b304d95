#pragma once
/// The error a CUDA or cuBLAS call raises: the message names the call, the device, the file and the line.

#include <stdexcept>

namespace loraplex {

class cuda_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace loraplex
