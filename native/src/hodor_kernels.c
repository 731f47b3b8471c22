/*
 * Launchers for the AOT-compiled Triton kernels. Each mirrors the Python launcher of the same
 * kernel in hodor/kernels/ (grid, pixel ranges, workspace layout); tile sizes come from the
 * generated header, which takes them from the kernels' own config functions.
 */
#include "hodor_kernels.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_driver.h"
#include "hodor_kernels_images.h"

#define HK_VERSION "0.1.0"
/* Shared memory a kernel may use without opting in. */
#define HK_DEFAULT_SHARED (48 * 1024)

typedef struct hk_function {
    CUfunction function;
    int num_warps;
    int shared;
} hk_function;

struct hodor_kernels {
    hk_driver drv;
    CUcontext context;
    int arch;
    int sm_count;
    CUmodule modules[HK_NUM_IMAGES];
    int num_modules;
    hk_function functions[HK_NUM_FAMILIES][HK_MAX_VARIANTS][HK_NUM_DTYPES];
    char error[512];
};

static hodor_status fail(hodor_kernels *hk, hodor_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(hk->error, sizeof(hk->error), fmt, ap);
    va_end(ap);
    return status;
}

static hodor_status cuda_fail(hodor_kernels *hk, CUresult rc, const char *what) {
    const char *name = "?";
    const char *text = "";
    hk->drv.cuGetErrorName(rc, &name);
    hk->drv.cuGetErrorString(rc, &text);
    return fail(hk, HODOR_ERROR_CUDA, "%s failed: %s (%s)", what, name, text);
}

