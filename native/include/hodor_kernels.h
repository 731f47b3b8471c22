/*
 * hodor_kernels: HODOR's fused descriptor kernels (Triton, compiled ahead of time) as a C library.
 *
 * The kernels are the Python modules of hodor/kernels, compiled to cubins for sm_80 (runs on
 * every 8.x GPU) and sm_90, plus sm_80 PTX that the driver JIT-compiles on newer GPUs.
 * The library talks to the CUDA driver, which it loads at run time (libcuda.so.1), so it
 * links and loads on machines without one; it uses the caller's current CUDA context.
 *
 * Fixed shapes: 8 heads x 32 = 256 channels. All tensors row-major and contiguous; every
 * pointer 16-byte aligned. Pixel counts (N, P) must be multiples of 16, which any frame
 * padded to a multiple of 32 gives at 1/8 and 1/4 resolution. Limits: 64 descriptors per
 * attention call, 32 history slots, 64 pooled masks. Soft masks and mask scales are fp32;
 * "invalid" flags are bytes (0 = valid). Data tensors (q, k, v, features, descriptors,
 * outputs) share the call's dtype; accumulation is fp32. Launches are asynchronous on the
 * given stream; nothing is allocated, workspaces are the caller's.
 */
#ifndef HODOR_KERNELS_H
#define HODOR_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define HODOR_API
#else
#define HODOR_API __attribute__((visibility("default")))
#endif

#define HODOR_KERNELS_CHANNELS 256
#define HODOR_KERNELS_HEADS 8
#define HODOR_KERNELS_MAX_DESCRIPTORS 64
#define HODOR_KERNELS_MAX_HISTORY 32
#define HODOR_KERNELS_MAX_MASKS 64

typedef enum hodor_dtype { HODOR_F32 = 0, HODOR_F16 = 1, HODOR_BF16 = 2 } hodor_dtype;

typedef enum hodor_status {
    HODOR_OK = 0,
    HODOR_ERROR_NO_DRIVER = 1,      /* libcuda.so.1 could not be loaded, or lacks a needed function */
    HODOR_ERROR_NO_DEVICE = 2,      /* cuInit failed or no CUDA device */
    HODOR_ERROR_NO_CONTEXT = 3,     /* no CUDA context is current on the calling thread */
    HODOR_ERROR_UNSUPPORTED_GPU = 4, /* compute capability below 8.0 */
    HODOR_ERROR_INVALID_ARGUMENT = 5, /* a shape, limit, dtype or alignment rule above is broken */
    HODOR_ERROR_CUDA = 6            /* a driver call failed: see hodor_kernels_last_error() */
} hodor_status;

typedef struct hodor_kernels hodor_kernels;

/* Loads every kernel for the device of the current context. */
HODOR_API hodor_status hodor_kernels_create(hodor_kernels **out);
HODOR_API void hodor_kernels_destroy(hodor_kernels *hk);

HODOR_API const char *hodor_status_string(hodor_status status);
/* The last failure on this handle, in words (driver error names included); "" if none. */
HODOR_API const char *hodor_kernels_last_error(const hodor_kernels *hk);
/* Which code was loaded: 80 or 90 (cubin), or 0 (PTX JIT-compiled by the driver). */
HODOR_API int hodor_kernels_loaded_arch(const hodor_kernels *hk);
HODOR_API const char *hodor_kernels_version(void);

/* Encoder cross-attention: out[b,q,h] = softmax_n(q.k/sqrt(32) - (1 - mask[b,q,n]) * scale[h]) . v.
 * q [B,Q,256], k and v [B,N,256], mask [B,Q,N] fp32, scale [8] fp32, out [B,Q,256]; Q <= 64. */
HODOR_API size_t hodor_soft_masked_attention_workspace_size(const hodor_kernels *hk, int batch, int queries,
                                                            int pixels, hodor_dtype dtype);
HODOR_API hodor_status hodor_soft_masked_attention(hodor_kernels *hk, CUstream stream, hodor_dtype dtype,
                                                   CUdeviceptr q, CUdeviceptr k, CUdeviceptr v,
                                                   CUdeviceptr mask, CUdeviceptr scale, CUdeviceptr out,
                                                   CUdeviceptr workspace, size_t workspace_size, int batch,
                                                   int queries, int pixels);

/* Decoder cross-attention: pixel queries q [B,N,256] against descriptor keys and values
 * k, v [B,K,256] (objects' history first, then background's), key_invalid [B,K] bytes;
 * out [B,N,256]. A pixel whose keys are all invalid gets zeros. */
HODOR_API hodor_status hodor_pixel_descriptor_attention(hodor_kernels *hk, CUstream stream, hodor_dtype dtype,
                                                        CUdeviceptr q, CUdeviceptr k, CUdeviceptr v,
                                                        CUdeviceptr key_invalid, CUdeviceptr out, int batch,
                                                        int pixels, int keys);

/* Mask logits: out[b, channel_offset + q, p] = max over valid t of d[b,q,t].f[b,:,p] / 16 (-inf if
 * none is valid). features [B,256,P], descriptors [B,Qd,T,256], invalid [B,Qd,T] bytes, out
 * [B,out_channels,P] with channel_offset + Qd <= out_channels (the decode output keeps its
 * catch-all map in channel 0: offset 1). T <= 32. */
HODOR_API hodor_status hodor_mask_logits(hodor_kernels *hk, CUstream stream, hodor_dtype dtype,
                                         CUdeviceptr features, CUdeviceptr descriptors, CUdeviceptr invalid,
                                         CUdeviceptr out, int batch, int descriptors_count, int history,
                                         int pixels, int out_channels, int channel_offset);

/* Masked average pooling: out[b,m] = mean of features[b,:,n] over the n with masks[b,m,n] > 0.5;
 * with none, an object row (m >= num_background) takes its first arg-max pixel, a background row
 * zeros. features [B,256,N], masks [B,M,N] fp32, out [B,M,256]; M <= 64. */
HODOR_API size_t hodor_masked_avg_pool_workspace_size(const hodor_kernels *hk, int batch, int masks, int pixels,
                                                      hodor_dtype dtype);
HODOR_API hodor_status hodor_masked_avg_pool(hodor_kernels *hk, CUstream stream, hodor_dtype dtype,
                                             CUdeviceptr features, CUdeviceptr masks, CUdeviceptr out,
                                             CUdeviceptr workspace, size_t workspace_size, int batch,
                                             int masks_count, int pixels, int num_background);

#ifdef __cplusplus
}
#endif

#endif /* HODOR_KERNELS_H */
