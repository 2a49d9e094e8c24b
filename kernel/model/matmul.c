/* y = x W^T (* scale) + bias + residual for the lean forward's projections, on x86 with AVX2,
 * FMA and F16C, or AVX-512 (compiled on the machine that runs it: see native.py).
 *
 * Why our own: at the few rows of a decode step a projection's cost is reading its weight, and
 * oneDNN's and fbgemm's kernels read it at 13-21 GB/s on the 2-core machine this was written
 * on, where a stream of the weights alone runs at ~26-30. The weight is stored once, at load,
 * in panels of PW outputs (a register's fp32 lanes: 8 with AVX2, 16 with AVX-512), [N/PW][K][PW],
 * so a tile of 2 panels reads two registers of weights per input channel and multiplies them
 * by up to MT rows of x, broadcast one value at a time (AVX2: 6 rows, 12 accumulators, 2 weight
 * registers, 1 broadcast of its 16 registers).
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
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"

enum { W_F32 = 0, W_F16 = 1, W_I8 = 2 };
#define KB 256  /* input channels per block */
#define MC 192  /* rows per pass: a multiple of MT; bounds the accumulators kept on the stack */
#define NP 2    /* panels per tile */
/* At one row a 2-panel tile has only two chains of dependent multiply-adds, which the FMA
 * latency (4 cycles) caps below what memory delivers for 1-byte weights (measured with AVX2:
 * int8 at half fp32's bytes per second; with AVX-512, int8 3.7 ms with 4 panels, 4.1 with 2):
 * 1- and 2-row steps use 4-panel tiles (matmul.py pads outputs to a multiple of them). */
#define NP_FEW 4

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
/* AVX-512: a register holds 16 outputs, so panels are 16 wide ([N/16][K][16]) and every tile
 * below reads a whole register of each panel per input channel; each output's sum is the same
 * sequence as with AVX2's 8-wide panels, so both builds give the same bits. 32 registers: 8-row
 * tiles (16 sums). int8 multiplies pairs with vpdpwssd (multiply, add pairs, accumulate: one
 * instruction where AVX2 needs three). Measured on a 2-core Zen 5 VM, all of the model's
 * projections at one row: int8 8.1 -> 3.6 ms against the AVX2 tiles. */
#define PW 16     /* outputs per panel */
#define MT 8      /* rows per tile */
#define MT_I8 8
typedef __m512 vfloat;
typedef __m512i vint;
#define VF_ZERO() _mm512_setzero_ps()
#define VF_LOADA(p) _mm512_load_ps(p)
#define VF_STOREA(p, v) _mm512_store_ps(p, v)
#define VF_ADD(a, b) _mm512_add_ps(a, b)
#define VF_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VF_BROADCAST(p) _mm512_set1_ps(*(p))
#define LOAD_F32(w, off) _mm512_loadu_ps((const float *)(w) + (off))
#define LOAD_F16(w, off) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(w) + (off))))
#define LOAD_I8(w, off) _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)((const int8_t *)(w) + (off))))
#define VI_ZERO() _mm512_setzero_si512()
#define VI_BROADCAST_PAIR(p) _mm512_set1_epi32(*(const int32_t *)(p))
#define VI_DOT_PAIRS(acc, w, x) _mm512_dpwssd_epi32(acc, w, x)
#define VI_TO_FLOAT(v) _mm512_cvtepi32_ps(v)
#else
#define PW 8
#define MT 6    /* rows per tile: 12 sums, 2 weight registers, 1 broadcast (AVX2 has 16) */
#define MT_I8 4 /* int8 tiles need a register more per sum: 4 rows fit */
typedef __m256 vfloat;
typedef __m256i vint;
#define VF_ZERO() _mm256_setzero_ps()
#define VF_LOADA(p) _mm256_load_ps(p)
#define VF_STOREA(p, v) _mm256_store_ps(p, v)
#define VF_ADD(a, b) _mm256_add_ps(a, b)
#define VF_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VF_BROADCAST(p) _mm256_broadcast_ss(p)
#define LOAD_F32(w, off) _mm256_loadu_ps((const float *)(w) + (off))
#define LOAD_F16(w, off) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)(w) + (off))))
#define LOAD_I8(w, off) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)((const int8_t *)(w) + (off))))
#define VI_ZERO() _mm256_setzero_si256()
#define VI_BROADCAST_PAIR(p) _mm256_set1_epi32(*(const int32_t *)(p))
#define VI_DOT_PAIRS(acc, w, x) _mm256_add_epi32(acc, _mm256_madd_epi16(w, x))
#define VI_TO_FLOAT(v) _mm256_cvtepi32_ps(v)
#endif

