# GPU test of the CUDA LoRA kernels (label gpu). Included by CMakeLists.txt in this folder.
loraplex_add_test(test_cuda_lora SOURCES test_cuda_lora.cpp
  LIBS loraplex_kernels_cuda loraplex_kernels_cpu CUDA::cudart LABELS gpu)
