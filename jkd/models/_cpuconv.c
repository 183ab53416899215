/* jkd.models._cpuconv: a direct float32 convolution for XLA:CPU, channels-last, as an XLA FFI
 * custom call (jkd.models.cpu_conv registers it and decides when it is used).
 *
 *   out[n, i, j, o] = sum_{a, b, c} pad(x)[n, i*sh + a, j*sw + b, c] * k[a, b, c, o]
 *
 * x (N, H, W, C), k (KH, KW, C, O) with O a multiple of 16, out (N, Ho, Wo, O); zero padding
 * (ph, pw) on both sides. Every image is first copied into a zero-padded scratch (it stays in L2),
 * then each output row is computed in tiles of P pixels x 16*NV channels held in AVX-512 registers:
 * for every tap and input channel, NV weight vectors are loaded once and each of the P input
 * values is broadcast against them. XLA's own convolution (Eigen image patches + a GEMM) packs the
 * patches first; this takes 1.47x less time on the image teacher's layers on one core, 2.07x on
 * two (python -m jkd.bench cpu-conv).
 *
 * Attributes (int64): stride_h, stride_w, pad_h, pad_w, threads (images are split over that many
 * threads).
 *
 * A second call, jkd_conv_kernel_grad, computes the kernel gradient of a stride-1 convolution with
 * 3-wide windows (below, `conv_grad`): 1.2-6x less time than XLA's convolution for it on one core. Built only on x86-64 with a compiler that knows AVX-512; usable only on CPUs that have
 * it (module constant AVX512, checked at run time).
 *
 * The XLA FFI C ABI (xla/ffi/api/c_api.h, stable and versioned) is declared below for the few
 * structures used, so building needs no jaxlib headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- the subset of the XLA FFI C API used here ---- */
typedef struct FfiExtension {
  size_t struct_size;
  int type;                                 /* 1 = metadata */
  struct FfiExtension *next;
} FfiExtension;
typedef struct { size_t struct_size; void *ext; int major, minor; } FfiVersion;
typedef struct { size_t struct_size; FfiVersion api_version; uint32_t traits; int64_t state_type; }
    FfiMetadata;
typedef struct { FfiExtension base; FfiMetadata *metadata; } FfiMetadataExtension;
typedef struct { size_t struct_size; void *ext; const char *message; int code; } FfiErrorArgs;
typedef void *(*FfiErrorCreate)(FfiErrorArgs *);
typedef struct {
  size_t struct_size;
  void *ext;
  FfiVersion api_version;
  const void *internal;
  FfiErrorCreate error_create;
} FfiApi;
typedef struct { size_t struct_size; void *ext; int dtype; void *data; int64_t rank; int64_t *dims; }
    FfiBuffer;
typedef struct { const char *ptr; size_t len; } FfiByteSpan;
typedef struct { int dtype; void *value; } FfiScalar;
typedef struct { size_t struct_size; void *ext; int64_t size; int *types; void **items; } FfiList;
typedef struct {
  size_t struct_size; void *ext; int64_t size; int *types; FfiByteSpan **names; void **attrs;
} FfiAttrs;
typedef struct {
  size_t struct_size;
  FfiExtension *extension_start;
  const FfiApi *api;
  void *ctx;
  int stage;                                /* 3 = execute */
  FfiList args;
  FfiList rets;
  FfiAttrs attrs;
  void *future;
} FfiCallFrame;
enum { FFI_F32 = 11, FFI_S64 = 5, FFI_ATTR_SCALAR = 3, FFI_EXECUTE = 3, FFI_METADATA = 1,
       FFI_INVALID_ARGUMENT = 3 };

/* ---- the kernel ---- */
typedef struct {
  const float *x, *k;
  float *out;
  long n, h, w, c, kh, kw, o, sh, sw, ph, pw, ho, wo;
} Conv;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_KERNEL 1
#define AVX512 __attribute__((target("avx512f")))
#define MAXP 16
#define UNROLL _Pragma("GCC unroll 32")

/* One tile: P output pixels from `in` (the first pixel's top-left tap in the padded image), NV
 * vectors of 16 output channels from `k` (already offset to the block), written to `out`. */
