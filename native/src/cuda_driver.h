/*
 * The CUDA driver, loaded at run time so that the library and its test program link and
 * start on machines without one (and can say so, instead of failing in the loader).
 */
#ifndef HODOR_CUDA_DRIVER_H
#define HODOR_CUDA_DRIVER_H

#include <cuda.h>

/* cuda.h maps many names to versioned symbols (cuMemAlloc -> cuMemAlloc_v2): the pointer types
 * and the looked-up names both follow those macros. */
#define HK_DRIVER_FUNCTIONS(X) \
    X(cuInit)                  \
    X(cuGetErrorName)          \
    X(cuGetErrorString)        \
    X(cuDeviceGetCount)        \
    X(cuDeviceGet)             \
    X(cuDeviceGetAttribute)    \
    X(cuDevicePrimaryCtxRetain) \
    X(cuDevicePrimaryCtxRelease) \
    X(cuCtxGetCurrent)         \
    X(cuCtxSetCurrent)         \
    X(cuCtxGetDevice)          \
    X(cuCtxSynchronize)        \
    X(cuModuleLoadData)        \
    X(cuModuleUnload)          \
    X(cuModuleGetFunction)     \
    X(cuFuncSetAttribute)      \
    X(cuLaunchKernel)          \
    X(cuMemAlloc)              \
    X(cuMemFree)               \
    X(cuMemcpyHtoD)            \
    X(cuMemcpyDtoH)            \
    X(cuMemsetD8)

typedef struct hk_driver {
    void *library;
#define HK_DRIVER_FIELD(name) __typeof__(&name) name;
    HK_DRIVER_FUNCTIONS(HK_DRIVER_FIELD)
#undef HK_DRIVER_FIELD
} hk_driver;

/* Fills *drv; returns 0, or -1 if libcuda.so.1 is absent, -2 if it lacks a function. On
 * failure, *missing names what was not found. */
int hk_driver_open(hk_driver *drv, const char **missing);
void hk_driver_close(hk_driver *drv);

#endif