#define PREFETCH_PAIRS 64 /* int8: how far ahead on each panel's stream the next lines are asked
                            for, in pairs of inputs (measured at one row: 32 and 128 slower; the
                            fp32 tiles ran slower with any, and fp16 within noise) */

/* One tile: np panels (pstride elements apart) times m rows of x, over k in [k0, k1);
 * acc holds the m x np*PW partial sums between blocks. Which outputs share a tile never
 * changes an output's sum. */
#define TILE(NAME, LOAD, np, m)                                                                    \
  static inline __attribute__((always_inline)) void NAME##_##np##_##m(                             \
      const void *w, long pstride, int k0, int k1, const float *x, long ldx, float *acc, int first) { \
    vfloat a[m][np];                                                                               \
    _Pragma("GCC unroll 8") for (int i = 0; i < m; i++)                                            \
      _Pragma("GCC unroll 4") for (int j = 0; j < np; j++)                                         \
        a[i][j] = first ? VF_ZERO() : VF_LOADA(acc + (i * np + j) * PW);                           \
    for (int k = k0; k < k1; k++) {                                                                \
      vfloat p[np];                                                                                \
      _Pragma("GCC unroll 4") for (int j = 0; j < np; j++) p[j] = LOAD(w, j * pstride + (long)k * PW); \
      _Pragma("GCC unroll 8") for (int i = 0; i < m; i++) {                                        \
        vfloat b = VF_BROADCAST(x + i * ldx + k);                                                  \
        _Pragma("GCC unroll 4") for (int j = 0; j < np; j++) a[i][j] = VF_FMA(p[j], b, a[i][j]);   \
      }                                                                                            \
    }                                                                                              \
    _Pragma("GCC unroll 8") for (int i = 0; i < m; i++)                                            \
      _Pragma("GCC unroll 4") for (int j = 0; j < np; j++) VF_STOREA(acc + (i * np + j) * PW, a[i][j]); \
  }

/* int8 weights times int16 activations, in integers. Widening int8 to fp32 costs two
 * instructions per 8 weights besides the multiply-add, and at one row that, not memory, was the
 * limit (measured: 14 GB/s against fp16's 26). Instead each row of x is quantized to int16 with
 * its own scale (max |x| -> 32767: a 2^-15 step, below fp16's rounding of the weights, and a
 * row's numbers still depend on that row alone), and vpmaddwd (vpdpwssd) multiplies a
 * register of weights by as many activations and adds pairs. The weights are stored with
 * input channels in pairs, [N/PW][K/2][PW][2], so a pair's two products belong to one output.
 * int32 sums cannot overflow within a KB block (128 pairs x 2 x 127 x 32767 < 2^31) and are
 * exact in any order; each block's sum is added to the fp32 accumulator, so an output's sum is
 * still one fixed sequence whatever the rows. */