AVX512 static inline __attribute__((always_inline)) void tile(
    const Conv *cv, const float *in, long row, const float *k, float *out, const int P,
    const int NV) {
  __m512 acc[MAXP][4];
  UNROLL for (int p = 0; p < P; p++)
    UNROLL for (int v = 0; v < NV; v++) acc[p][v] = _mm512_setzero_ps();
  const long c_n = cv->c, o_n = cv->o, step = cv->sw * c_n;
  for (long a = 0; a < cv->kh; a++) {
    for (long b = 0; b < cv->kw; b++) {
      const float *px = in + a * row + b * c_n;
      const float *kp = k + (a * cv->kw + b) * c_n * o_n;
      for (long c = 0; c < c_n; c++) {
        __m512 w[4];
        UNROLL for (int v = 0; v < NV; v++) w[v] = _mm512_loadu_ps(kp + c * o_n + 16 * v);
        UNROLL for (int p = 0; p < P; p++) {
          __m512 s = _mm512_set1_ps(px[p * step + c]);
          UNROLL for (int v = 0; v < NV; v++) acc[p][v] = _mm512_fmadd_ps(s, w[v], acc[p][v]);
        }
      }
    }
  }
  UNROLL for (int p = 0; p < P; p++)
    UNROLL for (int v = 0; v < NV; v++) _mm512_storeu_ps(out + p * o_n + 16 * v, acc[p][v]);
}

/* The same for 3-wide windows at stride 1, where input pixel q feeds output pixels q, q-1, q-2:
 * each input value is broadcast once against the 3 taps' weights (up to 3 FMAs per broadcast
 * instead of 1; broadcasts, not FMAs, limit `tile` when NV = 1). */
AVX512 static inline __attribute__((always_inline)) void tile3(
    const Conv *cv, const float *in, long row, const float *k, float *out, const int P,
    const int NV) {
  __m512 acc[MAXP][4];
  UNROLL for (int p = 0; p < P; p++)
    UNROLL for (int v = 0; v < NV; v++) acc[p][v] = _mm512_setzero_ps();
  const long c_n = cv->c, o_n = cv->o;
  for (long a = 0; a < cv->kh; a++) {
    const float *px = in + a * row;
    const float *kp = k + a * 3 * c_n * o_n;
    for (long c = 0; c < c_n; c++) {
      __m512 w[3][4];
      UNROLL for (int b = 0; b < 3; b++)
        UNROLL for (int v = 0; v < NV; v++) w[b][v] = _mm512_loadu_ps(kp + (b * c_n + c) * o_n + 16 * v);
      UNROLL for (int q = 0; q < P + 2; q++) {
        __m512 s = _mm512_set1_ps(px[q * c_n + c]);
        UNROLL for (int b = 0; b < 3; b++) {
          int p = q - b;
          if (p < 0 || p >= P) continue;
          UNROLL for (int v = 0; v < NV; v++) acc[p][v] = _mm512_fmadd_ps(s, w[b][v], acc[p][v]);
        }
      }
    }
  }
  UNROLL for (int p = 0; p < P; p++)
    UNROLL for (int v = 0; v < NV; v++) _mm512_storeu_ps(out + p * o_n + 16 * v, acc[p][v]);
}

typedef void (*TileFn)(const Conv *, const float *, long, const float *, float *);
#define TILE(P, NV)                                                                          \
  AVX512 static void tile_##P##_##NV(const Conv *cv, const float *in, long row, const float *k, \
                                     float *out) {                                           \
    tile(cv, in, row, k, out, P, NV);                                                        \
  }
#define TILE3(P, NV)                                                                         \
  AVX512 static void tile3_##P##_##NV(const Conv *cv, const float *in, long row, const float *k, \
                                      float *out) {                                           \
    tile3(cv, in, row, k, out, P, NV);                                                        \
  }
