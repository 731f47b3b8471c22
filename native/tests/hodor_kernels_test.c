/*
 * Runs every kernel of libhodor_kernels at HODOR's real shapes (1/8 map 60x108, 1/4 map
 * 120x216; 9 background descriptors + 4 objects; history 1 and 8) in fp32, fp16 and bf16,
 * against a float64 reference computed here on the host.
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
    }
    hodor_kernels_destroy(hk);
    drv.cuDevicePrimaryCtxRelease(device);
    printf("%s: %d check(s) failed\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
