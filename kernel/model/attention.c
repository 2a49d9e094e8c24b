/* Attention of decode rows (one query token each) against their caches, for attention.py.
 *
 * Why our own: at decode a row's attention is a few hundred dot products of 64 numbers per
 * head, and torch's fused CPU kernel spends far more than that in its setup; with a mask over
 * seats of different lengths it also reads every seat to the longest one. Measured on the
 * 2-core machine this was written on, SmolLM2-135M at 32 decode rows: 1.0 ms a layer in
 * torch's kernel. Here each (row, query head) is one task: it scores its kv head's first
 * `length` keys, softmaxes, and sums the values, in fp32 (a task per kv head instead left two
 * threads 2:1 loaded at one row: 3 kv heads); nothing past a row's length is read, and a row's
 * result depends on that row alone (batch invariance).
 *
 * The rows' new keys and values are stored first, at position length - 1, so a layer's decode
 * attention is one call.
 *
 * Layout: keys/values [seat][kv_head][position][dim] with the given strides (in floats);
 * q [row][q_head][dim] and new_kv [row][key, value][kv_head][dim] with rows q_stride and
 * kv_stride apart (views of the projection's output); out [row][q_head][dim] contiguous;
 * dim a multiple of 8.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"
#include "simd.h"


static inline float dot(const float *a, const float *b, int dim) {
  __m256 s = _mm256_setzero_ps();
  for (int d = 0; d < dim; d += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s);
  return hsum8(s);
}

/* q . k for 8 consecutive positions (stride apart): 8 sums of 8 lanes, then one transposing
 * reduction (hadd) instead of 8 horizontal sums. */
static inline __m256 scores8(const float *q, const float *k, long stride, int dim) {
  __m256 s[8];
  for (int j = 0; j < 8; j++) s[j] = _mm256_setzero_ps();
  for (int d = 0; d < dim; d += 8) {
    __m256 qd = _mm256_loadu_ps(q + d);
    for (int j = 0; j < 8; j++) s[j] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + j * stride + d), s[j]);
  }
  __m256 a = _mm256_hadd_ps(s[0], s[1]), b = _mm256_hadd_ps(s[2], s[3]);
  __m256 c = _mm256_hadd_ps(s[4], s[5]), e = _mm256_hadd_ps(s[6], s[7]);
  __m256 ab = _mm256_hadd_ps(a, b), ce = _mm256_hadd_ps(c, e);
  /* ab: [0 1 2 3 | 0 1 2 3] halves (low lanes from the low 128 bits), ce likewise for 4..7 */
  __m256 low = _mm256_permute2f128_ps(ab, ce, 0x20), high = _mm256_permute2f128_ps(ab, ce, 0x31);
  return _mm256_add_ps(low, high);
}

#define STACK_SCORES 8192

void llmos_decode_attention(const float *q, long q_stride, const float *new_kv, long kv_stride, float *keys,
                            float *values, long seat_stride, long head_stride, long pos_stride,
                            const int64_t *seats, const int32_t *lengths, int rows, int q_heads, int kv_heads,
                            int dim, float scale, float *out) {
  int rep = q_heads / kv_heads;
  for (int b = 0; b < rows; b++) /* store first: every query head of the row reads them */
    for (int h = 0; h < kv_heads; h++) {
      float *k = keys + seats[b] * seat_stride + h * head_stride + (long)(lengths[b] - 1) * pos_stride;
      float *v = values + seats[b] * seat_stride + h * head_stride + (long)(lengths[b] - 1) * pos_stride;
      const float *key = new_kv + b * kv_stride + h * dim, *value = key + kv_heads * dim;
      for (int d = 0; d < dim; d++) k[d] = key[d], v[d] = value[d];
    }
  /* One task per (row, query head): at one row a kv head per task left two threads 2:1 loaded. */
#pragma omp parallel for schedule(dynamic, 1)
  for (int task = 0; task < rows * q_heads; task++) {
    int b = task / q_heads, head = task % q_heads, h = head / rep, length = lengths[b];
    int padded = (length + 7) & ~7;
    const float *k = keys + seats[b] * seat_stride + h * head_stride;
    const float *v = values + seats[b] * seat_stride + h * head_stride;
    float stack[STACK_SCORES] __attribute__((aligned(32)));
    float *scores = padded <= STACK_SCORES ? stack : aligned_alloc(32, sizeof(float) * padded);
    const float *qh = q + b * q_stride + (long)head * dim;
    float *o = out + ((long)b * q_heads + head) * dim;
    float peak = -INFINITY;
    int p = 0;
    for (; p + 8 <= length; p += 8) { /* 8 positions at once: one reduction for the 8 sums */
      __m256 s = scores8(qh, k + p * pos_stride, pos_stride, dim);
      _mm256_store_ps(scores + p, _mm256_mul_ps(s, _mm256_set1_ps(scale)));
    }
    for (; p < length; p++) scores[p] = dot(qh, k + p * pos_stride, dim) * scale;
    for (p = 0; p < length; p++) peak = scores[p] > peak ? scores[p] : peak;
    for (p = length; p < padded; p++) scores[p] = -INFINITY; /* e^-inf: 0 */
    __m256 sums = _mm256_setzero_ps(), top = _mm256_set1_ps(peak);
    for (p = 0; p < padded; p += 8) {
      __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_load_ps(scores + p), top));
      _mm256_store_ps(scores + p, e);
      sums = _mm256_add_ps(sums, e);
    }
    if (dim == 64) { /* the common head size: the output stays in registers */
      __m256 acc[8];
      for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_ps();
      for (p = 0; p < length; p++) {
        __m256 weight = _mm256_set1_ps(scores[p]);
        const float *vp = v + p * pos_stride;
        for (int c = 0; c < 8; c++) acc[c] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(vp + 8 * c), acc[c]);
      }
      for (int c = 0; c < 8; c++) _mm256_storeu_ps(o + 8 * c, acc[c]);
    } else {
      for (int d = 0; d < dim; d += 8) _mm256_storeu_ps(o + d, _mm256_setzero_ps());
      for (p = 0; p < length; p++) {
        __m256 weight = _mm256_set1_ps(scores[p]);
        const float *vp = v + p * pos_stride;
        for (int d = 0; d < dim; d += 8)
          _mm256_storeu_ps(o + d, _mm256_fmadd_ps(weight, _mm256_loadu_ps(vp + d), _mm256_loadu_ps(o + d)));
      }
    }
    __m256 inverse = _mm256_set1_ps(1.0f / hsum8(sums));
    for (int d = 0; d < dim; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), inverse));
    if (scores != stack) free(scores);
  }
}
