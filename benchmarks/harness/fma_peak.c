/* The host's fused multiply-add peak (float32): independent FMA chains on the
 * widest vectors -march=native gives (GCC vector extensions), one chain set
 * per OpenMP thread. Used by benchmarks to bound what any exact float32
 * kernel can reach on this host (benchmarks/harness/peak.py). */
#include <omp.h>
#ifdef __AVX512F__
#define VW 16
#else
#define VW 8
#endif
typedef float vf __attribute__((vector_size(VW * 4)));
#define CHAINS 12

/* Returns float32 FLOP/s over `iters` x CHAINS vector FMAs per thread. */
double medha_fma_peak_flops(int nthreads, long iters) {
  double t0 = 0, t1 = 0;
  volatile float sink = 0;
#pragma omp parallel num_threads(nthreads)
  {
    vf a[CHAINS];
    for (int i = 0; i < CHAINS; ++i) a[i] = (vf){} + 0.001f * i;
    const vf b = (vf){} + 0.9999f, c = (vf){} + 0.0001f;
#pragma omp barrier
#pragma omp master
    t0 = omp_get_wtime();
    for (long n = 0; n < iters; ++n)
      for (int i = 0; i < CHAINS; ++i) a[i] = a[i] * b + c;
#pragma omp barrier
#pragma omp master
    t1 = omp_get_wtime();
    float s = 0;
    for (int i = 0; i < CHAINS; ++i)
      for (int j = 0; j < VW; ++j) s += a[i][j];
#pragma omp atomic
    sink += s;
  }
  return 2.0 * VW * CHAINS * (double)iters * nthreads / (t1 - t0);
}