#define HK_CUDA(hk, call)                                 \
    do {                                                  \
        CUresult hk_rc_ = (call);                         \
        if (hk_rc_ != CUDA_SUCCESS) {                     \
            return cuda_fail((hk), hk_rc_, #call);        \
        }                                                 \
    } while (0)

const char *hodor_kernels_version(void) { return HK_VERSION; }

const char *hodor_status_string(hodor_status status) {
    switch (status) {
    case HODOR_OK: return "ok";
    case HODOR_ERROR_NO_DRIVER: return "the CUDA driver (libcuda.so.1) could not be loaded";
    case HODOR_ERROR_NO_DEVICE: return "no CUDA device";
    case HODOR_ERROR_NO_CONTEXT: return "no CUDA context is current on this thread";
    case HODOR_ERROR_UNSUPPORTED_GPU: return "GPU older than compute capability 8.0";
    case HODOR_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case HODOR_ERROR_CUDA: return "CUDA driver call failed";
    }
    return "unknown status";
}

const char *hodor_kernels_last_error(const hodor_kernels *hk) { return hk ? hk->error : ""; }

int hodor_kernels_loaded_arch(const hodor_kernels *hk) { return hk ? hk->arch : -1; }

static void unload(hodor_kernels *hk) {
    for (int i = 0; i < hk->num_modules; ++i) {
        hk->drv.cuModuleUnload(hk->modules[i]);
    }
    hk->num_modules = 0;
}

hodor_status hodor_kernels_create(hodor_kernels **out) {
    *out = NULL;
    hodor_kernels *hk = calloc(1, sizeof(*hk));
    if (hk == NULL) {
        return HODOR_ERROR_INVALID_ARGUMENT;
    }
    const char *missing = "";
    if (hk_driver_open(&hk->drv, &missing) != 0) {
        free(hk);
        return HODOR_ERROR_NO_DRIVER;
    }
    hodor_status status = HODOR_OK;
    CUdevice device;
    int major = 0, minor = 0;
    if (hk->drv.cuInit(0) != CUDA_SUCCESS) {
        status = HODOR_ERROR_NO_DEVICE;
        goto error;
    }
    if (hk->drv.cuCtxGetCurrent(&hk->context) != CUDA_SUCCESS || hk->context == NULL) {
        status = HODOR_ERROR_NO_CONTEXT;
        goto error;
    }
    if (hk->drv.cuCtxGetDevice(&device) != CUDA_SUCCESS ||
        hk->drv.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device) != CUDA_SUCCESS ||
        hk->drv.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device) != CUDA_SUCCESS ||
        hk->drv.cuDeviceGetAttribute(&hk->sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device) !=
            CUDA_SUCCESS) {
        status = HODOR_ERROR_NO_DEVICE;
        goto error;
    }
    /* sm_80 cubins run on every 8.x GPU; sm_90 (sm_90a) ones only on 9.0; the rest get the PTX. */
    int cc = 10 * major + minor;
    if (cc < 80) {
        status = HODOR_ERROR_UNSUPPORTED_GPU;
        goto error;
    }
    hk->arch = major == 8 ? 80 : cc == 90 ? 90 : 0;
    int found = 0;
    for (int i = 0; i < HK_NUM_IMAGES; ++i) {
        found += hk_images[i].arch == hk->arch;
    }
    if (found == 0) {
        hk->arch = 0; /* built without this architecture's cubins: fall back to PTX */
    }

    int shared_optin = HK_DEFAULT_SHARED;
    hk->drv.cuDeviceGetAttribute(&shared_optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device);
    for (int i = 0; i < HK_NUM_IMAGES; ++i) {
        const hk_image *im = &hk_images[i];
        if (im->arch != hk->arch) {
            continue;
        }
        CUmodule module;
        CUresult rc = hk->drv.cuModuleLoadData(&module, im->data);
        if (rc != CUDA_SUCCESS) {
            status = cuda_fail(hk, rc, "cuModuleLoadData");
            goto error;
        }
        hk->modules[hk->num_modules++] = module;
        hk_function *f = &hk->functions[im->family][im->variant][im->dtype];
        rc = hk->drv.cuModuleGetFunction(&f->function, module, im->name);
        if (rc != CUDA_SUCCESS) {
            status = cuda_fail(hk, rc, "cuModuleGetFunction");
            goto error;
        }
        f->num_warps = im->num_warps;
        f->shared = im->shared;
        if (im->shared > HK_DEFAULT_SHARED) {
            if (im->shared > shared_optin) {
                status = fail(hk, HODOR_ERROR_UNSUPPORTED_GPU, "%s needs %d bytes of shared memory, the GPU has %d",
                              im->name, im->shared, shared_optin);
                goto error;
            }
            rc = hk->drv.cuFuncSetAttribute(f->function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                            im->shared);
            if (rc != CUDA_SUCCESS) {
                status = cuda_fail(hk, rc, "cuFuncSetAttribute");
                goto error;
            }
        }
    }
    *out = hk;
    return HODOR_OK;

error:
    unload(hk);
    hk_driver_close(&hk->drv);
    free(hk);
    return status;
}

void hodor_kernels_destroy(hodor_kernels *hk) {
    if (hk == NULL) {
        return;
    }
    unload(hk);
    hk_driver_close(&hk->drv);
    free(hk);
}

/* ---- helpers shared by the launchers ---------------------------------------------------- */

static int cdiv(long a, long b) { return (int)((a + b - 1) / b); }
static int imax(int a, int b) { return a > b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }

/* The smallest variant whose size class holds `size`, or -1. */
static int pick_variant(const int *sizes, int count, int size) {
    for (int v = 0; v < count; ++v) {
        if (size <= sizes[v]) {
            return v;
        }
    }
    return -1;
}

/* Pixel ranges as the Python launchers cut them: fill the device twice over, at least four
 * tiles per range, no empty range. */
static void split_pixels(const hodor_kernels *hk, int tiles, int programs_per_range, int *num_splits,
                         int *tiles_per_split) {
    int wanted = imax(1, 2 * hk->sm_count / imax(1, programs_per_range));
    int splits = imax(1, imin(wanted, cdiv(tiles, 4)));
    splits = imax(1, imin(splits, tiles));
    *tiles_per_split = cdiv(tiles, splits);
    *num_splits = cdiv(tiles, *tiles_per_split);
}