#define TILE_I8(np, m)                                                                             \
  static inline __attribute__((always_inline)) void tile_i8_##np##_##m(                            \
      const void *w, long pstride, int k0, int k1, const int16_t *x, long ldx, float *acc, int first) { \
    vint a[m][np];                                                                                 \
    _Pragma("GCC unroll 8") for (int i = 0; i < m; i++)                                            \
      _Pragma("GCC unroll 4") for (int j = 0; j < np; j++) a[i][j] = VI_ZERO();                    \
    for (int k = k0; k < k1; k += 2) {                                                             \
      vint p[np];                                                                                  \
      _Pragma("GCC unroll 4") for (int j = 0; j < np; j++) p[j] = LOAD_I8(w, j * pstride + (long)k * PW); \
      if ((k & (64 / PW - 1)) == 0) /* a cache line of each panel per 64 / PW inputs */           \
        _Pragma("GCC unroll 4") for (int j = 0; j < np; j++)                                       \
          _mm_prefetch((const char *)(w) + j * pstride + (long)(k + 2 * PREFETCH_PAIRS) * PW, _MM_HINT_T0); \
      _Pragma("GCC unroll 8") for (int i = 0; i < m; i++) {                                        \
        vint b = VI_BROADCAST_PAIR(x + i * ldx + k);                                               \
        _Pragma("GCC unroll 4") for (int j = 0; j < np; j++) a[i][j] = VI_DOT_PAIRS(a[i][j], p[j], b); \
      }                                                                                            \
    }                                                                                              \
    _Pragma("GCC unroll 8") for (int i = 0; i < m; i++)                                            \
      _Pragma("GCC unroll 4") for (int j = 0; j < np; j++) {                                       \
        float *dst = acc + (i * np + j) * PW;                                                      \
        vfloat f = VI_TO_FLOAT(a[i][j]);                                                           \
        VF_STOREA(dst, first ? f : VF_ADD(VF_LOADA(dst), f));                                      \
      }                                                                                            \
  }

#define TILES(NAME, LOAD)                                                                     \
  TILE(NAME, LOAD, 2, 1) TILE(NAME, LOAD, 2, 2) TILE(NAME, LOAD, 2, 3) TILE(NAME, LOAD, 2, 4) \
  TILE(NAME, LOAD, 2, 5) TILE(NAME, LOAD, 2, 6) TILE(NAME, LOAD, 2, 7) TILE(NAME, LOAD, 2, 8) \
  TILE(NAME, LOAD, 4, 1) TILE(NAME, LOAD, 4, 2)
TILES(tile_f32, LOAD_F32)
TILES(tile_f16, LOAD_F16)
TILE_I8(2, 1) TILE_I8(2, 2) TILE_I8(2, 3) TILE_I8(2, 4) TILE_I8(2, 5) TILE_I8(2, 6) TILE_I8(2, 7) TILE_I8(2, 8)
TILE_I8(4, 1) TILE_I8(4, 2)
/* (AVX2's 7- and 8-row tiles, more rows than its MT, are compiled but never called: unused
 * static functions cost nothing.) */

#define DISPATCH(NAME, LD)                                                      \
  do {                                                                          \
    if (np == NP_FEW) {                                                         \
      if (m == 1) NAME##_4_1(w, pstride, k0, k1, xm, LD, am, first);            \
      else NAME##_4_2(w, pstride, k0, k1, xm, LD, am, first);                   \
    } else switch (m) {                                                         \
      case 1: NAME##_2_1(w, pstride, k0, k1, xm, LD, am, first); break;         \
      case 2: NAME##_2_2(w, pstride, k0, k1, xm, LD, am, first); break;         \
      case 3: NAME##_2_3(w, pstride, k0, k1, xm, LD, am, first); break;         \
      case 4: NAME##_2_4(w, pstride, k0, k1, xm, LD, am, first); break;         \
      case 5: NAME##_2_5(w, pstride, k0, k1, xm, LD, am, first); break;         \
      case 6: NAME##_2_6(w, pstride, k0, k1, xm, LD, am, first); break;         \
      case 7: NAME##_2_7(w, pstride, k0, k1, xm, LD, am, first); break;         \
      default: NAME##_2_8(w, pstride, k0, k1, xm, LD, am, first); break;        \
    }                                                                           \
  } while (0)

