/*
 * Runs every kernel of libhodor_kernels at HODOR's real shapes (1/8 map 60x108, 1/4 map
 * 120x216; 9 background descriptors + 4 objects; history 1 and 8) in fp32, fp16 and bf16,
 * against a float64 reference computed here on the host. The deformable convolution runs on
 * a 16x24 map (its host reference is 2304 products per output), the runtime tail (fp32) on a
 * 64x96 padded frame shown at 45x70, with and without references.
 *
 * The id masks of the tail must equal the reference's except where the reference's two best
 * channels differ, by less than 1e-5 (fp32 rounding may order those either way); exact ties
 * (the zeros of an override) go to the lower channel in both.
 *
 * Relative error = max|out - ref| / max|ref| over the reference's finite entries (-inf
 * entries must match); limits fp32 1e-5, fp16 5e-3, bf16 2e-2, as in the Python tests.
 *
 * Exit status: 0 all passed, 1 a check failed, 2 setup error, 77 skipped (no CUDA driver or
 * no GPU: the conventional "skipped" code, which CTest is told about).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_driver.h"
#include "hodor_kernels.h"

#define SKIP 77
#define C 256
#define HEADS 8
#define HEAD_DIM 32
#define NUM_BG 9
#define NUM_OBJ 4

static hk_driver drv;
static int failures = 0;

/* ---- host data ------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double uniform(void) { /* xorshift64*, in [0, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}
static double normal(void) {
    double u = uniform() + 1e-12, v = uniform();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static uint16_t to_half(float f) { /* round to nearest even; HODOR's values stay in the normal range */
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffffu;
    if (exp <= 0) {
        return (uint16_t)sign; /* flush tiny values to zero */
    }
    if (exp >= 31) {
        return (uint16_t)(sign | 0x7c00u);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) {
        h += 1;
    }
    return (uint16_t)h;
}
static float from_half(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, x;
    if (exp == 0) {
        float f = ldexpf((float)mant, -24);
        return sign ? -f : f;
    }
    if (exp == 31) {
        x = sign | 0x7f800000u | (mant << 13);
    } else {
        x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}
static uint16_t to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}
static float from_bf16(uint16_t b) {
    uint32_t x = (uint32_t)b << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* A tensor of the call's dtype: `values` holds what the device sees (already rounded). */
typedef struct tensor {
    size_t n;
    double *values;
    CUdeviceptr dev;
} tensor;

static size_t esize(hodor_dtype dt) { return dt == HODOR_F32 ? 4 : 2; }

static void check_cuda(CUresult rc, const char *what) {
    if (rc != CUDA_SUCCESS) {
        const char *name = "?";
        drv.cuGetErrorName(rc, &name);
        fprintf(stderr, "setup error: %s: %s\n", what, name);
        exit(2);
    }
}

static double round_to(hodor_dtype dt, double x) {
    return dt == HODOR_F32 ? (double)(float)x : dt == HODOR_F16 ? from_half(to_half((float)x)) : from_bf16(to_bf16((float)x));
}

static void upload(tensor *t, hodor_dtype dt) {
    size_t bytes = t->n * esize(dt);
    void *host = malloc(bytes ? bytes : 1);
    for (size_t i = 0; i < t->n; ++i) {
        float f = (float)t->values[i];
        if (dt == HODOR_F32) {
            ((float *)host)[i] = f;
        } else if (dt == HODOR_F16) {
            ((uint16_t *)host)[i] = to_half(f);
        } else {
            ((uint16_t *)host)[i] = to_bf16(f);
        }
    }
    check_cuda(drv.cuMemAlloc(&t->dev, bytes ? bytes : 16), "cuMemAlloc");
    check_cuda(drv.cuMemcpyHtoD(t->dev, host, bytes), "cuMemcpyHtoD");
    free(host);
}

static tensor random_tensor(size_t n, hodor_dtype dt, int uniform01) {
    tensor t = {n, malloc(n * sizeof(double)), 0};
    for (size_t i = 0; i < n; ++i) {
        t.values[i] = round_to(dt, uniform01 ? uniform() : normal());
    }
    upload(&t, dt);
    return t;
}

static tensor output(size_t n, hodor_dtype dt) {
    tensor t = {n, calloc(n, sizeof(double)), 0};
    check_cuda(drv.cuMemAlloc(&t.dev, n * esize(dt)), "cuMemAlloc");
    check_cuda(drv.cuMemsetD8(t.dev, 0, n * esize(dt)), "cuMemsetD8");
    return t;
}

static void download(tensor *t, hodor_dtype dt) {
    size_t bytes = t->n * esize(dt);
    void *host = malloc(bytes);
    check_cuda(drv.cuCtxSynchronize(), "kernel execution");
    check_cuda(drv.cuMemcpyDtoH(host, t->dev, bytes), "cuMemcpyDtoH");
    for (size_t i = 0; i < t->n; ++i) {
        t->values[i] = dt == HODOR_F32   ? ((float *)host)[i]
                       : dt == HODOR_F16 ? from_half(((uint16_t *)host)[i])
                                         : from_bf16(((uint16_t *)host)[i]);
    }
    free(host);
}

static CUdeviceptr upload_bytes(const void *data, size_t bytes) {
    CUdeviceptr p;
    check_cuda(drv.cuMemAlloc(&p, bytes ? bytes : 16), "cuMemAlloc");
    check_cuda(drv.cuMemcpyHtoD(p, data, bytes), "cuMemcpyHtoD");
    return p;
}

static void release(tensor *t) {
    drv.cuMemFree(t->dev);
    free(t->values);
}

static const char *dtype_name(hodor_dtype dt) { return dt == HODOR_F32 ? "fp32" : dt == HODOR_F16 ? "fp16" : "bf16"; }
static double tolerance(hodor_dtype dt) { return dt == HODOR_F32 ? 1e-5 : dt == HODOR_F16 ? 5e-3 : 2e-2; }

static void compare(const char *what, hodor_dtype dt, const double *out, const double *ref, size_t n) {
    double err = 0.0, scale = 0.0;
    size_t mismatched_inf = 0;
    for (size_t i = 0; i < n; ++i) {
        if (isinf(ref[i]) || isinf(out[i]) || isnan(out[i])) {
            mismatched_inf += !(isinf(ref[i]) && out[i] == ref[i]);
            continue;
        }
        err = fmax(err, fabs(out[i] - ref[i]));
        scale = fmax(scale, fabs(ref[i]));
    }
    double rel = scale > 0 ? err / scale : err;
    int ok = mismatched_inf == 0 && rel <= tolerance(dt);
    printf("%-4s %-48s %-4s rel err %.2e (limit %.0e)%s\n", ok ? "ok" : "FAIL", what, dtype_name(dt), rel,
           tolerance(dt), mismatched_inf ? ", non-finite entries differ" : "");
    failures += !ok;
}

static void must(hodor_kernels *hk, hodor_status st, const char *what) {
    if (st != HODOR_OK) {
        fprintf(stderr, "%s: %s: %s\n", what, hodor_status_string(st), hodor_kernels_last_error(hk));
        exit(2);
    }
}

/* ---- the checks -------------------------------------------------------------------------- */

static void check_soft_masked_attention(hodor_kernels *hk, hodor_dtype dt) {
    const int nq = NUM_BG + NUM_OBJ, n = 60 * 108;
    tensor q = random_tensor((size_t)nq * C, dt, 0), k = random_tensor((size_t)n * C, dt, 0),
           v = random_tensor((size_t)n * C, dt, 0);
    tensor mask = {(size_t)nq * n, malloc((size_t)nq * n * sizeof(double)), 0};
    for (size_t i = 0; i < mask.n; ++i) {
        mask.values[i] = (double)(float)uniform();
    }
    for (int i = 0; i < n; ++i) { /* edge rows: a descriptor seeing nothing, one seeing everything */
        mask.values[i] = 0.0;
        mask.values[(size_t)(nq - 1) * n + i] = 1.0;
    }
    upload(&mask, HODOR_F32);
    const double scales[HEADS] = {32, 32, 16, 16, 8, 8, 4, 4};
    float scales_f[HEADS];
    for (int h = 0; h < HEADS; ++h) {
        scales_f[h] = (float)scales[h];
    }
    CUdeviceptr scale = upload_bytes(scales_f, sizeof(scales_f));
    tensor out = output((size_t)nq * C, dt);
    size_t ws_bytes = hodor_soft_masked_attention_workspace_size(hk, 1, nq, n, dt);
    CUdeviceptr ws;
    check_cuda(drv.cuMemAlloc(&ws, ws_bytes), "cuMemAlloc");
    must(hk, hodor_soft_masked_attention(hk, NULL, dt, q.dev, k.dev, v.dev, mask.dev, scale, out.dev, ws, ws_bytes, 1,
                                         nq, n),
         "hodor_soft_masked_attention");
    download(&out, dt);

    double *ref = calloc((size_t)nq * C, sizeof(double)), *logits = malloc((size_t)n * sizeof(double));
    for (int h = 0; h < HEADS; ++h) {
        for (int i = 0; i < nq; ++i) {
            double mx = -INFINITY, sum = 0.0;
            for (int j = 0; j < n; ++j) {
                double s = 0.0;
                for (int d = 0; d < HEAD_DIM; ++d) {
                    s += q.values[(size_t)i * C + h * HEAD_DIM + d] * k.values[(size_t)j * C + h * HEAD_DIM + d];
                }
                logits[j] = s / sqrt((double)HEAD_DIM) - (1.0 - mask.values[(size_t)i * n + j]) * scales[h];
                mx = fmax(mx, logits[j]);
            }
            for (int j = 0; j < n; ++j) {
                logits[j] = exp(logits[j] - mx);
                sum += logits[j];
            }
            for (int j = 0; j < n; ++j) {
                for (int d = 0; d < HEAD_DIM; ++d) {
                    ref[(size_t)i * C + h * HEAD_DIM + d] += logits[j] / sum * v.values[(size_t)j * C + h * HEAD_DIM + d];
                }
            }
        }
    }
    compare("soft_masked_attention 60x108, 13 descriptors", dt, out.values, ref, out.n);
    free(ref);
    free(logits);
    drv.cuMemFree(ws);
    drv.cuMemFree(scale);
    release(&q), release(&k), release(&v), release(&mask), release(&out);
}

static void check_pixel_descriptor_attention(hodor_kernels *hk, hodor_dtype dt, int history) {
    const int n = 60 * 108, nk = (NUM_BG + NUM_OBJ) * history;
    tensor q = random_tensor((size_t)n * C, dt, 0), k = random_tensor((size_t)nk * C, dt, 0),
           v = random_tensor((size_t)nk * C, dt, 0);
    uint8_t *invalid = calloc((size_t)nk, 1);
    for (int j = 0; j < nk; ++j) { /* as at a decode step: the newest slot holds no background */
        invalid[j] = (j % history == history - 1) && j >= NUM_OBJ * history;
    }
    CUdeviceptr inv = upload_bytes(invalid, (size_t)nk);
    tensor out = output((size_t)n * C, dt);
    must(hk, hodor_pixel_descriptor_attention(hk, NULL, dt, q.dev, k.dev, v.dev, inv, out.dev, 1, n, nk),
         "hodor_pixel_descriptor_attention");
    download(&out, dt);

    double *ref = calloc((size_t)n * C, sizeof(double)), *w = malloc((size_t)nk * sizeof(double));
    for (int i = 0; i < n; ++i) {
        for (int h = 0; h < HEADS; ++h) {
            double mx = -INFINITY, sum = 0.0;
            for (int j = 0; j < nk; ++j) {
                double s = 0.0;
                for (int d = 0; d < HEAD_DIM; ++d) {
                    s += q.values[(size_t)i * C + h * HEAD_DIM + d] * k.values[(size_t)j * C + h * HEAD_DIM + d];
                }
                w[j] = invalid[j] ? -INFINITY : s / sqrt((double)HEAD_DIM);
                mx = fmax(mx, w[j]);
            }
            for (int j = 0; j < nk; ++j) {
                w[j] = invalid[j] ? 0.0 : exp(w[j] - mx);
                sum += w[j];
            }
            for (int j = 0; j < nk; ++j) {
                for (int d = 0; d < HEAD_DIM; ++d) {
                    ref[(size_t)i * C + h * HEAD_DIM + d] += w[j] / sum * v.values[(size_t)j * C + h * HEAD_DIM + d];
                }
            }
        }
    }
    char what[96];
    snprintf(what, sizeof(what), "pixel_descriptor_attention 60x108, %d keys", nk);
    compare(what, dt, out.values, ref, out.n);
    free(ref), free(w), free(invalid);
    drv.cuMemFree(inv);
    release(&q), release(&k), release(&v), release(&out);
}

static void check_mask_logits(hodor_kernels *hk, hodor_dtype dt, int history) {
    const int qd = NUM_BG + NUM_OBJ, p = 120 * 216, out_channels = 1 + qd;
    tensor f = random_tensor((size_t)C * p, dt, 0), d = random_tensor((size_t)qd * history * C, dt, 0);
    uint8_t *invalid = calloc((size_t)qd * history, 1);
    for (int t = 0; t < history; ++t) {
        invalid[1 * history + t] = 1; /* a descriptor with no valid entry: -inf */
    }
    for (int i = 0; i < NUM_BG; ++i) {
        invalid[i * history + history - 1] |= history > 1; /* no background in the newest slot */
    }
    CUdeviceptr inv = upload_bytes(invalid, (size_t)qd * history);
    tensor out = output((size_t)out_channels * p, dt);
    must(hk, hodor_mask_logits(hk, NULL, dt, f.dev, d.dev, inv, out.dev, 1, qd, history, p, out_channels, 1),
         "hodor_mask_logits");
    download(&out, dt);

    double *ref = calloc((size_t)out_channels * p, sizeof(double)), *col = malloc(C * sizeof(double));
    for (int x = 0; x < p; ++x) {
        for (int c = 0; c < C; ++c) {
            col[c] = f.values[(size_t)c * p + x];
        }
        for (int i = 0; i < qd; ++i) {
            double best = -INFINITY;
            for (int t = 0; t < history; ++t) {
                if (invalid[i * history + t]) {
                    continue;
                }
                const double *dv = &d.values[((size_t)i * history + t) * C];
                double s = 0.0;
                for (int c = 0; c < C; ++c) {
                    s += dv[c] * col[c];
                }
                best = fmax(best, s / 16.0);
            }
            ref[(size_t)(1 + i) * p + x] = best;
        }
    }
    /* Channel 0 belongs to the caller (the catch-all map): the kernel must leave it alone. */
    char what[96];
    snprintf(what, sizeof(what), "mask_logits 120x216, 13 descriptors, history %d", history);
    compare(what, dt, out.values, ref, out.n);
    free(ref), free(col), free(invalid);
    drv.cuMemFree(inv);
    release(&f), release(&d), release(&out);
}

static void check_masked_avg_pool(hodor_kernels *hk, hodor_dtype dt) {
    const int m = NUM_BG + NUM_OBJ, n = 60 * 108;
    tensor f = random_tensor((size_t)C * n, dt, 0);
    tensor masks = {(size_t)m * n, malloc((size_t)m * n * sizeof(double)), 0};
    for (size_t i = 0; i < masks.n; ++i) {
        masks.values[i] = (double)(float)uniform();
    }
    for (int x = 0; x < n; ++x) {
        masks.values[(size_t)0 * n + x] = 0.2;          /* empty background cell: zeros */
        masks.values[(size_t)1 * n + x] = 1.0;          /* full background cell: mean of all */
        masks.values[(size_t)NUM_BG * n + x] = 0.0;     /* all-zero object: first pixel */
        masks.values[(size_t)(NUM_BG + 1) * n + x] = 0.3; /* empty object: its (first) arg-max */
    }
    masks.values[(size_t)(NUM_BG + 1) * n + 777] = 0.45;
    masks.values[(size_t)(NUM_BG + 1) * n + 4000] = 0.45;
    upload(&masks, HODOR_F32);
    tensor out = output((size_t)m * C, dt);
    size_t ws_bytes = hodor_masked_avg_pool_workspace_size(hk, 1, m, n, dt);
    CUdeviceptr ws;
    check_cuda(drv.cuMemAlloc(&ws, ws_bytes), "cuMemAlloc");
    must(hk, hodor_masked_avg_pool(hk, NULL, dt, f.dev, masks.dev, out.dev, ws, ws_bytes, 1, m, n, NUM_BG),
         "hodor_masked_avg_pool");
    download(&out, dt);

    double *ref = calloc((size_t)m * C, sizeof(double));
    for (int i = 0; i < m; ++i) {
        int count = 0, arg = 0;
        double best = -INFINITY;
        for (int x = 0; x < n; ++x) {
            double mv = masks.values[(size_t)i * n + x];
            if (mv > best) {
                best = mv, arg = x;
            }
            if (mv > 0.5) {
                ++count;
                for (int c = 0; c < C; ++c) {
                    ref[(size_t)i * C + c] += f.values[(size_t)c * n + x];
                }
            }
        }
        for (int c = 0; c < C; ++c) {
            ref[(size_t)i * C + c] = count   ? ref[(size_t)i * C + c] / count
                                     : i >= NUM_BG ? f.values[(size_t)c * n + arg]
                                                   : 0.0;
        }
    }
    compare("masked_avg_pool 60x108, 13 masks with fallbacks", dt, out.values, ref, out.n);
    free(ref);
    drv.cuMemFree(ws);
    release(&f), release(&masks), release(&out);
}

static void check_deform_conv(hodor_kernels *hk, hodor_dtype dt) {
    const int h = 16, w = 24, p = h * w;
    tensor x = random_tensor((size_t)p * C, dt, 0); /* [H,W,C] channels last */
    tensor off = {(size_t)18 * p, malloc((size_t)18 * p * sizeof(double)), 0};
    for (size_t i = 0; i < off.n; ++i) {
        off.values[i] = round_to(dt, 3.0 * normal());
    }
    for (int i = 0; i < p; ++i) { /* tap 8 of every other pixel far outside: zeros */
        off.values[(size_t)16 * p + i] += (i % 2) ? 1000.0 : 0.0;
    }
    upload(&off, dt);
    tensor wt = {(size_t)9 * C * C, malloc((size_t)9 * C * C * sizeof(double)), 0}; /* [9*C, O] */
    for (size_t i = 0; i < wt.n; ++i) {
        wt.values[i] = round_to(dt, normal() / 48.0);
    }
    upload(&wt, dt);
    tensor bias = random_tensor(C, dt, 0);
    tensor out = output((size_t)C * p, dt);
    must(hk, hodor_deform_conv3x3(hk, NULL, dt, x.dev, off.dev, wt.dev, bias.dev, out.dev, 1, h, w),
         "hodor_deform_conv3x3");
    download(&out, dt);

    double *ref = malloc((size_t)C * p * sizeof(double)), *col = malloc((size_t)9 * C * sizeof(double));
    for (int y = 0; y < h; ++y) {
        for (int xx = 0; xx < w; ++xx) {
            for (int k = 0; k < 9; ++k) {
                double py = y - 1 + k / 3 + off.values[(size_t)(2 * k) * p + y * w + xx];
                double px = xx - 1 + k % 3 + off.values[(size_t)(2 * k + 1) * p + y * w + xx];
                double y0 = floor(py), x0 = floor(px), ly = py - y0, lx = px - x0;
                for (int c = 0; c < C; ++c) {
                    double v = 0.0;
                    for (int cy = 0; cy < 2; ++cy) {
                        for (int cx = 0; cx < 2; ++cx) {
                            double yy = y0 + cy, xc = x0 + cx;
                            if (yy < 0 || yy >= h || xc < 0 || xc >= w) {
                                continue;
                            }
                            double wgt = (cy ? ly : 1 - ly) * (cx ? lx : 1 - lx);
                            v += wgt * x.values[((size_t)yy * w + (size_t)xc) * C + c];
                        }
                    }
                    /* The kernel rounds the sampled columns to the call's dtype, as the model does. */
                    col[(size_t)k * C + c] = round_to(dt, v);
                }
            }
            for (int o = 0; o < C; ++o) {
                double s = bias.values[o];
                for (int r = 0; r < 9 * C; ++r) {
                    s += col[r] * wt.values[(size_t)r * C + o];
                }
                ref[(size_t)o * p + y * w + xx] = s;
            }
        }
    }
    compare("deform_conv3x3 16x24, 256 -> 256 channels", dt, out.values, ref, out.n);
    free(ref), free(col);
    release(&x), release(&off), release(&wt), release(&bias), release(&out);
}

/* ---- the runtime tail: a float64 transcription of the runtime's torch code ----------------- */

#define TQ (NUM_BG + 1 + NUM_OBJ) /* catch-all, background cells, objects */
#define T_H4 16
#define T_W4 24
#define T_HP 64
#define T_WP 96
#define T_RH 60
#define T_RW 93
#define T_FH 45
#define T_FW 70

/* PyTorch's bilinear source index (align_corners=False) for a resize by size. */
static void source(int dst, int in, int out, int *i0, int *i1, double *l1) {
    double src = (double)((float)in / (float)out) * (dst + 0.5) - 0.5;
    src = src < 0 ? 0 : src;
    *i0 = (int)src;
    *i1 = *i0 < in - 1 ? *i0 + 1 : *i0;
    *l1 = src - *i0;
}

/* Bilinear resize of a [q, ih, iw] map to [q, oh, ow]. */
static double *resize(const double *in, int q, int ih, int iw, int oh, int ow) {
    double *out = malloc((size_t)q * oh * ow * sizeof(double));
    for (int y = 0; y < oh; ++y) {
        int y0, y1;
        double ly;
        source(y, ih, oh, &y0, &y1, &ly);
        for (int x = 0; x < ow; ++x) {
            int x0, x1;
            double lx;
            source(x, iw, ow, &x0, &x1, &lx);
            for (int c = 0; c < q; ++c) {
                const double *m = in + (size_t)c * ih * iw;
                out[((size_t)c * oh + y) * ow + x] = (1 - ly) * ((1 - lx) * m[y0 * iw + x0] + lx * m[y0 * iw + x1]) +
                                                     ly * ((1 - lx) * m[y1 * iw + x0] + lx * m[y1 * iw + x1]);
            }
        }
    }
    return out;
}

static void softmax_channels(double *m, int q, int n) {
    for (int i = 0; i < n; ++i) {
        double mx = -INFINITY, sum = 0.0;
        for (int c = 0; c < q; ++c) {
            mx = fmax(mx, m[(size_t)c * n + i]);
        }
        for (int c = 0; c < q; ++c) {
            sum += exp(m[(size_t)c * n + i] - mx);
        }
        for (int c = 0; c < q; ++c) {
            m[(size_t)c * n + i] = exp(m[(size_t)c * n + i] - mx) / sum;
        }
    }
}

static void override(double *m, int q, int n, const int32_t *labels, const uint8_t *is_ref) {
    for (int i = 0; i < n; ++i) {
        for (int c = 0; c < q; ++c) {
            double *v = &m[(size_t)c * n + i];
            *v = is_ref[c] ? (labels[i] == c) : labels[i] >= 0 ? 0.0 : *v;
        }
    }
}

static void check_tail(hodor_kernels *hk, int with_refs) {
    const int nb = 1 + NUM_BG, n4 = T_H4 * T_W4, np = T_HP * T_WP, nf = T_FH * T_FW;
    const int h8 = T_HP / 8, w8 = T_WP / 8, n8 = h8 * w8;
    tensor logits = {(size_t)TQ * n4, malloc((size_t)TQ * n4 * sizeof(double)), 0};
    for (int c = 0; c < TQ; ++c) { /* noise, and a bright blob per channel */
        double cy = uniform() * T_H4, cx = uniform() * T_W4;
        for (int i = 0; i < n4; ++i) {
            double dy = i / T_W4 - cy, dx = i % T_W4 - cx;
            logits.values[(size_t)c * n4 + i] = (double)(float)(normal() + 6.0 * exp(-(dy * dy + dx * dx) / 8.0));
        }
    }
    upload(&logits, HODOR_F32);
    int32_t *labels = malloc((size_t)np * sizeof(int32_t));
    uint8_t is_ref[TQ] = {0}, hidden[TQ] = {0}, ids[TQ] = {0};
    uint8_t *user = calloc((size_t)nf, 1);
    for (int c = nb; c < TQ; ++c) {
        ids[c] = (uint8_t)(10 + c - nb);
    }
    for (int i = 0; i < np; ++i) { /* two overlapping references: objects 0, then 1 */
        int y = i / T_WP, x = i % T_WP;
        labels[i] = -1;
        if (with_refs && y >= 8 && y < 40 && x >= 4 && x < 50) {
            labels[i] = nb + 0;
        }
        if (with_refs && y >= 30 && x >= 40) {
            labels[i] = nb + 1;
        }
    }
    if (with_refs) {
        is_ref[nb] = is_ref[nb + 1] = 1;
        hidden[nb + 1] = hidden[nb + 3] = 1; /* annotated: 1 (referenced) and 3 (too small to keep) */
        for (int i = 0; i < nf; ++i) {
            user[i] = (i / T_FW >= 25 && i % T_FW >= 30) ? ids[nb + 1] : 0;
        }
    }
    CUdeviceptr d_labels = upload_bytes(labels, (size_t)np * sizeof(int32_t));
    CUdeviceptr d_is_ref = upload_bytes(is_ref, TQ), d_hidden = upload_bytes(hidden, TQ);
    CUdeviceptr d_ids = upload_bytes(ids, TQ), d_user = upload_bytes(user, (size_t)nf);
    CUdeviceptr d_out;
    check_cuda(drv.cuMemAlloc(&d_out, (size_t)nf), "cuMemAlloc");
    check_cuda(drv.cuMemsetD8(d_out, 0, (size_t)nf), "cuMemsetD8");
    tensor grid = {(size_t)NUM_BG * n8, malloc((size_t)NUM_BG * n8 * sizeof(double)), 0};
    for (int k = 0; k < NUM_BG; ++k) { /* the 3x3 grid cut of the runtime */
        for (int i = 0; i < n8; ++i) {
            int r = (i / w8) / (h8 / 3), cc = (i % w8) / (w8 / 3);
            grid.values[(size_t)k * n8 + i] = (r > 2 ? 2 : r) * 3 + (cc > 2 ? 2 : cc) == k;
        }
    }
    upload(&grid, HODOR_F32);
    tensor fg = output((size_t)NUM_OBJ * n8, HODOR_F32), bg = output((size_t)NUM_BG * n8, HODOR_F32);

    CUdeviceptr r_labels = with_refs ? d_labels : 0, r_is_ref = with_refs ? d_is_ref : 0;
    must(hk, hodor_output_id_mask(hk, NULL, logits.dev, r_labels, r_is_ref, with_refs ? d_hidden : 0,
                                  with_refs ? d_user : 0, d_ids, d_out, TQ, T_H4, T_W4, T_HP, T_WP, T_RH, T_RW,
                                  T_FH, T_FW),
         "hodor_output_id_mask");
    must(hk, hodor_encoder_masks(hk, NULL, logits.dev, r_labels, r_is_ref, grid.dev, fg.dev, bg.dev, TQ, nb, NUM_BG,
                                 T_H4, T_W4, T_HP, T_WP, h8, w8),
         "hodor_encoder_masks");
    uint8_t *out = malloc((size_t)nf);
    check_cuda(drv.cuCtxSynchronize(), "kernel execution");
    check_cuda(drv.cuMemcpyDtoH(out, d_out, (size_t)nf), "cuMemcpyDtoH");
    download(&fg, HODOR_F32), download(&bg, HODOR_F32);

    /* Output path: x4, softmax, override, crop, resize to the frame, hide, arg-max, ids, user mask. */
    double *up = resize(logits.values, TQ, T_H4, T_W4, T_HP, T_WP);
    softmax_channels(up, TQ, np);
    override(up, TQ, np, labels, is_ref);
    double *crop = malloc((size_t)TQ * T_RH * T_RW * sizeof(double));
    for (int c = 0; c < TQ; ++c) {
        for (int y = 0; y < T_RH; ++y) {
            memcpy(&crop[((size_t)c * T_RH + y) * T_RW], &up[((size_t)c * T_HP + y) * T_WP], T_RW * sizeof(double));
        }
    }
    double *frame = resize(crop, TQ, T_RH, T_RW, T_FH, T_FW);
    int differ = 0, near_ties = 0, shown = 0;
    for (int i = 0; i < nf; ++i) {
        int best = 0;
        double top = -INFINITY, second = -INFINITY;
        for (int c = 0; c < TQ; ++c) {
            double v = hidden[c] ? -1.0 : frame[(size_t)c * nf + i];
            if (v > top) {
                second = top, top = v, best = c;
            } else if (v > second) {
                second = v;
            }
        }
        int want = user[i] ? user[i] : ids[best];
        shown += want != 0;
        if (out[i] != want) {
            if (top > second && top - second < 1e-5) { /* exact ties (zeros of an override) must match */
                ++near_ties;
            } else {
                ++differ;
            }
        }
    }
    int ok = differ == 0 && shown > 0;
    printf("%-4s %-48s fp32 %d ids differ (%d more at near-ties)\n", ok ? "ok" : "FAIL",
           with_refs ? "output_id_mask 45x70, 2 references" : "output_id_mask 45x70", differ, near_ties);
    failures += !ok;

    /* Internal path: softmax at 1/4, x4, override, down to 1/8; bg = grid * (1 - sum fg). */
    double *soft = malloc((size_t)TQ * n4 * sizeof(double));
    memcpy(soft, logits.values, (size_t)TQ * n4 * sizeof(double));
    softmax_channels(soft, TQ, n4);
    double *up2 = resize(soft, TQ, T_H4, T_W4, T_HP, T_WP);
    override(up2, TQ, np, labels, is_ref);
    double *small = resize(up2, TQ, T_HP, T_WP, h8, w8);
    double *ref_bg = malloc((size_t)NUM_BG * n8 * sizeof(double));
    for (int i = 0; i < n8; ++i) {
        double sum = 0.0;
        for (int c = nb; c < TQ; ++c) {
            sum += small[(size_t)c * n8 + i];
        }
        for (int k = 0; k < NUM_BG; ++k) {
            ref_bg[(size_t)k * n8 + i] = grid.values[(size_t)k * n8 + i] * (1.0 - sum);
        }
    }
    compare(with_refs ? "encoder_masks fg 8x12, 2 references" : "encoder_masks fg 8x12", HODOR_F32, fg.values,
            &small[(size_t)nb * n8], fg.n);
    compare(with_refs ? "encoder_masks bg 8x12, 2 references" : "encoder_masks bg 8x12", HODOR_F32, bg.values,
            ref_bg, bg.n);
    free(up), free(crop), free(frame), free(soft), free(up2), free(small), free(ref_bg), free(out);
    free(labels), free(user);
    drv.cuMemFree(d_labels), drv.cuMemFree(d_is_ref), drv.cuMemFree(d_hidden), drv.cuMemFree(d_ids);
    drv.cuMemFree(d_user), drv.cuMemFree(d_out);
    release(&logits), release(&grid), release(&fg), release(&bg);
}

int main(void) {
    const char *missing = "";
    if (hk_driver_open(&drv, &missing) != 0) {
        printf("SKIP: no CUDA driver on this machine (%s not found); nothing was run\n", missing);
        return SKIP;
    }
    int count = 0;
    if (drv.cuInit(0) != CUDA_SUCCESS || drv.cuDeviceGetCount(&count) != CUDA_SUCCESS || count == 0) {
        printf("SKIP: no CUDA device on this machine; nothing was run\n");
        return SKIP;
    }
    CUdevice device;
    CUcontext context;
    check_cuda(drv.cuDeviceGet(&device, 0), "cuDeviceGet");
    check_cuda(drv.cuDevicePrimaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain");
    check_cuda(drv.cuCtxSetCurrent(context), "cuCtxSetCurrent");

    hodor_kernels *hk = NULL;
    hodor_status st = hodor_kernels_create(&hk);
    if (st == HODOR_ERROR_UNSUPPORTED_GPU) {
        printf("SKIP: %s; nothing was run\n", hodor_status_string(st));
        return SKIP;
    }
    must(hk, st, "hodor_kernels_create");
    int major = 0, minor = 0;
    drv.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
    drv.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
    printf("hodor_kernels %s on compute capability %d.%d, loaded %s\n", hodor_kernels_version(), major, minor,
           hodor_kernels_loaded_arch(hk) ? (hodor_kernels_loaded_arch(hk) == 90 ? "sm_90 cubins" : "sm_80 cubins")
                                         : "PTX (JIT)");

    /* A rejected argument must come back as an error, not a launch. */
    if (hodor_soft_masked_attention(hk, NULL, HODOR_F32, 0, 0, 0, 0, 0, 0, 0, 0, 1, 65, 64) !=
        HODOR_ERROR_INVALID_ARGUMENT) {
        printf("FAIL 65 descriptors were not rejected\n");
        ++failures;
    }

    const hodor_dtype dtypes[] = {HODOR_F32, HODOR_F16, HODOR_BF16};
    for (int i = 0; i < 3; ++i) {
        check_soft_masked_attention(hk, dtypes[i]);
        check_pixel_descriptor_attention(hk, dtypes[i], 1);
        check_pixel_descriptor_attention(hk, dtypes[i], 8);
        check_mask_logits(hk, dtypes[i], 1);
        check_mask_logits(hk, dtypes[i], 8);
        check_masked_avg_pool(hk, dtypes[i]);
        check_deform_conv(hk, dtypes[i]);
    }
    check_tail(hk, 0);
    check_tail(hk, 1);
    hodor_kernels_destroy(hk);
    drv.cuDevicePrimaryCtxRelease(device);
    printf("%s: %d check(s) failed\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