static int aligned(CUdeviceptr p) { return (p & 15u) == 0; }

static hodor_status check_common(hodor_kernels *hk, hodor_dtype dtype, int batch) {
    if (hk == NULL) {
        return HODOR_ERROR_INVALID_ARGUMENT;
    }
    hk->error[0] = '\0';
    if ((int)dtype < 0 || (int)dtype >= HK_NUM_DTYPES) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT, "unknown dtype %d", (int)dtype);
    }
    if (batch < 1) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT, "batch must be >= 1, got %d", batch);
    }
    return HODOR_OK;
}

static hodor_status check_pointers(hodor_kernels *hk, int count, const CUdeviceptr *ptrs) {
    for (int i = 0; i < count; ++i) {
        if (!aligned(ptrs[i])) {
            return fail(hk, HODOR_ERROR_INVALID_ARGUMENT, "pointer argument %d is not 16-byte aligned", i);
        }
    }
    return HODOR_OK;
}

static hodor_status launch(hodor_kernels *hk, int family, int variant, hodor_dtype dtype, unsigned gx,
                           unsigned gy, unsigned gz, CUstream stream, void **params) {
    const hk_function *f = &hk->functions[family][variant][dtype];
    if (f->function == NULL) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT, "kernel family %d variant %d dtype %d is not loaded", family,
                    variant, (int)dtype);
    }
    HK_CUDA(hk, hk->drv.cuLaunchKernel(f->function, gx, gy, gz, 32u * (unsigned)f->num_warps, 1, 1,
                                       (unsigned)f->shared, stream, params, NULL));
    return HODOR_OK;
}


/* ---- soft-masked attention -------------------------------------------------------------- */

typedef struct sma_plan {
    int variant, block_q, num_splits, tiles_per_split;
    size_t acc_bytes, stat_bytes;
} sma_plan;

static int sma_plan_for(const hodor_kernels *hk, int batch, int queries, int pixels, hodor_dtype dtype,
                        sma_plan *p) {
    p->variant = pick_variant(hk_sma_SIZE, HK_SMA_VARIANTS, queries);
    if (p->variant < 0 || queries < 1 || pixels < 1 || batch < 1) {
        return -1;
    }
    p->block_q = hk_sma_BLOCK_Q[p->variant][dtype];
    int tiles = cdiv(pixels, hk_sma_BLOCK_N[p->variant][dtype]);
    split_pixels(hk, tiles, batch, &p->num_splits, &p->tiles_per_split);
    size_t ranges = (size_t)batch * (size_t)p->num_splits;
    p->acc_bytes = ranges * HK_SMA_H * (size_t)p->block_q * HK_SMA_D * sizeof(float);
    p->stat_bytes = ranges * 2 * HK_SMA_H * (size_t)p->block_q * sizeof(float);
    return 0;
}

size_t hodor_soft_masked_attention_workspace_size(const hodor_kernels *hk, int batch, int queries, int pixels,
                                                  hodor_dtype dtype) {
    sma_plan p;
    if (hk == NULL || (int)dtype < 0 || (int)dtype >= HK_NUM_DTYPES ||
        sma_plan_for(hk, batch, queries, pixels, dtype, &p) != 0) {
        return 0;
    }
    return p.acc_bytes + p.stat_bytes;
}