/* Outputs per panel, for matmul.py's packing. */
int llmos_panel_width(void) { return PW; }

static int element_size(int wtype) { return wtype == W_F32 ? 4 : wtype == W_F16 ? 2 : 1; }

/* Row i of x as int16 (q[i], K rounded up to even, the pad 0) and its scale: x ~ q * scale. */
static void quantize_rows(const float *x, long ldx, int M, int K, int16_t *q, long ldq, float *scales) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
#pragma omp parallel for if (M >= 8)
  for (int i = 0; i < M; i++) {
    const float *xi = x + (long)i * ldx;
    int16_t *qi = q + (long)i * ldq;
    __m256 peaks = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8) peaks = _mm256_max_ps(peaks, _mm256_and_ps(_mm256_loadu_ps(xi + k), magnitude));
    float lanes[8], peak = 0.0f;
    _mm256_storeu_ps(lanes, peaks);
    for (int j = 0; j < 8; j++) peak = lanes[j] > peak ? lanes[j] : peak;
    for (; k < K; k++) peak = fabsf(xi[k]) > peak ? fabsf(xi[k]) : peak;
    float factor = peak > 0.0f ? 32767.0f / peak : 0.0f;
    __m256 f = _mm256_set1_ps(factor);
    for (k = 0; k + 16 <= K; k += 16) {  /* round to nearest even, as lrintf; packs keeps lanes in 128-bit halves */
      __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xi + k), f));
      __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xi + k + 8), f));
      _mm256_storeu_si256((__m256i *)(qi + k), _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xd8));
    }
    for (; k < K; k++) qi[k] = (int16_t)lrintf(xi[k] * factor);
    for (; k < ldq; k++) qi[k] = 0;
    scales[i] = peak > 0.0f ? peak / 32767.0f : 0.0f;
  }
}

/* W: panels [Np/8][K][8] (int8: [Np/8][K'/2][8][2], K' = K rounded up to even) with Np = N
 * rounded up to 32; scale: [N] for int8, else NULL; x: [M][K] with row stride ldx; y, residual:
 * [M][N] contiguous; bias, residual may be NULL. Returns 0, or -1 when out of memory. */
int llmos_matmul(int wtype, const void *W, const float *scale, int N, int K, const float *x, long ldx, int M,
                 float *y, const float *bias, const float *residual) {
  int16_t *xq = NULL;
  float *row_scales = NULL;
  long ldq = (K + 1) & ~1;
  if (wtype == W_I8) {
    xq = malloc(sizeof(int16_t) * ldq * (M > 0 ? M : 1));
    row_scales = malloc(sizeof(float) * (M > 0 ? M : 1));
    if (!xq || !row_scales) {
      free(xq), free(row_scales);
      return -1;
    }
    quantize_rows(x, ldx, M, K, xq, ldq, row_scales);
    K = (int)ldq;
  }
  int np = M <= 2 ? NP_FEW : NP, width = np * PW;
  int mt = wtype == W_I8 ? MT_I8 : MT;
  int tiles = (N + width - 1) / width;
  long pstride = (long)K * PW;
  int esize = element_size(wtype);
  /* guided: each thread takes big runs of tiles first, then smaller ones, so a thread the OS
   * preempts (the daemon's HTTP thread and its clients share these cores) leaves its tail to
   * the other instead of holding the step at the barrier. Measured in the daemon, one row of
   * int8: the forward 5.3-5.4 -> 4.6-5.1 ms; alone the same as static. */
#pragma omp parallel for schedule(guided)
  for (int t = 0; t < tiles; t++) {
    const char *w = (const char *)W + (long)np * t * pstride * esize;
    int n0 = t * width, count = N - n0 < width ? N - n0 : width;
    float acc[MC * NP * PW] __attribute__((aligned(64)));
    for (int r0 = 0; r0 < M; r0 += MC) {
      int rows = M - r0 < MC ? M - r0 : MC;
      for (int k0 = 0; k0 < K; k0 += KB) {
        int k1 = k0 + KB < K ? k0 + KB : K, first = k0 == 0;
        for (int i0 = 0; i0 < rows; i0 += mt) {
          int m = rows - i0 < mt ? rows - i0 : mt;
          float *am = acc + i0 * width;
          if (wtype == W_I8) {
            const int16_t *xm = xq + (long)(r0 + i0) * ldq;
            DISPATCH(tile_i8, ldq);
          } else {
            const float *xm = x + (long)(r0 + i0) * ldx;
            if (wtype == W_F32) DISPATCH(tile_f32, ldx);
            else DISPATCH(tile_f16, ldx);
          }
        }
      }
      for (int i = 0; i < rows; i++) {
        const float *a = acc + i * width;
        long row = (long)(r0 + i) * N + n0;
        for (int j = 0; j < count; j++) {
          float v = scale ? a[j] * scale[n0 + j] : a[j];
          if (row_scales) v *= row_scales[r0 + i];
          if (bias) v += bias[n0 + j];
          if (residual) v += residual[row + j];
          y[row + j] = v;
        }
      }
    }
  }
  free(xq), free(row_scales);
  return 0;
}

