# GPU tests of the CUDA ops other than LoRA, each against the CPU reference (label gpu).
loraplex_add_test(test_cuda_ops
  SOURCES test_cuda_ops.cpp test_cuda_attention.cpp test_cuda_sampling.cpp
  LIBS loraplex_kernels_cuda loraplex_kernels_cpu CUDA::cudart
  LABELS gpu)
