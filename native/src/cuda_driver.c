#include "cuda_driver.h"

#include <dlfcn.h>
#include <string.h>

#define HK_STRINGIFY2(x) #x
#define HK_STRINGIFY(x) HK_STRINGIFY2(x) /* expands cuda.h's renames first */

int hk_driver_open(hk_driver *drv, const char **missing) {
    memset(drv, 0, sizeof(*drv));
    drv->library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (drv->library == NULL) {
        *missing = "libcuda.so.1";
        return -1;
    }
#define HK_DRIVER_LOAD(name)                                                     \
    *(void **)(&drv->name) = dlsym(drv->library, HK_STRINGIFY(name));            \
    if (drv->name == NULL) {                                                     \
        *missing = HK_STRINGIFY(name);                                           \
        hk_driver_close(drv);                                                    \
        return -2;                                                               \
    }
    HK_DRIVER_FUNCTIONS(HK_DRIVER_LOAD)
#undef HK_DRIVER_LOAD
    return 0;
}

void hk_driver_close(hk_driver *drv) {
    if (drv->library != NULL) {
        dlclose(drv->library);
    }
    memset(drv, 0, sizeof(*drv));
}
