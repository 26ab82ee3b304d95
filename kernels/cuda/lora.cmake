# The batched heterogeneous-rank LoRA kernels (shrink, expand, merge). Included by kernels/cuda/CMakeLists.txt.
list(APPEND LORAPLEX_CUDA_LORA_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/lora_shrink.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/lora_expand.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/lora_merge.cu
)