hodor_status hodor_soft_masked_attention(hodor_kernels *hk, CUstream stream, hodor_dtype dtype, CUdeviceptr q,
                                         CUdeviceptr k, CUdeviceptr v, CUdeviceptr mask, CUdeviceptr scale,
                                         CUdeviceptr out, CUdeviceptr workspace, size_t workspace_size, int batch,
                                         int queries, int pixels) {
    hodor_status st = check_common(hk, dtype, batch);
    if (st != HODOR_OK) {
        return st;
    }
    if (queries < 1 || queries > HODOR_KERNELS_MAX_DESCRIPTORS || pixels < 16 || pixels % 16 != 0) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT,
                    "soft_masked_attention: need 1 <= queries <= %d and pixels a positive multiple of 16 "
                    "(got %d, %d)",
                    HODOR_KERNELS_MAX_DESCRIPTORS, queries, pixels);
    }
    const CUdeviceptr ptrs[] = {q, k, v, mask, scale, out, workspace};
    if ((st = check_pointers(hk, 7, ptrs)) != HODOR_OK) {
        return st;
    }
    sma_plan p;
    sma_plan_for(hk, batch, queries, pixels, dtype, &p);
    if (workspace_size < p.acc_bytes + p.stat_bytes) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT, "soft_masked_attention: workspace of %zu bytes, need %zu",
                    workspace_size, p.acc_bytes + p.stat_bytes);
    }
    const int c = HK_CHANNELS;
    CUdeviceptr scratch = 0;
    hk_sma_args a = {
        .q_ptr = q, .k_ptr = k, .v_ptr = v, .mask_ptr = mask, .scale_ptr = scale, .out_ptr = out,
        .part_acc_ptr = workspace, .part_stat_ptr = workspace + p.acc_bytes,
        .Q = queries, .N = pixels, .tiles_per_split = p.tiles_per_split, .num_splits = p.num_splits,
        .stride_qb = queries * c, .stride_qq = c, .stride_kb = pixels * c, .stride_kn = c,
        .stride_vb = pixels * c, .stride_vn = c, .stride_mb = queries * pixels, .stride_mq = pixels,
        .stride_ob = queries * c, .stride_oq = c,
    };
    void *params[HK_SMA_NUM_PARAMS];
    hk_sma_pack(&a, &scratch, params);
    if ((st = launch(hk, HK_SMA, p.variant, dtype, (unsigned)p.num_splits, (unsigned)batch, 1, stream, params)) !=
        HODOR_OK) {
        return st;
    }
    int mv = pick_variant(hk_sma_merge_SIZE, HK_SMA_MERGE_VARIANTS, p.block_q);
    hk_sma_merge_args m = {
        .out_ptr = out, .part_acc_ptr = workspace, .part_stat_ptr = workspace + p.acc_bytes, .Q = queries,
        .num_splits = p.num_splits, .stride_ob = queries * c, .stride_oq = c,
    };
    void *merge_params[HK_SMA_MERGE_NUM_PARAMS];
    hk_sma_merge_pack(&m, &scratch, merge_params);
    return launch(hk, HK_SMA_MERGE, mv, dtype, HK_HEADS, (unsigned)batch, 1, stream, merge_params);
}

/* ---- pixel -> descriptor attention ----------------------------------------------------- */

hodor_status hodor_pixel_descriptor_attention(hodor_kernels *hk, CUstream stream, hodor_dtype dtype,
                                              CUdeviceptr q, CUdeviceptr k, CUdeviceptr v,
                                              CUdeviceptr key_invalid, CUdeviceptr out, int batch, int pixels,
                                              int keys) {
    hodor_status st = check_common(hk, dtype, batch);
    if (st != HODOR_OK) {
        return st;
    }
    if (pixels < 1 || keys < 1) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT, "pixel_descriptor_attention: need pixels, keys >= 1 (got %d, %d)",
                    pixels, keys);
    }
    const CUdeviceptr ptrs[] = {q, k, v, out};
    if ((st = check_pointers(hk, 4, ptrs)) != HODOR_OK) {
        return st;
    }
    const int c = HK_CHANNELS;
    CUdeviceptr scratch = 0;
    hk_pda_args a = {
        .q_ptr = q, .k_ptr = k, .v_ptr = v, .invalid_ptr = key_invalid, .out_ptr = out, .N = pixels, .K = keys,
        .stride_qb = pixels * c, .stride_qn = c, .stride_kb = keys * c, .stride_kk = c, .stride_vb = keys * c,
        .stride_vk = c, .stride_ib = keys, .stride_ob = pixels * c, .stride_on = c,
    };
    void *params[HK_PDA_NUM_PARAMS];
    hk_pda_pack(&a, &scratch, params);
    unsigned gx = (unsigned)cdiv(pixels, hk_pda_BLOCK_N[0][dtype]);
    return launch(hk, HK_PDA, 0, dtype, gx, HK_HEADS, (unsigned)batch, stream, params);
}

