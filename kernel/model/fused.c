/* The small per-row operations of a llama layer, each one call instead of torch's several:
 * RMSNorm (torch: pow, mean, add, rsqrt, two multiplies and dtype checks), rotary embedding
 * of q and k in place (a flip, two multiplies and an add), and SiLU(gate) * up. At a decode
 * step's few rows each torch op costs more in dispatch than in arithmetic (measured here:
 * RMSNorm 16 us a call at one row, 61 calls a step). fp32 throughout; see fused.py.
 */
#include <math.h>
#include <stdint.h>

#include "kernels.h"
#include "simd.h"

/* out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight; x rows ldx apart, out dense. */
void llmos_rms_norm(const float *x, long ldx, const float *weight, int rows, int dim, float eps, float *out) {
#pragma omp parallel for if (rows >= 16)
  for (int i = 0; i < rows; i++) {
    const float *xi = x + (long)i * ldx;
    float *oi = out + (long)i * dim;
    __m256 s = _mm256_setzero_ps();
    int d = 0;
    for (; d + 8 <= dim; d += 8) {
      __m256 v = _mm256_loadu_ps(xi + d);
      s = _mm256_fmadd_ps(v, v, s);
    }
    float squares = hsum8(s);
    for (; d < dim; d++) squares += xi[d] * xi[d];
    float inverse = 1.0f / sqrtf(squares / dim + eps);
    __m256 r = _mm256_set1_ps(inverse);
    for (d = 0; d + 8 <= dim; d += 8)
      _mm256_storeu_ps(oi + d, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xi + d), r), _mm256_loadu_ps(weight + d)));
    for (; d < dim; d++) oi[d] = xi[d] * inverse * weight[d];
  }
}

/* Rotary embedding, in place, on the first `heads` heads of each row (q's and k's, side by
 * side): x = x * cos + swap_halves(x) * sin, with cos/sin tables [position][dim] (sin's first
 * half negated: rotate_half's sign) read at each row's position. */
void llmos_rotary(float *x, long ldx, int rows, int heads, int dim, const float *cos, const float *sin,
                  const int64_t *positions) {
  int half = dim / 2;
#pragma omp parallel for if (rows >= 16)
  for (int i = 0; i < rows; i++) {
    const float *c = cos + positions[i] * dim, *s = sin + positions[i] * dim;
    for (int h = 0; h < heads; h++) {
      float *v = x + (long)i * ldx + (long)h * dim;
      int d = 0;
      for (; d + 8 <= half; d += 8) {
        __m256 a = _mm256_loadu_ps(v + d), b = _mm256_loadu_ps(v + half + d);
        __m256 na = _mm256_fmadd_ps(b, _mm256_loadu_ps(s + d), _mm256_mul_ps(a, _mm256_loadu_ps(c + d)));
        __m256 nb = _mm256_fmadd_ps(a, _mm256_loadu_ps(s + half + d), _mm256_mul_ps(b, _mm256_loadu_ps(c + half + d)));
        _mm256_storeu_ps(v + d, na);
        _mm256_storeu_ps(v + half + d, nb);
      }
      for (; d < half; d++) {
        float a = v[d], b = v[half + d];
        v[d] = a * c[d] + b * s[d];
        v[half + d] = b * c[half + d] + a * s[half + d];
      }
    }
  }
}

/* out[i] = silu(gate) * up where row i of x is [gate (width), up (width)]; silu(g) = g *
 * sigmoid(g), sigmoid from t = e^-|g| (never overflows): 1/(1+t) for g >= 0, t/(1+t) below. */
void llmos_silu_mul(const float *x, long ldx, int rows, int width, float *out) {
#pragma omp parallel for if (rows >= 16)
  for (int i = 0; i < rows; i++) {
    const float *g = x + (long)i * ldx, *u = g + width;
    float *o = out + (long)i * width;
    int d = 0;
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (; d + 8 <= width; d += 8) {
      __m256 gv = _mm256_loadu_ps(g + d);
      __m256 t = exp_nonpositive(_mm256_or_ps(gv, sign));  /* e^-|g| */
      __m256 numerator = _mm256_blendv_ps(one, t, gv);     /* g < 0 (sign bit set): t */
      __m256 sigmoid = _mm256_div_ps(numerator, _mm256_add_ps(one, t));
      _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_mul_ps(gv, sigmoid), _mm256_loadu_ps(u + d)));
    }
    for (; d < width; d++) o[d] = g[d] / (1.0f + expf(-g[d])) * u[d];
  }
}
