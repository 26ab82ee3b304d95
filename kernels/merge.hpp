#pragma once
/// Merge of one adapter's module into a base weight: W[row_offset + o, i] += sum_k Bt[k, o] * A[k, i],
/// computed in f32 and rounded once to the weight's type. Unmerge does not subtract (that would not restore
/// bf16 weights exactly): the runner saves the rows it merges and copies them back.

#include "kernels/dtype.hpp"

namespace loraplex::kernels {

struct lora_merge_args {
  void* w = nullptr;  // [rows, ldw] w_type; rows [row_offset, row_offset + out_features) are updated
  int ldw = 0;
  dtype w_type = dtype::f32;
  int row_offset = 0;
  int out_features = 0;
  int in_features = 0;
  const void* a = nullptr;   // [rank, lda] adapter_type
  int lda = 0;
  const void* bt = nullptr;  // [rank, ldb] adapter_type, scaling folded in
  int ldb = 0;
  dtype adapter_type = dtype::f32;
  int rank = 0;
};

namespace cpu {
void lora_merge(const lora_merge_args& a);
}

}  // namespace loraplex::kernels