TILE3(1, 1) TILE3(4, 1) TILE3(8, 1) TILE3(12, 1) TILE3(16, 1)
TILE3(1, 2) TILE3(4, 2) TILE3(6, 2) TILE3(8, 2) TILE3(12, 2)
TILE(1, 1) TILE(4, 1) TILE(8, 1) TILE(12, 1) TILE(16, 1)
TILE(1, 2) TILE(4, 2) TILE(6, 2) TILE(8, 2) TILE(12, 2)
TILE(1, 4) TILE(3, 4) TILE(4, 4) TILE(6, 4)

typedef struct { int p; TileFn fn; } Choice;
static const Choice kTiles1[] = {{16, tile_16_1}, {12, tile_12_1}, {8, tile_8_1}, {4, tile_4_1},
                                 {1, tile_1_1}};
static const Choice kTiles2[] = {{12, tile_12_2}, {8, tile_8_2}, {6, tile_6_2}, {4, tile_4_2},
                                 {1, tile_1_2}};
static const Choice kTiles3x1[] = {{16, tile3_16_1}, {12, tile3_12_1}, {8, tile3_8_1},
                                   {4, tile3_4_1}, {1, tile3_1_1}};
static const Choice kTiles3x2[] = {{12, tile3_12_2}, {8, tile3_8_2}, {6, tile3_6_2},
                                   {4, tile3_4_2}, {1, tile3_1_2}};
static const Choice kTiles4[] = {{6, tile_6_4}, {4, tile_4_4}, {3, tile_3_4}, {1, tile_1_4}};

/* The tile width for a row of `wo` pixels: the least work, counting the overlap of the last tile
 * (it is shifted back to end at the row's end) and ~3 pixels of fixed cost per tile (narrow tiles
 * reuse each weight load less); the widest on a tie. Measured on one core: 16 pixels x 1 vector for
 * 16 -> 16 channels at 64 x 64, 8 x 2 for 32 -> 32 at 32 x 32, 6 or 4 x 4 for 64 -> 64 at 16 x 16
 * (46-55, 92-103 and 89-104 GFLOP/s), against 45-48, 77 and 67-78 GFLOP/s with 4, 4 and 3 pixels. */
static Choice pick(const Choice *tiles, int count, long wo) {
  Choice best = tiles[count - 1];
  long best_cost = -1;
  for (int i = 0; i < count; i++) {
    if (tiles[i].p > wo) continue;
    long cost = (wo + tiles[i].p - 1) / tiles[i].p * (tiles[i].p + 3);
    if (best_cost < 0 || cost < best_cost) best = tiles[i], best_cost = cost;
  }
  return best;
}

AVX512 static void conv_images(const Conv *cv, long n0, long n1, float *pad) {
  const long hp = cv->h + 2 * cv->ph, wp = cv->w + 2 * cv->pw, c = cv->c, row = wp * c;
  const int nv = cv->o % 64 == 0 ? 4 : cv->o % 32 == 0 ? 2 : 1;
  const int by3 = cv->kw == 3 && cv->sw == 1 && nv < 4;
  const Choice t = nv == 4 ? pick(kTiles4, 4, cv->wo)
                 : nv == 2 ? pick(by3 ? kTiles3x2 : kTiles2, 5, cv->wo)
                           : pick(by3 ? kTiles3x1 : kTiles1, 5, cv->wo);
  memset(pad, 0, sizeof(float) * hp * row);
  for (long n = n0; n < n1; n++) {
    const float *xn = cv->x + n * cv->h * cv->w * c;
    for (long i = 0; i < cv->h; i++)
      memcpy(pad + ((i + cv->ph) * wp + cv->pw) * c, xn + i * cv->w * c, sizeof(float) * cv->w * c);
    float *on = cv->out + n * cv->ho * cv->wo * cv->o;
    for (long i = 0; i < cv->ho; i++) {
      const float *in_row = pad + i * cv->sh * row;
      float *out_row = on + i * cv->wo * cv->o;
      for (long ob = 0; ob < cv->o; ob += 16 * nv) {
        for (long j = 0; j < cv->wo; j += t.p) {
          long js = j + t.p <= cv->wo ? j : cv->wo - t.p;      /* the last tile ends at wo */
          t.fn(cv, in_row + js * cv->sw * c, row, cv->k + ob, out_row + js * cv->o + ob);
        }
      }
    }
  }
}

