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
 *
 * Also: the decoder's deformable 3x3 convolution (256 -> 256 channels), and the runtime's
 * work after each decode (the frame's id mask, and the soft masks the re-encoding reads),
 * the latter fp32 only, for at most 64 channels and 16 background cells.
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
#define HODOR_KERNELS_MAX_TAIL_CHANNELS 64
#define HODOR_KERNELS_MAX_GRID_CELLS 16

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

/* Deformable convolution v1, 3x3, stride 1, "same" padding, one offset group, no modulation:
 * out[b,o,y,x] = bias[o] + sum_{c,i,j} w[o,c,i,j] * bilinear(x[b,c], y-1+i+dy, x-1+j+dx), (dy, dx) the
 * offsets of tap k = 3i+j at channels 2k, 2k+1 (torchvision's layout), zero outside the map.
 * x [B,H,W,256] (channels last), offsets [B,18,H,W], weight [9*256, 256] with row k*256 + c holding
 * w[:,c,i,j] (the PyTorch weight [O,C,3,3] permuted to [3,3,C,O]), bias [256], out [B,256,H,W];
 * all in the call's dtype; H*W a positive multiple of 16. */
HODOR_API hodor_status hodor_deform_conv3x3(hodor_kernels *hk, CUstream stream, hodor_dtype dtype, CUdeviceptr x,
                                            CUdeviceptr offsets, CUdeviceptr weight, CUdeviceptr bias,
                                            CUdeviceptr out, int batch, int height, int width);

/* The runtime's output path after a decode, fp32: logits [Q,h,w] (Q <= 64 channels: catch-all and
 * background first, then the objects) -> bilinear to the padded size (Hp, Wp) -> softmax over the
 * channels -> reference override -> crop to (rh, rw) -> bilinear to the frame (H, W) -> hidden
 * channels set to -1 -> arg-max (ties to the lower channel) -> ids[channel] -> user_mask where > 0.
 * ids [Q] uint8 (0 for catch-all and background); out [H,W] uint8. On a frame with references give
 * all of labels [Hp,Wp] int32 (the channel of the last reference covering each pixel, -1 for none),
 * is_reference [Q] uint8 (1 for referenced channels), hidden [Q] uint8 and user_mask [H,W] uint8;
 * without, give 0 for all four. Bilinear resampling as PyTorch's (align_corners=False). */
HODOR_API hodor_status hodor_output_id_mask(hodor_kernels *hk, CUstream stream, CUdeviceptr logits,
                                            CUdeviceptr labels, CUdeviceptr is_reference, CUdeviceptr hidden,
                                            CUdeviceptr user_mask, CUdeviceptr ids, CUdeviceptr out, int channels,
                                            int height4, int width4, int padded_height, int padded_width,
                                            int resized_height, int resized_width, int height, int width);

/* The runtime's internal path after a decode, fp32: softmax of logits [Q,h,w] over the channels ->
 * bilinear to (Hp, Wp) -> reference override (labels and is_reference as above, or both 0) ->
 * bilinear to the encoder's size (h8, w8) -> fg [Q - num_bg_channels, h8, w8] (the objects) and
 * bg [cells, h8, w8] = grid * (1 - sum of fg), grid [cells, h8, w8] fp32, cells <= 16. */
HODOR_API hodor_status hodor_encoder_masks(hodor_kernels *hk, CUstream stream, CUdeviceptr logits,
                                           CUdeviceptr labels, CUdeviceptr is_reference, CUdeviceptr grid,
                                           CUdeviceptr fg, CUdeviceptr bg, int channels, int num_bg_channels,
                                           int cells, int height4, int width4, int padded_height,
                                           int padded_width, int height8, int width8);

#ifdef __cplusplus
}
#endif

#endif /* HODOR_KERNELS_H */