/* ---- mask logits ----------------------------------------------------------------------- */

hodor_status hodor_mask_logits(hodor_kernels *hk, CUstream stream, hodor_dtype dtype, CUdeviceptr features,
                               CUdeviceptr descriptors, CUdeviceptr invalid, CUdeviceptr out, int batch,
                               int descriptors_count, int history, int pixels, int out_channels,
                               int channel_offset) {
    hodor_status st = check_common(hk, dtype, batch);
    if (st != HODOR_OK) {
        return st;
    }
    int variant = pick_variant(hk_ml_SIZE, HK_ML_VARIANTS, history);
    if (descriptors_count < 1 || history < 1 || variant < 0 || pixels < 16 || pixels % 16 != 0 ||
        channel_offset < 0 || channel_offset + descriptors_count > out_channels) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT,
                    "mask_logits: need descriptors >= 1, 1 <= history <= %d, pixels a positive multiple of 16, "
                    "channel_offset + descriptors <= out_channels (got %d, %d, %d, %d + %d > %d)",
                    HODOR_KERNELS_MAX_HISTORY, descriptors_count, history, pixels, channel_offset,
                    descriptors_count, out_channels);
    }
    const CUdeviceptr ptrs[] = {features, descriptors, out};
    if ((st = check_pointers(hk, 3, ptrs)) != HODOR_OK) {
        return st;
    }
    const int c = HK_CHANNELS;
    CUdeviceptr scratch = 0;
    hk_ml_args a = {
        .f_ptr = features, .d_ptr = descriptors, .invalid_ptr = invalid, .out_ptr = out, .Qd = descriptors_count,
        .T = history, .P = pixels, .channel_offset = channel_offset, .stride_fb = c * pixels, .stride_fc = pixels,
        .stride_db = descriptors_count * history * c, .stride_dq = history * c, .stride_dt = c,
        .stride_ib = descriptors_count * history, .stride_iq = history, .stride_ob = out_channels * pixels,
        .stride_oc = pixels,
    };
    void *params[HK_ML_NUM_PARAMS];
    hk_ml_pack(&a, &scratch, params);
    unsigned gx = (unsigned)cdiv(descriptors_count, hk_ml_BLOCK_Q[variant][dtype]);
    unsigned gy = (unsigned)cdiv(pixels, hk_ml_BLOCK_P[variant][dtype]);
    return launch(hk, HK_ML, variant, dtype, gx, gy, (unsigned)batch, stream, params);
}

/* ---- masked average pooling ------------------------------------------------------------ */

typedef struct pool_plan {
    int variant, block_m, c_blocks, num_splits, tiles_per_split;
    size_t sum_bytes, stat_bytes, arg_bytes;
} pool_plan;

static int pool_plan_for(const hodor_kernels *hk, int batch, int masks, int pixels, hodor_dtype dtype,
                         pool_plan *p) {
    p->variant = pick_variant(hk_pool_SIZE, HK_POOL_VARIANTS, masks);
    if (p->variant < 0 || masks < 1 || pixels < 1 || batch < 1) {
        return -1;
    }
    p->block_m = hk_pool_BLOCK_M[p->variant][dtype];
    p->c_blocks = cdiv(HK_CHANNELS, hk_pool_BLOCK_C[p->variant][dtype]);
    int tiles = cdiv(pixels, hk_pool_BLOCK_N[p->variant][dtype]);
    split_pixels(hk, tiles, batch * p->c_blocks, &p->num_splits, &p->tiles_per_split);
    size_t ranges = (size_t)batch * (size_t)p->num_splits;
    p->sum_bytes = ranges * (size_t)p->block_m * HK_CHANNELS * sizeof(float);
    p->stat_bytes = ranges * 2 * (size_t)p->block_m * sizeof(float);
    p->arg_bytes = ranges * (size_t)p->block_m * sizeof(int32_t);
    /* Keep each part 16-byte aligned. */
    p->stat_bytes = (p->stat_bytes + 15) & ~(size_t)15;
    p->arg_bytes = (p->arg_bytes + 15) & ~(size_t)15;
    return 0;
}