typedef struct { const Conv *cv; long n0, n1; int failed; } Job;

static void *run_job(void *arg) {
  Job *job = arg;
  const Conv *cv = job->cv;
  float *pad = malloc(sizeof(float) * (cv->h + 2 * cv->ph) * (cv->w + 2 * cv->pw) * cv->c);
  if (!pad) { job->failed = 1; return NULL; }
  conv_images(cv, job->n0, job->n1, pad);
  free(pad);
  return NULL;
}

static int conv(const Conv *cv, long threads) {
  if (threads > cv->n) threads = cv->n;
  if (threads < 1) threads = 1;
  if (threads > 64) threads = 64;
  Job jobs[64];
  pthread_t ids[64];
  int started[64] = {0}, failed = 0;
  for (long t = 0; t < threads; t++)
    jobs[t] = (Job){cv, cv->n * t / threads, cv->n * (t + 1) / threads, 0};
  for (long t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], NULL, run_job, &jobs[t]) == 0;
  for (long t = 1; t < threads; t++)
    if (!started[t]) run_job(&jobs[t]);                    /* no thread: do its share here */
  run_job(&jobs[0]);
  for (long t = 1; t < threads; t++) {
    if (started[t]) pthread_join(ids[t], NULL);
    failed |= jobs[t].failed;
  }
  return !(failed | jobs[0].failed);
}

/* The kernel's gradient of a stride-1 convolution with 3-wide windows:
 *   dk[a, b, c, o] = sum_{n, i, j} pad(x)[n, i + a, j + b, c] * g[n, i, j, o]
 * a reduction over every output pixel, kept in registers: 3 taps x 8 output channels of vectors
 * over 16 input channels; per pixel, 8 values of g are broadcast and the 3 taps' input vectors
 * loaded (3 FMAs per broadcast). Images go one at a time through the channel-padded scratch. */
typedef struct {
  const float *x, *g;
  float *dk;
  long n, h, w, c, kh, o, ph, pw, ho, wo;
} Grad;

AVX512 static void grad_block(const Grad *gd, const float *pad, long wp, long cp, long a, long cb,
                              long ob, const float *gn, float *acc_buf) {
  __m512 acc[3][8];
  float *slot = acc_buf + (a * (gd->o / 8) + ob / 8) * 24 * cp + cb * 16;
  UNROLL for (int b = 0; b < 3; b++)
    UNROLL for (int k = 0; k < 8; k++) acc[b][k] = _mm512_loadu_ps(slot + (b * 8 + k) * cp);
  for (long i = 0; i < gd->ho; i++) {
    const float *row = pad + ((i + a) * wp) * cp + cb * 16;
    const float *grow = gn + i * gd->wo * gd->o + ob;
    for (long j = 0; j < gd->wo; j++) {
      __m512 xv[3];
      UNROLL for (int b = 0; b < 3; b++) xv[b] = _mm512_loadu_ps(row + (j + b) * cp);
      UNROLL for (int k = 0; k < 8; k++) {
        __m512 gk = _mm512_set1_ps(grow[j * gd->o + k]);
        UNROLL for (int b = 0; b < 3; b++) acc[b][k] = _mm512_fmadd_ps(xv[b], gk, acc[b][k]);
      }
    }
  }
  UNROLL for (int b = 0; b < 3; b++)
    UNROLL for (int k = 0; k < 8; k++) _mm512_storeu_ps(slot + (b * 8 + k) * cp, acc[b][k]);
}

