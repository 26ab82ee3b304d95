// loraplex-bench: measurements on the GPU.
//   loraplex-bench kernels [--quick] [--sections lora,attention,gemm] [--out FILE.md]
// prints a markdown report (device ceilings, then each section) to stdout and, with --out, to FILE.md.

#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "tools/bench/bench.hpp"

namespace {

int usage() {
  std::fprintf(stderr, "usage: loraplex-bench kernels [--quick] [--sections lora,attention,gemm] [--out FILE.md]\n"
                       "  the device ceilings are always measured first; --sections picks what follows (default: all)\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace loraplex;
  using namespace loraplex::bench;
  if (argc < 2 || std::strcmp(argv[1], "kernels") != 0) return usage();
  context ctx;
  std::string out_path;
  std::string sections = "lora,attention,gemm";
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      ctx.quick = true;
    } else if (std::strcmp(argv[i], "--sections") == 0 && i + 1 < argc) {
      sections = argv[++i];
    } else if (std::strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
      out_path = argv[++i];
    } else {
      return usage();
    }
  }
  try {
    report rep;
    ctx.out = &rep;
    int dev = 0;
    LORAPLEX_CUDA_CALL(cudaGetDevice(&dev));
    LORAPLEX_CUDA_CALL(cudaGetDeviceProperties(&ctx.prop, dev));
    cuda_stream stream;
    ctx.stream = stream.get();
    BENCH_CUBLAS(cublasCreate(&ctx.cublas));
    BENCH_CUBLAS(cublasSetStream(ctx.cublas, ctx.stream));
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    rep.paragraph(fmt("# loraplex-bench kernels%s\n\n%s, %d SMs, %.0f MB L2, %.1f GiB; CUDA runtime %d, driver %d. "
                      "Times are medians of %d repetitions after %d warm-up runs, each between two CUDA events.",
                      ctx.quick ? " --quick" : "", ctx.prop.name, ctx.prop.multiProcessorCount,
                      ctx.prop.l2CacheSize / 1e6, static_cast<double>(ctx.prop.totalGlobalMem) / (1 << 30), runtime,
                      driver, ctx.reps, ctx.warmup));
    bench_ceilings(ctx);
    auto wanted = [&](const char* name) { return ("," + sections + ",").find(std::string(",") + name + ",") != std::string::npos; };
    if (wanted("lora")) bench_lora(ctx);
    if (wanted("attention")) bench_attention(ctx);
    if (wanted("gemm")) bench_gemm(ctx);
    cublasDestroy(ctx.cublas);
    if (!out_path.empty() && !rep.write(out_path)) {
      std::fprintf(stderr, "loraplex-bench: cannot write %s\n", out_path.c_str());
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loraplex-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
