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
    for (int p = 0; p < length; p++) {
      float s = dot(qh, k + p * pos_stride, dim) * scale;
      scores[p] = s;
      peak = s > peak ? s : peak;
    }
    for (int p = length; p < padded; p++) scores[p] = -INFINITY;  /* e^-inf: 0 */
    __m256 sums = _mm256_setzero_ps(), top = _mm256_set1_ps(peak);
    for (int p = 0; p < padded; p += 8) {
      __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_load_ps(scores + p), top));
      _mm256_store_ps(scores + p, e);
      sums = _mm256_add_ps(sums, e);
    }
    for (int d = 0; d < dim; d += 8) _mm256_storeu_ps(o + d, _mm256_setzero_ps());
    for (int p = 0; p < length; p++) {
      __m256 weight = _mm256_set1_ps(scores[p]);
      const float *vp = v + p * pos_stride;
      for (int d = 0; d < dim; d += 8)
        _mm256_storeu_ps(o + d, _mm256_fmadd_ps(weight, _mm256_loadu_ps(vp + d), _mm256_loadu_ps(o + d)));
    }
    __m256 inverse = _mm256_set1_ps(1.0f / hsum8(sums));
    for (int d = 0; d < dim; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), inverse));
    if (scores != stack) free(scores);
  }
}