/* acc_buf: [kh][o/8][3][8][cp] floats, zeroed; returns 0 when out of memory. */
AVX512 static int conv_grad(const Grad *gd) {
  const long hp = gd->h + 2 * gd->ph, wp = gd->w + 2 * gd->pw, cp = (gd->c + 15) / 16 * 16;
  float *pad = calloc((size_t)(hp * wp * cp), sizeof(float));
  float *acc = calloc((size_t)(gd->kh * 3 * gd->o * cp), sizeof(float));
  if (!pad || !acc) { free(pad); free(acc); return 0; }
  for (long n = 0; n < gd->n; n++) {
    const float *xn = gd->x + n * gd->h * gd->w * gd->c;
    for (long i = 0; i < gd->h; i++)
      for (long j = 0; j < gd->w; j++)
        memcpy(pad + ((i + gd->ph) * wp + j + gd->pw) * cp, xn + (i * gd->w + j) * gd->c,
               sizeof(float) * gd->c);
    const float *gn = gd->g + n * gd->ho * gd->wo * gd->o;
    for (long a = 0; a < gd->kh; a++)
      for (long cb = 0; cb < cp / 16; cb++)
        for (long ob = 0; ob < gd->o; ob += 8) grad_block(gd, pad, wp, cp, a, cb, ob, gn, acc);
  }
  for (long a = 0; a < gd->kh; a++)                   /* [a][o/8][b][k][c] -> dk[a][b][c][o] */
    for (long b = 0; b < 3; b++)
      for (long c = 0; c < gd->c; c++)
        for (long o = 0; o < gd->o; o++)
          gd->dk[((a * 3 + b) * gd->c + c) * gd->o + o] =
              acc[((a * (gd->o / 8) + o / 8) * 24 + b * 8 + o % 8) * cp + c];
  free(pad);
  free(acc);
  return 1;
}

static int cpu_ok(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}
#else
#define HAVE_KERNEL 0
typedef struct { const float *x, *g; float *dk; long n, h, w, c, kh, o, ph, pw, ho, wo; } Grad;
static int conv(const Conv *cv, long threads) { (void)cv; (void)threads; return 0; }
static int conv_grad(const Grad *gd) { (void)gd; return 0; }
static int cpu_ok(void) { return 0; }
#endif

/* ---- the FFI handlers ---- */
static void *error(const FfiCallFrame *f, const char *message) {
  FfiErrorArgs args = {sizeof(FfiErrorArgs), NULL, message, FFI_INVALID_ARGUMENT};
  return f->api->error_create(&args);
}

static int attr(const FfiCallFrame *f, const char *name, long *out) {
  size_t len = strlen(name);
  for (int64_t i = 0; i < f->attrs.size; i++) {
    const FfiByteSpan *s = f->attrs.names[i];
    if (s->len != len || memcmp(s->ptr, name, len) || f->attrs.types[i] != FFI_ATTR_SCALAR) continue;
    const FfiScalar *v = f->attrs.attrs[i];
    if (v->dtype != FFI_S64) return 0;
    *out = (long)*(const int64_t *)v->value;
    return 1;
  }
  return 0;
}

/* What both handlers do first: answer XLA's metadata query (*done = 1), or check that this is an
 * execution on an AVX-512 CPU with 2 arguments and 1 result, all rank-4 float32 buffers (else an
 * error naming `usage`). */
static void *begin(FfiCallFrame *f, const char *usage, int *done) {
  *done = 0;
  if (f->extension_start && f->extension_start->type == FFI_METADATA) {
    FfiMetadata *m = ((FfiMetadataExtension *)f->extension_start)->metadata;
    /* Only fields present since API 0.1 are used: declare the runtime's own version. */
    m->api_version = (FfiVersion){sizeof(FfiVersion), NULL, 0, f->api->api_version.minor};
    m->traits = 0;
    *done = 1;
    return NULL;
  }
  if (f->stage != FFI_EXECUTE) return error(f, "jkd_conv: wrong execution stage");
  if (f->args.size != 2 || f->rets.size != 1) return error(f, usage);
  const FfiBuffer *buffers[3] = {f->args.items[0], f->args.items[1], f->rets.items[0]};
  for (int i = 0; i < 3; i++)
    if (buffers[i]->dtype != FFI_F32 || buffers[i]->rank != 4) return error(f, usage);
  if (!HAVE_KERNEL || !cpu_ok()) return error(f, "jkd_conv: this CPU has no AVX-512");
  return NULL;
}