size_t hodor_masked_avg_pool_workspace_size(const hodor_kernels *hk, int batch, int masks, int pixels,
                                            hodor_dtype dtype) {
    pool_plan p;
    if (hk == NULL || (int)dtype < 0 || (int)dtype >= HK_NUM_DTYPES ||
        pool_plan_for(hk, batch, masks, pixels, dtype, &p) != 0) {
        return 0;
    }
    return p.sum_bytes + p.stat_bytes + p.arg_bytes;
}

hodor_status hodor_masked_avg_pool(hodor_kernels *hk, CUstream stream, hodor_dtype dtype, CUdeviceptr features,
                                   CUdeviceptr masks, CUdeviceptr out, CUdeviceptr workspace, size_t workspace_size,
                                   int batch, int masks_count, int pixels, int num_background) {
    hodor_status st = check_common(hk, dtype, batch);
    if (st != HODOR_OK) {
        return st;
    }
    if (masks_count < 1 || masks_count > HODOR_KERNELS_MAX_MASKS || pixels < 16 || pixels % 16 != 0 ||
        num_background < 0) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT,
                    "masked_avg_pool: need 1 <= masks <= %d, pixels a positive multiple of 16, num_background >= 0 "
                    "(got %d, %d, %d)",
                    HODOR_KERNELS_MAX_MASKS, masks_count, pixels, num_background);
    }
    const CUdeviceptr ptrs[] = {features, masks, out, workspace};
    if ((st = check_pointers(hk, 4, ptrs)) != HODOR_OK) {
        return st;
    }
    pool_plan p;
    pool_plan_for(hk, batch, masks_count, pixels, dtype, &p);
    size_t need = p.sum_bytes + p.stat_bytes + p.arg_bytes;
    if (workspace_size < need) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT, "masked_avg_pool: workspace of %zu bytes, need %zu",
                    workspace_size, need);
    }
    const int c = HK_CHANNELS;
    CUdeviceptr scratch = 0;
    CUdeviceptr sums = workspace, stats = workspace + p.sum_bytes, args = stats + p.stat_bytes;
    hk_pool_args a = {
        .f_ptr = features, .mask_ptr = masks, .part_sum_ptr = sums, .part_stat_ptr = stats, .part_arg_ptr = args,
        .M = masks_count, .N = pixels, .tiles_per_split = p.tiles_per_split, .num_splits = p.num_splits,
        .stride_fb = c * pixels, .stride_fc = pixels, .stride_mb = masks_count * pixels, .stride_mm = pixels,
    };
    void *params[HK_POOL_NUM_PARAMS];
    hk_pool_pack(&a, &scratch, params);
    if ((st = launch(hk, HK_POOL, p.variant, dtype, (unsigned)p.num_splits, (unsigned)p.c_blocks, (unsigned)batch,
                     stream, params)) != HODOR_OK) {
        return st;
    }
    int mv = pick_variant(hk_pool_merge_SIZE, HK_POOL_MERGE_VARIANTS, p.block_m);
    hk_pool_merge_args m = {
        .f_ptr = features, .out_ptr = out, .part_sum_ptr = sums, .part_stat_ptr = stats, .part_arg_ptr = args,
        .M = masks_count, .num_background = num_background, .num_splits = p.num_splits, .stride_fb = c * pixels,
        .stride_fc = pixels, .stride_ob = masks_count * c, .stride_om = c,
    };
    void *merge_params[HK_POOL_MERGE_NUM_PARAMS];
    hk_pool_merge_pack(&m, &scratch, merge_params);
    return launch(hk, HK_POOL_MERGE, mv, dtype, (unsigned)cdiv(c, HK_POOL_MERGE_BLOCK_C), (unsigned)batch, 1, stream,
                  merge_params);
}