/* Logits of rows that only need their argmax (greedy decoding), read from a half-size copy of
 * the fp32 head. y[M][N] gets, per row, the exact fp32 value of every output that could be the
 * largest and -inf elsewhere, so its argmax (the first, on ties) is the fp32 head's.
 *
 * screen: the head in fp16 panels; exact: the same head in fp32 panels; err[j] bounds, per unit
 * of |x|_1, how far output j's fp16 sum can be from its fp32 sum: the rounding of its weights
 * (max_k |w - w16|) plus both sums' rounding, which matmul.py works out at load. Output j can
 * be the largest only if y16_j + err_j |x|_1 >= max_i (y16_i - err_i |x|_1); those outputs are
 * summed again from the fp32 panels by the fp32 tiles' own sequence (fused multiply-adds over
 * k = 0..K-1), so their values are bit for bit the full head's. The screen reads half the bytes
 * (the head is a fifth of a 135M model's weights). Outputs in `banned` (end tokens of a request
 * that ignores them) come out -inf. Returns 0, or -1 when out of memory. */
int llmos_head_argmax(const void *screen, const float *exact, const float *err, int N, int K, const float *x, long ldx,
                      int M, const int32_t *banned, int nbanned, float *y) {
  if (llmos_matmul(W_F16, screen, NULL, N, K, x, ldx, M, y, NULL, NULL)) return -1;
#pragma omp parallel for schedule(dynamic, 1) if (M > 1)
  for (int i = 0; i < M; i++) {
    const float *xi = x + (long)i * ldx;
    float *yi = y + (long)i * N;
    for (int b = 0; b < nbanned; b++) yi[banned[b]] = -INFINITY; /* never picked: not candidates either */
    double norm = 0.0;
    for (int k = 0; k < K; k++) norm += fabs((double)xi[k]);
    float reach = (float)(norm * 1.0001), floor_ = -INFINITY;
#pragma omp simd reduction(max : floor_)
    for (int j = 0; j < N; j++) floor_ = fmaxf(floor_, yi[j] - err[j] * reach);
    for (int j = 0; j < N; j++) {
      if (!(yi[j] + err[j] * reach >= floor_)) {
        yi[j] = -INFINITY;
        continue;
      }
      const float *w = exact + (long)(j / PW) * K * PW + j % PW;
      float sum = 0.0f;
      for (int k = 0; k < K; k++) sum = fmaf(w[(long)k * PW], xi[k], sum);
      yi[j] = sum;
    }
  }
  return 0;
}
