/* The functions our kernels export (native.py declares the same to ctypes). */
#pragma once
#include <stdint.h>

int llmos_matmul(int wtype, const void *W, const float *scale, int N, int K, const float *x, long ldx, int M,
                 float *y, const float *bias, const float *residual);
void llmos_decode_attention(const float *q, long q_stride, const float *new_kv, long kv_stride, float *keys,
                            float *values, long seat_stride, long head_stride, long pos_stride,
                            const int64_t *seats, const int32_t *lengths, int rows, int q_heads, int kv_heads,
                            int dim, float scale, float *out);
void llmos_rms_norm(const float *x, long ldx, const float *weight, int rows, int dim, float eps, float *out);
void llmos_rotary(float *x, long ldx, int rows, int heads, int dim, const float *cos, const float *sin,
                  const int64_t *positions);
void llmos_silu_mul(const float *x, long ldx, int rows, int width, float *out);
int llmos_head_argmax(const void *screen, const float *exact, const float *err, int N, int K, const float *x, long ldx,
                      int M, const int32_t *banned, int nbanned, float *y);
