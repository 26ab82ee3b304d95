# The CUDA ops of one forward step besides LoRA (one file per op; attention split by path). Included by
# CMakeLists.txt in this folder.
list(APPEND LORAPLEX_CUDA_OPS_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/activation.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/attention.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/attention_decode.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/attention_prefill.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/convert.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/embedding.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/gemm.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/rms_norm.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/rope.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/sampling.cu
)
