/* y = x W^T (* scale) + bias + residual for the lean forward's projections, on x86 with AVX2,
 * FMA and F16C (compiled on the machine that runs it: see native.py).
 *
 * Why our own: at the few rows of a decode step a projection's cost is reading its weight, and
 * oneDNN's and fbgemm's kernels read it at 13-21 GB/s on the 2-core machine this was written
 * on, where a stream of the weights alone runs at ~26-30. The weight is stored once, at load,
 * in panels of 8 outputs, [N/8][K][8], so a tile of 2 panels (16 outputs) reads 64 contiguous
 * bytes of fp32 weights per input channel and multiplies them by up to 6 rows of x, broadcast
 * one value at a time: 12 accumulators, 2 weight registers, 1 broadcast (AVX2 has 16).
 * The input dimension is walked in blocks of KB so a tile's weights stay in L1 while every
 * row of x passes over them; the accumulators go back to memory between blocks, which keeps
 * each output's sum one sequential chain of fused multiply-adds over k = 0..K-1 whatever the
 * number of rows: a row's result does not depend on the other rows (batch invariance).
 * Weights come as fp32, fp16 (widened by F16C as they are read) or int8 with one scale per
 * output (widened as read, the scale applied once to the sum); activations and sums are fp32.
 * Threads: the output tiles are split over OpenMP's team (the libgomp torch loaded, so this
 * shares torch's threads rather than adding a second pool).
 */
#include <immintrin.h>
#include <stdint.h>

#include "kernels.h"

enum { W_F32 = 0, W_F16 = 1, W_I8 = 2 };
#define NP 2    /* panels per tile */
#define MT 6    /* rows per tile */
#define KB 256  /* input channels per block */
#define MC 192  /* rows per pass: a multiple of MT; bounds the accumulators kept on the stack */

#define LOAD_F32(w, off) _mm256_load_ps((const float *)(w) + (off))
#define LOAD_F16(w, off) _mm256_cvtph_ps(_mm_load_si128((const __m128i *)((const uint16_t *)(w) + (off))))
#define LOAD_I8(w, off) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)(w) + (off)))))

/* One tile: NP panels (pstride elements apart) times m rows of x, over k in [k0, k1);
 * acc holds the m x NP*8 partial sums between blocks. */
#define TILE(NAME, LOAD, m)                                                                        \
  static inline __attribute__((always_inline)) void NAME##_##m(                                    \
      const void *w, long pstride, int k0, int k1, const float *x, long ldx, float *acc, int first) { \
    __m256 a[m][NP];                                                                               \
    _Pragma("GCC unroll 8") for (int i = 0; i < m; i++)                                            \
      _Pragma("GCC unroll 2") for (int j = 0; j < NP; j++)                                         \
        a[i][j] = first ? _mm256_setzero_ps() : _mm256_load_ps(acc + (i * NP + j) * 8);           \
    for (int k = k0; k < k1; k++) {                                                                \
      __m256 p[NP];                                                                                \
      _Pragma("GCC unroll 2") for (int j = 0; j < NP; j++) p[j] = LOAD(w, j * pstride + (long)k * 8); \
      _Pragma("GCC unroll 8") for (int i = 0; i < m; i++) {                                        \
        __m256 b = _mm256_broadcast_ss(x + i * ldx + k);                                           \
        _Pragma("GCC unroll 2") for (int j = 0; j < NP; j++) a[i][j] = _mm256_fmadd_ps(p[j], b, a[i][j]); \
      }                                                                                            \
    }                                                                                              \
    _Pragma("GCC unroll 8") for (int i = 0; i < m; i++)                                            \
      _Pragma("GCC unroll 2") for (int j = 0; j < NP; j++) _mm256_store_ps(acc + (i * NP + j) * 8, a[i][j]); \
  }

#define TILES(NAME, LOAD) \
  TILE(NAME, LOAD, 1) TILE(NAME, LOAD, 2) TILE(NAME, LOAD, 3) TILE(NAME, LOAD, 4) TILE(NAME, LOAD, 5) TILE(NAME, LOAD, 6)

TILES(tile_f32, LOAD_F32)
TILES(tile_f16, LOAD_F16)
TILES(tile_i8, LOAD_I8)

#define DISPATCH(NAME)                                            \
  switch (m) {                                                    \
    case 1: NAME##_1(w, pstride, k0, k1, xm, ldx, am, first); break; \
    case 2: NAME##_2(w, pstride, k0, k1, xm, ldx, am, first); break; \
    case 3: NAME##_3(w, pstride, k0, k1, xm, ldx, am, first); break; \
    case 4: NAME##_4(w, pstride, k0, k1, xm, ldx, am, first); break; \
    case 5: NAME##_5(w, pstride, k0, k1, xm, ldx, am, first); break; \
    default: NAME##_6(w, pstride, k0, k1, xm, ldx, am, first); break; \
  }

static int element_size(int wtype) { return wtype == W_F32 ? 4 : wtype == W_F16 ? 2 : 1; }

/* W: panels [Np/8][K][8] with Np = N rounded up to 16; scale: [N] for int8, else NULL;
 * x: [M][K] with row stride ldx; y, residual: [M][N] contiguous; bias, residual may be NULL. */
void llmos_matmul(int wtype, const void *W, const float *scale, int N, int K, const float *x, long ldx, int M,
                  float *y, const float *bias, const float *residual) {
  int tiles = (N + NP * 8 - 1) / (NP * 8);
  long pstride = (long)K * 8;
  int esize = element_size(wtype);
#pragma omp parallel for schedule(static)
  for (int t = 0; t < tiles; t++) {
    const char *w = (const char *)W + (long)NP * t * pstride * esize;
    int n0 = t * NP * 8, count = N - n0 < NP * 8 ? N - n0 : NP * 8;
    float acc[MC * NP * 8] __attribute__((aligned(32)));
    for (int r0 = 0; r0 < M; r0 += MC) {
      int rows = M - r0 < MC ? M - r0 : MC;
      for (int k0 = 0; k0 < K; k0 += KB) {
        int k1 = k0 + KB < K ? k0 + KB : K, first = k0 == 0;
        for (int i0 = 0; i0 < rows; i0 += MT) {
          int m = rows - i0 < MT ? rows - i0 : MT;
          const float *xm = x + (long)(r0 + i0) * ldx;
          float *am = acc + i0 * NP * 8;
          if (wtype == W_F32) DISPATCH(tile_f32)
          else if (wtype == W_F16) DISPATCH(tile_f16)
          else DISPATCH(tile_i8)
        }
      }
      for (int i = 0; i < rows; i++) {
        const float *a = acc + i * NP * 8;
        long row = (long)(r0 + i) * N + n0;
        for (int j = 0; j < count; j++) {
          float v = scale ? a[j] * scale[n0 + j] : a[j];
          if (bias) v += bias[n0 + j];
          if (residual) v += residual[row + j];
          y[row + j] = v;
        }
      }
    }
  }
}