static void *conv_handler(FfiCallFrame *f) {
  int done;
  void *err = begin(f, "jkd_conv: float32 x (N,H,W,C), kernel (KH,KW,C,O) -> out (N,Ho,Wo,O)",
                    &done);
  if (err || done) return err;
  const FfiBuffer *x = f->args.items[0], *k = f->args.items[1], *y = f->rets.items[0];
  Conv cv = {x->data, k->data, y->data, x->dims[0], x->dims[1], x->dims[2], x->dims[3],
             k->dims[0], k->dims[1], k->dims[3], 1, 1, 0, 0, y->dims[1], y->dims[2]};
  long threads = 1;
  if (!attr(f, "stride_h", &cv.sh) || !attr(f, "stride_w", &cv.sw) || !attr(f, "pad_h", &cv.ph) ||
      !attr(f, "pad_w", &cv.pw) || !attr(f, "threads", &threads))
    return error(f, "jkd_conv: int64 attributes stride_h, stride_w, pad_h, pad_w, threads");
  if (k->dims[2] != cv.c || y->dims[0] != cv.n || y->dims[3] != cv.o || cv.o % 16 || cv.sh < 1 ||
      cv.sw < 1 || cv.ho != (cv.h + 2 * cv.ph - cv.kh) / cv.sh + 1 ||
      cv.wo != (cv.w + 2 * cv.pw - cv.kw) / cv.sw + 1 || cv.ho < 1 || cv.wo < 1)
    return error(f, "jkd_conv: inconsistent shapes (O must be a multiple of 16)");
  if (!conv(&cv, threads)) return error(f, "jkd_conv: out of memory");
  return NULL;
}

/* jkd_conv_kernel_grad: (x (N,H,W,C), g (N,Ho,Wo,O)) -> dk (KH,3,C,O) of a stride-1 convolution;
 * attributes pad_h, pad_w; O a multiple of 8. One thread. */
static void *grad_handler(FfiCallFrame *f) {
  int done;
  void *err = begin(f, "jkd_conv_kernel_grad: float32 x (N,H,W,C), g (N,Ho,Wo,O) -> dk (KH,3,C,O)",
                    &done);
  if (err || done) return err;
  const FfiBuffer *x = f->args.items[0], *g = f->args.items[1], *k = f->rets.items[0];
  Grad gd = {x->data, g->data, k->data, x->dims[0], x->dims[1], x->dims[2], x->dims[3],
             k->dims[0], k->dims[3], 0, 0, g->dims[1], g->dims[2]};
  if (!attr(f, "pad_h", &gd.ph) || !attr(f, "pad_w", &gd.pw))
    return error(f, "jkd_conv_kernel_grad: int64 attributes pad_h, pad_w");
  if (g->dims[0] != gd.n || g->dims[3] != gd.o || k->dims[1] != 3 || k->dims[2] != gd.c ||
      gd.o % 8 || gd.ho != gd.h + 2 * gd.ph - gd.kh + 1 || gd.wo != gd.w + 2 * gd.pw - 2 ||
      gd.ho < 1 || gd.wo < 1)
    return error(f, "jkd_conv_kernel_grad: inconsistent shapes (3-wide window, stride 1, O % 8)");
  if (!conv_grad(&gd)) return error(f, "jkd_conv_kernel_grad: out of memory");
  return NULL;
}

static PyObject *conv_capsule(PyObject *self, PyObject *unused) {
  return PyCapsule_New((void *)conv_handler, NULL, NULL);
}

static PyObject *grad_capsule(PyObject *self, PyObject *unused) {
  return PyCapsule_New((void *)grad_handler, NULL, NULL);
}

static PyMethodDef methods[] = {
    {"handler", conv_capsule, METH_NOARGS, "The XLA FFI handler of jkd_conv, as a PyCapsule."},
    {"grad_handler", grad_capsule, METH_NOARGS,
     "The XLA FFI handler of jkd_conv_kernel_grad, as a PyCapsule."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpuconv",
                                    "Direct AVX-512 convolution for XLA:CPU (FFI custom call).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__cpuconv(void) {
  PyObject *m = PyModule_Create(&module);
  if (m && PyModule_AddIntConstant(m, "AVX512", HAVE_KERNEL && cpu_ok()) < 0) {
    Py_DECREF(m);
    return NULL;
  }
  return m;
}