/* ---- deformable convolution ----------------------------------------------------------- */

hodor_status hodor_deform_conv3x3(hodor_kernels *hk, CUstream stream, hodor_dtype dtype, CUdeviceptr x,
                                  CUdeviceptr offsets, CUdeviceptr weight, CUdeviceptr bias, CUdeviceptr out,
                                  int batch, int height, int width) {
    hodor_status st = check_common(hk, dtype, batch);
    if (st != HODOR_OK) {
        return st;
    }
    if (height < 1 || width < 1 || (long)height * width > (1L << 24) || (height * width) % 16 != 0) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT,
                    "deform_conv3x3: need height * width a positive multiple of 16 (got %d x %d)", height, width);
    }
    const CUdeviceptr ptrs[] = {x, offsets, weight, bias, out};
    if ((st = check_pointers(hk, 5, ptrs)) != HODOR_OK) {
        return st;
    }
    const int c = HK_CHANNELS, pixels = height * width;
    CUdeviceptr scratch = 0;
    hk_dc_args a = {
        .x_ptr = x, .off_ptr = offsets, .w_ptr = weight, .bias_ptr = bias, .out_ptr = out, .C = c, .O = c,
        .H = height, .W = width, .stride_xb = pixels * c, .stride_xp = c, .stride_fb = 18 * pixels,
        .stride_fk = pixels, .stride_ob = c * pixels, .stride_oc = pixels,
    };
    void *params[HK_DC_NUM_PARAMS];
    hk_dc_pack(&a, &scratch, params);
    unsigned gx = (unsigned)cdiv(c, hk_dc_BLOCK_O[0][dtype]);
    unsigned gy = (unsigned)cdiv(pixels, hk_dc_BLOCK_P[0][dtype]);
    return launch(hk, HK_DC, 0, dtype, gx, gy, (unsigned)batch, stream, params);
}

/* ---- the runtime tail -------------------------------------------------------------------- */

/* PyTorch's scale for a bilinear resize by size: in/out, rounded to fp32. */
static float resample_scale(int in, int out) { return (float)in / (float)out; }

hodor_status hodor_output_id_mask(hodor_kernels *hk, CUstream stream, CUdeviceptr logits, CUdeviceptr labels,
                                  CUdeviceptr is_reference, CUdeviceptr hidden, CUdeviceptr user_mask,
                                  CUdeviceptr ids, CUdeviceptr out, int channels, int height4, int width4,
                                  int padded_height, int padded_width, int resized_height, int resized_width,
                                  int height, int width) {
    hodor_status st = check_common(hk, HODOR_F32, 1);
    if (st != HODOR_OK) {
        return st;
    }
    int refs = labels != 0;
    int variant = pick_variant(hk_tail_ids_SIZE, HK_TAIL_IDS_VARIANTS, channels);
    if (channels < 1 || variant < 0 || height4 < 1 || width4 < 1 || resized_height < 1 || resized_width < 1 ||
        resized_height > padded_height || resized_width > padded_width || height < 1 || width < 1) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT,
                    "output_id_mask: need 1 <= channels <= %d, positive sizes and resized <= padded (got %d "
                    "channels, %dx%d logits, padded %dx%d, resized %dx%d, frame %dx%d)",
                    HODOR_KERNELS_MAX_TAIL_CHANNELS, channels, height4, width4, padded_height, padded_width,
                    resized_height, resized_width, height, width);
    }
    if (refs != (is_reference != 0) || refs != (hidden != 0) || refs != (user_mask != 0)) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT,
                    "output_id_mask: give all of labels, is_reference, hidden and user_mask, or none");
    }
    const CUdeviceptr ptrs[] = {logits, ids, out, labels, is_reference, hidden, user_mask};
    if ((st = check_pointers(hk, refs ? 7 : 3, ptrs)) != HODOR_OK) {
        return st;
    }
    CUdeviceptr scratch = 0;
    hk_tail_ids_args a = {
        .logits_ptr = logits, .labels_ptr = labels, .is_ref_ptr = is_reference, .hidden_ptr = hidden,
        .ids_ptr = ids, .user_ptr = user_mask, .out_ptr = out, .Q = channels, .h = height4, .w = width4,
        .Wp = padded_width, .rh = resized_height, .rw = resized_width, .H = height, .W = width,
        .up_y = resample_scale(height4, padded_height), .up_x = resample_scale(width4, padded_width),
        .down_y = resample_scale(resized_height, height), .down_x = resample_scale(resized_width, width),
    };
    /* The two variants share their parameter list; only their constexprs differ. */
    void *params[HK_TAIL_IDS_NUM_PARAMS];
    hk_tail_ids_pack(&a, &scratch, params);
    int family = refs ? HK_TAIL_IDS_REF : HK_TAIL_IDS;
    unsigned gx = (unsigned)cdiv((long)height * width, hk_tail_ids_BLOCK[variant][HODOR_F32]);
    return launch(hk, family, variant, HODOR_F32, gx, 1, 1, stream, params);
}

