/* Every layer of a decode step in one call: the rows are decoders seated in the KV slab, one
 * token each (the common step once prompts are in). The same kernels as the per-op path
 * (llama.py calling matmul.c, attention.c and fused.c one by one), in the same order, so a
 * row's numbers do not depend on which path ran it; what goes is Python's ~10 calls per layer
 * (each a few microseconds of ctypes, tensor allocation and dispatch: ~300 a step, a tenth of
 * a one-row step on the machine this was written on). See fused.py's DecodeStack. */
#include <stdlib.h>

#include "kernels.h"

typedef struct {
  int kind; /* matmul.c's weight type */
  const void *weight;
  const float *scale, *bias;
  int out_features, in_features;
} Projection;

typedef struct {
  const float *input_norm, *post_norm;
  Projection qkv, o, gate_up, down;
} Layer;

typedef struct {
  int hidden, q_heads, kv_heads, dim, intermediate;
  float eps, attention_scale;
  const float *cos, *sin; /* [position][dim] tables, sin's first half negated */
} Shape;

static int project(const Projection *p, const float *x, int rows, float *y, const float *residual) {
  return llmos_matmul(p->kind, p->weight, p->scale, p->out_features, p->in_features, x, p->in_features, rows, y, p->bias,
               residual);
}

/* x [rows][hidden] is updated in place. The slab: layer l's keys at slab + l * layer_stride,
 * values value_offset further, seats/heads/positions strided as given. */
int llmos_decode_layers(const Shape *s, const Layer *layers, int count, float *x, int rows, const int64_t *positions,
                        float *slab, long layer_stride, long value_offset, long seat_stride, long head_stride,
                        long pos_stride, const int64_t *seats, const int32_t *lengths) {
  int qkv_width = (s->q_heads + 2 * s->kv_heads) * s->dim, attended = s->q_heads * s->dim;
  float *h = malloc(sizeof(float) * rows * s->hidden);
  float *qkv = malloc(sizeof(float) * rows * qkv_width);
  float *out = malloc(sizeof(float) * rows * attended);
  float *gate_up = malloc(sizeof(float) * rows * 2 * s->intermediate);
  float *act = malloc(sizeof(float) * rows * s->intermediate);
  int ok = h && qkv && out && gate_up && act, done = 0;
  for (int l = 0; ok && l < count; l++) {
    const Layer *L = layers + l;
    float *keys = slab + l * layer_stride;
    llmos_rms_norm(x, s->hidden, L->input_norm, rows, s->hidden, s->eps, h);
    if (project(&L->qkv, h, rows, qkv, NULL)) break;
    llmos_rotary(qkv, qkv_width, rows, s->q_heads + s->kv_heads, s->dim, s->cos, s->sin, positions);
    llmos_decode_attention(qkv, qkv_width, qkv + attended, qkv_width, keys, keys + value_offset, seat_stride,
                           head_stride, pos_stride, seats, lengths, rows, s->q_heads, s->kv_heads, s->dim,
                           s->attention_scale, out);
    if (project(&L->o, out, rows, x, x)) break; /* the residual add, in place: each element read then written once */
    llmos_rms_norm(x, s->hidden, L->post_norm, rows, s->hidden, s->eps, h);
    if (project(&L->gate_up, h, rows, gate_up, NULL)) break;
    llmos_silu_mul(gate_up, 2 * s->intermediate, rows, s->intermediate, act);
    if (project(&L->down, act, rows, x, x)) break;
    done = l + 1;
  }
  free(h), free(qkv), free(out), free(gate_up), free(act);
  return ok && done == count ? 0 : -1;
}
