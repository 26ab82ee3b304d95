#pragma once
/// CUDA row gather (host-includable).

#include "kernels/cuda/ops.hpp"
#include "kernels/gather.hpp"

namespace loraplex::kernels::cuda {
void gather_rows(const gather_rows_args& a, stream_t stream);
}
