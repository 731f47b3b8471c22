/*
 * A stand-in for libcuda.so.1 that records what libhodor_kernels asks of the driver, so that
 * the C launchers can be checked against the Python ones on a machine without a GPU
 * (tests/test_native_build.py). It runs nothing: every call succeeds, launches are recorded,
 * and "device" memory is plain host memory.
 *
 * Built as libcuda.so.1 (soname too) and loaded before libhodor_kernels, so the library's
 * dlopen("libcuda.so.1") finds it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h>

#define FAKE_MAX_MODULES 256
#define FAKE_MAX_LAUNCHES 64
#define FAKE_MAX_PARAMS 64

typedef struct fake_launch {
    int module; /* load order of the module the function came from */
    unsigned grid[3], block[3], shared;
    int num_params;
    uint64_t params[FAKE_MAX_PARAMS];
} fake_launch;

static int cc_major = 9, cc_minor = 0, sm_count = 132, shared_optin = 227 * 1024;
static int num_modules = 0;
static char kinds[FAKE_MAX_MODULES][FAKE_MAX_PARAMS + 1]; /* per module: 'p' (8 bytes) or 'i' (4) */
static int dynamic_shared[FAKE_MAX_MODULES];
static fake_launch launches[FAKE_MAX_LAUNCHES];
static int num_launches = 0;

/* ---- controls for the test -------------------------------------------------------------- */

void fake_set_device(int major, int minor, int sms, int optin) {
    cc_major = major, cc_minor = minor, sm_count = sms, shared_optin = optin;
}
void fake_reset(void) {
    num_modules = 0;
    num_launches = 0;
    memset(kinds, 0, sizeof(kinds));
    memset(dynamic_shared, 0, sizeof(dynamic_shared));
}
int fake_num_modules(void) { return num_modules; }
void fake_set_kinds(int module, const char *k) { strncpy(kinds[module], k, FAKE_MAX_PARAMS); }
int fake_dynamic_shared(int module) { return dynamic_shared[module]; }
int fake_num_launches(void) { return num_launches; }
const fake_launch *fake_get_launch(int i) { return &launches[i]; }
void fake_clear_launches(void) { num_launches = 0; }

/* ---- the driver API the library and its test program look up ---------------------------- */

CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_SUCCESS; }
CUresult cuGetErrorName(CUresult e, const char **s) { (void)e; *s = "FAKE_ERROR"; return CUDA_SUCCESS; }
CUresult cuGetErrorString(CUresult e, const char **s) { (void)e; *s = "fake driver"; return CUDA_SUCCESS; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return CUDA_SUCCESS; }
CUresult cuDeviceGet(CUdevice *d, int i) { *d = i; return CUDA_SUCCESS; }
CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d) {
    (void)d;
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = cc_major; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = cc_minor; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = sm_count; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *v = shared_optin; break;
    default: *v = 0;
    }
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d) { (void)d; *c = (CUcontext)0x1; return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { (void)d; return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext *c) { *c = (CUcontext)0x1; return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext c) { (void)c; return CUDA_SUCCESS; }
CUresult cuCtxGetDevice(CUdevice *d) { *d = 0; return CUDA_SUCCESS; }
CUresult cuCtxSynchronize(void) { return CUDA_SUCCESS; }
CUresult cuModuleLoadData(CUmodule *m, const void *image) {
    (void)image;
    if (num_modules >= FAKE_MAX_MODULES) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *m = (CUmodule)(intptr_t)(++num_modules);
    return CUDA_SUCCESS;
}
CUresult cuModuleUnload(CUmodule m) { (void)m; return CUDA_SUCCESS; }
CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name) {
    (void)name;
    *f = (CUfunction)m; /* one kernel per module: the function is known by its module */
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute a, int v) {
    if (a == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
        dynamic_shared[(intptr_t)f - 1] = v;
    }
    return CUDA_SUCCESS;
}
CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, CUstream s, void **params, void **extra) {
    (void)s, (void)extra;
    if (num_launches >= FAKE_MAX_LAUNCHES) {
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    }
    fake_launch *l = &launches[num_launches++];
    memset(l, 0, sizeof(*l));
    l->module = (int)(intptr_t)f - 1;
    l->grid[0] = gx, l->grid[1] = gy, l->grid[2] = gz;
    l->block[0] = bx, l->block[1] = by, l->block[2] = bz;
    l->shared = shared;
    const char *k = kinds[l->module];
    for (int i = 0; k[i] != '\0' && i < FAKE_MAX_PARAMS; ++i) {
        if (k[i] == 'p') {
            memcpy(&l->params[i], params[i], 8);
        } else {
            int32_t v;
            memcpy(&v, params[i], 4);
            l->params[i] = (uint64_t)(int64_t)v;
        }
        l->num_params = i + 1;
    }
    return CUDA_SUCCESS;
}
/* Device memory is host memory here, so the C test program can run its whole harness
 * (uploads, downloads, references) with nothing computing the outputs: every check must fail. */
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
    void *m = aligned_alloc(256, (n + 255) / 256 * 256);
    *p = (CUdeviceptr)(uintptr_t)m;
    return m ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemFree_v2(CUdeviceptr p) { free((void *)(uintptr_t)p); return CUDA_SUCCESS; }
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *h, size_t n) { memcpy((void *)(uintptr_t)d, h, n); return CUDA_SUCCESS; }
CUresult cuMemcpyDtoH_v2(void *h, CUdeviceptr d, size_t n) { memcpy(h, (const void *)(uintptr_t)d, n); return CUDA_SUCCESS; }
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char c, size_t n) { memset((void *)(uintptr_t)d, c, n); return CUDA_SUCCESS; }