hodor_status hodor_encoder_masks(hodor_kernels *hk, CUstream stream, CUdeviceptr logits, CUdeviceptr labels,
                                 CUdeviceptr is_reference, CUdeviceptr grid, CUdeviceptr fg, CUdeviceptr bg,
                                 int channels, int num_bg_channels, int cells, int height4, int width4,
                                 int padded_height, int padded_width, int height8, int width8) {
    hodor_status st = check_common(hk, HODOR_F32, 1);
    if (st != HODOR_OK) {
        return st;
    }
    int refs = labels != 0;
    int variant = pick_variant(hk_tail_enc_SIZE, HK_TAIL_ENC_VARIANTS, channels);
    if (variant < 0 || cells < 1 || cells > HODOR_KERNELS_MAX_GRID_CELLS || cells >= num_bg_channels ||
        num_bg_channels > channels || height4 < 1 || width4 < 1 || padded_height < 1 || padded_width < 1 ||
        height8 < 1 || width8 < 1) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT,
                    "encoder_masks: need cells < num_bg_channels <= channels <= %d, cells <= %d and positive "
                    "sizes (got %d cells, %d, %d channels)",
                    HODOR_KERNELS_MAX_TAIL_CHANNELS, HODOR_KERNELS_MAX_GRID_CELLS, cells, num_bg_channels,
                    channels);
    }
    if (refs != (is_reference != 0)) {
        return fail(hk, HODOR_ERROR_INVALID_ARGUMENT, "encoder_masks: give both labels and is_reference, or neither");
    }
    const CUdeviceptr ptrs[] = {logits, grid, fg, bg, labels, is_reference};
    if ((st = check_pointers(hk, refs ? 6 : 4, ptrs)) != HODOR_OK) {
        return st;
    }
    CUdeviceptr scratch = 0;
    hk_tail_enc_args a = {
        .logits_ptr = logits, .labels_ptr = labels, .is_ref_ptr = is_reference, .grid_ptr = grid, .fg_ptr = fg,
        .bg_ptr = bg, .Q = channels, .NB = num_bg_channels, .QB = cells, .h = height4, .w = width4,
        .Hp = padded_height, .Wp = padded_width, .h8 = height8, .w8 = width8,
        .up_y = resample_scale(height4, padded_height), .up_x = resample_scale(width4, padded_width),
        .down_y = resample_scale(padded_height, height8), .down_x = resample_scale(padded_width, width8),
    };
    void *params[HK_TAIL_ENC_NUM_PARAMS];
    hk_tail_enc_pack(&a, &scratch, params);
    int family = refs ? HK_TAIL_ENC_REF : HK_TAIL_ENC;
    unsigned gx = (unsigned)cdiv((long)height8 * width8, hk_tail_enc_BLOCK[variant][HODOR_F32]);
    return launch(hk, family, variant, HODOR_F32, gx, 1, 1, stream, params);
}
