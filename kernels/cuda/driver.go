//go:build cgo

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>

// Our own declarations of the few CUDA driver API types and entry points we
// call: no CUDA header is needed to build. The _v2 names are the ones the
// driver has exported since CUDA 4 (64-bit sizes and pointers).
typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;
typedef void *CUmodule;
typedef void *CUfunction;
typedef void *CUstream;
typedef void *CUevent;
typedef struct { char reserved[64]; } CUipcMemHandle;
typedef struct { char reserved[64]; } CUipcEventHandle;
typedef unsigned long long CUmemGenericAllocationHandle;
// CUmemLocation, CUmemAllocationProp and CUmemAccessDesc, as cuda.h lays
// them out (device locations, pinned allocations, POSIX fd handles).
typedef struct { int type; int id; } kvd_memloc;
typedef struct {
	int type;
	int requestedHandleTypes;
	kvd_memloc location;
	void *win32HandleMetaData;
	struct { unsigned char compressionType, gpuDirectRDMACapable; unsigned short usage; unsigned char reserved[4]; } allocFlags;
} kvd_memprop;
typedef struct { kvd_memloc location; int flags; } kvd_memaccess;

typedef struct {
	void *lib;
	CUresult (*cuInit)(unsigned int);
	CUresult (*cuDriverGetVersion)(int *);
	CUresult (*cuDeviceGetCount)(int *);
	CUresult (*cuDeviceGet)(CUdevice *, int);
	CUresult (*cuDeviceGetName)(char *, int, CUdevice);
	CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice);
	CUresult (*cuDeviceTotalMem)(size_t *, CUdevice);
	CUresult (*cuGetErrorName)(CUresult, const char **);
	CUresult (*cuGetErrorString)(CUresult, const char **);
	CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
	CUresult (*cuDevicePrimaryCtxRelease)(CUdevice);
	CUresult (*cuCtxSetCurrent)(CUcontext);
	CUresult (*cuMemGetInfo)(size_t *, size_t *);
	CUresult (*cuMemAlloc)(CUdeviceptr *, size_t);
	CUresult (*cuMemFree)(CUdeviceptr);
	CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void *, size_t);
	CUresult (*cuMemcpyDtoH)(void *, CUdeviceptr, size_t);
	CUresult (*cuMemsetD32)(CUdeviceptr, unsigned int, size_t);
	CUresult (*cuMemHostAlloc)(void **, size_t, unsigned int);
	CUresult (*cuMemFreeHost)(void *);
	CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
	CUresult (*cuModuleLoadData)(CUmodule *, const void *);
	CUresult (*cuModuleUnload)(CUmodule);
	CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
	CUresult (*cuFuncSetAttribute)(CUfunction, int, int);
	CUresult (*cuOccupancyMaxActiveBlocksPerMultiprocessor)(int *, CUfunction, int, size_t);
	CUresult (*cuLaunchKernel)(CUfunction, unsigned int, unsigned int, unsigned int,
		unsigned int, unsigned int, unsigned int, unsigned int, CUstream, void **, void **);
	CUresult (*cuStreamCreate)(CUstream *, unsigned int);
	CUresult (*cuStreamDestroy)(CUstream);
	CUresult (*cuStreamSynchronize)(CUstream);
	CUresult (*cuIpcGetMemHandle)(CUipcMemHandle *, CUdeviceptr);
	CUresult (*cuIpcOpenMemHandle)(CUdeviceptr *, CUipcMemHandle, unsigned int);
	CUresult (*cuIpcCloseMemHandle)(CUdeviceptr);
	CUresult (*cuEventCreate)(CUevent *, unsigned int);
	CUresult (*cuEventDestroy)(CUevent);
	CUresult (*cuEventRecord)(CUevent, CUstream);
	CUresult (*cuEventSynchronize)(CUevent);
	CUresult (*cuEventQuery)(CUevent);
	CUresult (*cuEventElapsedTime)(float *, CUevent, CUevent);
	CUresult (*cuMemGetAllocationGranularity)(size_t *, const kvd_memprop *, int);
	CUresult (*cuMemCreate)(CUmemGenericAllocationHandle *, size_t, const kvd_memprop *, unsigned long long);
	CUresult (*cuMemRelease)(CUmemGenericAllocationHandle);
	CUresult (*cuMemExportToShareableHandle)(void *, CUmemGenericAllocationHandle, int, unsigned long long);
	CUresult (*cuMemImportFromShareableHandle)(CUmemGenericAllocationHandle *, void *, int);
	CUresult (*cuMemAddressReserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
	CUresult (*cuMemAddressFree)(CUdeviceptr, size_t);
	CUresult (*cuMemMap)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
	CUresult (*cuMemUnmap)(CUdeviceptr, size_t);
	CUresult (*cuMemSetAccess)(CUdeviceptr, size_t, const kvd_memaccess *, size_t);
	CUresult (*cuStreamWaitEvent)(CUstream, CUevent, unsigned int);
	CUresult (*cuIpcGetEventHandle)(CUipcEventHandle *, CUevent);
	CUresult (*cuIpcOpenEventHandle)(CUevent *, CUipcEventHandle);
} kvd_cu;

// kvd_cu_open fills d from the library at path. It returns NULL, or what
// went wrong: dlerror's text, or the name of a missing entry point.
static const char *kvd_cu_open(kvd_cu *d, const char *path) {
	d->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!d->lib) {
		return dlerror();
	}
#define SYM(field, name) \
	if (!(*(void **)(&d->field) = dlsym(d->lib, name))) return name;
	SYM(cuInit, "cuInit")
	SYM(cuDriverGetVersion, "cuDriverGetVersion")
	SYM(cuDeviceGetCount, "cuDeviceGetCount")
	SYM(cuDeviceGet, "cuDeviceGet")
	SYM(cuDeviceGetName, "cuDeviceGetName")
	SYM(cuDeviceGetAttribute, "cuDeviceGetAttribute")
	SYM(cuDeviceTotalMem, "cuDeviceTotalMem_v2")
	SYM(cuGetErrorName, "cuGetErrorName")
	SYM(cuGetErrorString, "cuGetErrorString")
	SYM(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain")
	SYM(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2")
	SYM(cuCtxSetCurrent, "cuCtxSetCurrent")
	SYM(cuMemGetInfo, "cuMemGetInfo_v2")
	SYM(cuMemAlloc, "cuMemAlloc_v2")
	SYM(cuMemFree, "cuMemFree_v2")
	SYM(cuMemcpyHtoD, "cuMemcpyHtoD_v2")
	SYM(cuMemcpyDtoH, "cuMemcpyDtoH_v2")
	SYM(cuMemsetD32, "cuMemsetD32_v2")
	SYM(cuMemHostAlloc, "cuMemHostAlloc")
	SYM(cuMemFreeHost, "cuMemFreeHost")
	SYM(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2")
	SYM(cuModuleLoadData, "cuModuleLoadData")
	SYM(cuModuleUnload, "cuModuleUnload")
	SYM(cuModuleGetFunction, "cuModuleGetFunction")
	SYM(cuFuncSetAttribute, "cuFuncSetAttribute")
	SYM(cuOccupancyMaxActiveBlocksPerMultiprocessor, "cuOccupancyMaxActiveBlocksPerMultiprocessor")
	SYM(cuLaunchKernel, "cuLaunchKernel")
	SYM(cuStreamCreate, "cuStreamCreate")
	SYM(cuStreamDestroy, "cuStreamDestroy_v2")
	SYM(cuStreamSynchronize, "cuStreamSynchronize")
	SYM(cuIpcGetMemHandle, "cuIpcGetMemHandle")
	if (!(*(void **)(&d->cuIpcOpenMemHandle) = dlsym(d->lib, "cuIpcOpenMemHandle_v2")))
		SYM(cuIpcOpenMemHandle, "cuIpcOpenMemHandle")
	SYM(cuIpcCloseMemHandle, "cuIpcCloseMemHandle")
	SYM(cuEventCreate, "cuEventCreate")
	SYM(cuEventDestroy, "cuEventDestroy_v2")
	SYM(cuEventRecord, "cuEventRecord")
	SYM(cuEventSynchronize, "cuEventSynchronize")
	SYM(cuEventQuery, "cuEventQuery")
	SYM(cuEventElapsedTime, "cuEventElapsedTime")
	SYM(cuMemGetAllocationGranularity, "cuMemGetAllocationGranularity")
	SYM(cuMemCreate, "cuMemCreate")
	SYM(cuMemRelease, "cuMemRelease")
	SYM(cuMemExportToShareableHandle, "cuMemExportToShareableHandle")
	SYM(cuMemImportFromShareableHandle, "cuMemImportFromShareableHandle")
	SYM(cuMemAddressReserve, "cuMemAddressReserve")
	SYM(cuMemAddressFree, "cuMemAddressFree")
	SYM(cuMemMap, "cuMemMap")
	SYM(cuMemUnmap, "cuMemUnmap")
	SYM(cuMemSetAccess, "cuMemSetAccess")
	SYM(cuStreamWaitEvent, "cuStreamWaitEvent")
	SYM(cuIpcGetEventHandle, "cuIpcGetEventHandle")
	SYM(cuIpcOpenEventHandle, "cuIpcOpenEventHandle")
#undef SYM
	return NULL;
}

static void kvd_cu_close(kvd_cu *d) { if (d->lib) dlclose(d->lib); }

// One trampoline per entry point: cgo cannot call C function pointers.
static CUresult kvd_cuInit(kvd_cu *d, unsigned int f) { return d->cuInit(f); }
static CUresult kvd_cuDriverGetVersion(kvd_cu *d, int *v) { return d->cuDriverGetVersion(v); }
static CUresult kvd_cuDeviceGetCount(kvd_cu *d, int *n) { return d->cuDeviceGetCount(n); }
static CUresult kvd_cuDeviceGet(kvd_cu *d, CUdevice *dev, int i) { return d->cuDeviceGet(dev, i); }
static CUresult kvd_cuDeviceGetName(kvd_cu *d, char *s, int n, CUdevice dev) { return d->cuDeviceGetName(s, n, dev); }
static CUresult kvd_cuDeviceGetAttribute(kvd_cu *d, int *v, int a, CUdevice dev) { return d->cuDeviceGetAttribute(v, a, dev); }
static CUresult kvd_cuDeviceTotalMem(kvd_cu *d, size_t *b, CUdevice dev) { return d->cuDeviceTotalMem(b, dev); }
static CUresult kvd_cuGetErrorName(kvd_cu *d, CUresult r, const char **s) { return d->cuGetErrorName(r, s); }
static CUresult kvd_cuGetErrorString(kvd_cu *d, CUresult r, const char **s) { return d->cuGetErrorString(r, s); }
static CUresult kvd_cuDevicePrimaryCtxRetain(kvd_cu *d, CUcontext *c, CUdevice dev) { return d->cuDevicePrimaryCtxRetain(c, dev); }
static CUresult kvd_cuDevicePrimaryCtxRelease(kvd_cu *d, CUdevice dev) { return d->cuDevicePrimaryCtxRelease(dev); }
static CUresult kvd_cuCtxSetCurrent(kvd_cu *d, CUcontext c) { return d->cuCtxSetCurrent(c); }
static CUresult kvd_cuMemGetInfo(kvd_cu *d, size_t *free, size_t *total) { return d->cuMemGetInfo(free, total); }
static CUresult kvd_cuMemAlloc(kvd_cu *d, CUdeviceptr *p, size_t n) { return d->cuMemAlloc(p, n); }
static CUresult kvd_cuMemFree(kvd_cu *d, CUdeviceptr p) { return d->cuMemFree(p); }
static CUresult kvd_cuMemcpyHtoD(kvd_cu *d, CUdeviceptr dst, const void *src, size_t n) { return d->cuMemcpyHtoD(dst, src, n); }
static CUresult kvd_cuMemcpyDtoH(kvd_cu *d, void *dst, CUdeviceptr src, size_t n) { return d->cuMemcpyDtoH(dst, src, n); }
static CUresult kvd_cuMemsetD32(kvd_cu *d, CUdeviceptr p, unsigned int v, size_t n) { return d->cuMemsetD32(p, v, n); }
static CUresult kvd_cuMemHostAlloc(kvd_cu *d, void **p, size_t n) { return d->cuMemHostAlloc(p, n, 0); }
static CUresult kvd_cuMemFreeHost(kvd_cu *d, void *p) { return d->cuMemFreeHost(p); }
static CUresult kvd_cuMemcpyHtoDAsync(kvd_cu *d, CUdeviceptr dst, const void *src, size_t n, CUstream s) { return d->cuMemcpyHtoDAsync(dst, src, n, s); }
static CUresult kvd_cuModuleLoadData(kvd_cu *d, CUmodule *m, const void *image) { return d->cuModuleLoadData(m, image); }
static CUresult kvd_cuModuleUnload(kvd_cu *d, CUmodule m) { return d->cuModuleUnload(m); }
static CUresult kvd_cuModuleGetFunction(kvd_cu *d, CUfunction *f, CUmodule m, const char *name) { return d->cuModuleGetFunction(f, m, name); }
static CUresult kvd_cuFuncSetAttribute(kvd_cu *d, CUfunction f, int a, int v) { return d->cuFuncSetAttribute(f, a, v); }
static CUresult kvd_cuOccupancy(kvd_cu *d, int *n, CUfunction f, int threads, size_t smem) { return d->cuOccupancyMaxActiveBlocksPerMultiprocessor(n, f, threads, smem); }
static CUresult kvd_cuStreamCreate(kvd_cu *d, CUstream *s) { return d->cuStreamCreate(s, 1); } // CU_STREAM_NON_BLOCKING
static CUresult kvd_cuStreamDestroy(kvd_cu *d, CUstream s) { return d->cuStreamDestroy(s); }
static CUresult kvd_cuStreamSynchronize(kvd_cu *d, CUstream s) { return d->cuStreamSynchronize(s); }
static CUresult kvd_cuIpcGetMemHandle(kvd_cu *d, void *h, CUdeviceptr p) { return d->cuIpcGetMemHandle((CUipcMemHandle *)h, p); }
static CUresult kvd_cuIpcOpenMemHandle(kvd_cu *d, CUdeviceptr *p, const void *h) {
	CUipcMemHandle handle;
	memcpy(&handle, h, sizeof handle);
	return d->cuIpcOpenMemHandle(p, handle, 1); // CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS
}
static CUresult kvd_cuIpcCloseMemHandle(kvd_cu *d, CUdeviceptr p) { return d->cuIpcCloseMemHandle(p); }
static CUresult kvd_cuEventCreate(kvd_cu *d, CUevent *e, unsigned flags) { return d->cuEventCreate(e, flags); }
static CUresult kvd_cuEventDestroy(kvd_cu *d, CUevent e) { return d->cuEventDestroy(e); }
static CUresult kvd_cuEventRecord(kvd_cu *d, CUevent e, CUstream s) { return d->cuEventRecord(e, s); }
static CUresult kvd_cuEventSynchronize(kvd_cu *d, CUevent e) { return d->cuEventSynchronize(e); }
static CUresult kvd_cuEventQuery(kvd_cu *d, CUevent e) { return d->cuEventQuery(e); }
// A staged upload on its own stream, then the consuming stream told to wait
// for it: one cgo crossing for the three calls.
static CUresult kvd_copyThenWait(kvd_cu *d, CUdeviceptr dst, const void *src, size_t n, CUstream cs, CUevent e, CUstream ws) {
	CUresult r = d->cuMemcpyHtoDAsync(dst, src, n, cs);
	if (r != 0) return r;
	r = d->cuEventRecord(e, cs);
	if (r != 0) return r;
	return d->cuStreamWaitEvent(ws, e, 0);
}
static CUresult kvd_cuEventElapsedTime(kvd_cu *d, float *ms, CUevent a, CUevent b) { return d->cuEventElapsedTime(ms, a, b); }

// Virtual memory management: physical memory made with cuMemCreate,
// exportable as a POSIX file descriptor, mapped at a reserved range.
static kvd_memprop kvd_vmm_prop(int dev) {
	kvd_memprop prop;
	memset(&prop, 0, sizeof prop);
	prop.type = 1;                 // CU_MEM_ALLOCATION_TYPE_PINNED
	prop.requestedHandleTypes = 1; // CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
	prop.location.type = 1;        // CU_MEM_LOCATION_TYPE_DEVICE
	prop.location.id = dev;
	return prop;
}
static CUresult kvd_vmm_granularity(kvd_cu *d, int dev, size_t *g) {
	kvd_memprop prop = kvd_vmm_prop(dev);
	return d->cuMemGetAllocationGranularity(g, &prop, 1); // RECOMMENDED
}
static CUresult kvd_vmm_create(kvd_cu *d, int dev, size_t size, CUmemGenericAllocationHandle *h) {
	kvd_memprop prop = kvd_vmm_prop(dev);
	return d->cuMemCreate(h, size, &prop, 0);
}
static CUresult kvd_vmm_export(kvd_cu *d, CUmemGenericAllocationHandle h, int *fd) {
	return d->cuMemExportToShareableHandle(fd, h, 1, 0);
}
static CUresult kvd_vmm_import(kvd_cu *d, int fd, CUmemGenericAllocationHandle *h) {
	return d->cuMemImportFromShareableHandle(h, (void *)(uintptr_t)fd, 1);
}
// kvd_vmm_map maps h's size bytes at a fresh range *p, read-write for dev;
// *what names the call that failed.
static CUresult kvd_vmm_map(kvd_cu *d, int dev, CUmemGenericAllocationHandle h, size_t size, CUdeviceptr *p, const char **what) {
	CUresult r;
	*what = "cuMemAddressReserve";
	if ((r = d->cuMemAddressReserve(p, size, 0, 0, 0)) != 0) return r;
	*what = "cuMemMap";
	if ((r = d->cuMemMap(*p, size, 0, h, 0)) != 0) {
		d->cuMemAddressFree(*p, size);
		return r;
	}
	kvd_memaccess acc;
	acc.location.type = 1;
	acc.location.id = dev;
	acc.flags = 3; // CU_MEM_ACCESS_FLAGS_PROT_READWRITE
	*what = "cuMemSetAccess";
	if ((r = d->cuMemSetAccess(*p, size, &acc, 1)) != 0) {
		d->cuMemUnmap(*p, size);
		d->cuMemAddressFree(*p, size);
	}
	return r;
}
static CUresult kvd_cuMemRelease(kvd_cu *d, CUmemGenericAllocationHandle h) { return d->cuMemRelease(h); }
static CUresult kvd_vmm_unmap(kvd_cu *d, CUdeviceptr p, size_t size, CUmemGenericAllocationHandle h) {
	CUresult r = d->cuMemUnmap(p, size);
	CUresult r2 = d->cuMemAddressFree(p, size);
	CUresult r3 = d->cuMemRelease(h);
	return r ? r : r2 ? r2 : r3;
}
static CUresult kvd_cuStreamWaitEvent(kvd_cu *d, CUstream s, CUevent e) { return d->cuStreamWaitEvent(s, e, 0); }
static CUresult kvd_cuIpcGetEventHandle(kvd_cu *d, void *h, CUevent e) { return d->cuIpcGetEventHandle((CUipcEventHandle *)h, e); }
static CUresult kvd_cuIpcOpenEventHandle(kvd_cu *d, CUevent *e, const void *h) {
	CUipcEventHandle handle;
	memcpy(&handle, h, sizeof handle);
	return d->cuIpcOpenEventHandle(e, handle);
}

// kvd_cuLaunch launches f with nargs 8-byte argument slots (in C memory):
// the driver wants a pointer to each argument's value.
static CUresult kvd_cuLaunch(kvd_cu *d, CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
		unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared, CUstream s,
		unsigned long long *slots, int nargs) {
	void *params[32];
	if (nargs > 32) return 1; // CUDA_ERROR_INVALID_VALUE
	for (int i = 0; i < nargs; i++) params[i] = &slots[i];
	return d->cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, s, params, NULL);
}
*/
import "C"

import (
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"
)

// cuDeviceGetAttribute's attribute numbers (CUdevice_attribute).
const (
	attrComputeMajor = 75
	attrComputeMinor = 76
	attrSMs          = 16 // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
)

// Driver is an opened CUDA driver library with cuInit done.
type Driver struct {
	d       *C.kvd_cu
	path    string
	version int // cuDriverGetVersion: 1000·major + 10·minor
}

// Open loads the CUDA driver (libcuda.so.1, or the file $KVD_LIBCUDA names)
// and initialises it. Without a usable driver the error wraps ErrNoDriver
// and says why (library not found, an entry point missing, cuInit failed).
func Open() (*Driver, error) {
	path := os.Getenv("KVD_LIBCUDA")
	if path == "" {
		path = "libcuda.so.1"
	}
	return open(path)
}

func open(path string) (*Driver, error) {
	d := (*C.kvd_cu)(C.calloc(1, C.size_t(unsafe.Sizeof(C.kvd_cu{}))))
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	if msg := C.kvd_cu_open(d, cpath); msg != nil {
		why, loaded := C.GoString(msg), d.lib != nil
		C.kvd_cu_close(d)
		C.free(unsafe.Pointer(d))
		if !loaded {
			return nil, fmt.Errorf("%w: cannot load %s: %s", ErrNoDriver, path, why)
		}
		return nil, fmt.Errorf("%w: %s has no %s (not a CUDA driver, or one too old)", ErrNoDriver, path, why)
	}
	drv := &Driver{d: d, path: path}
	if err := drv.check("cuInit", C.kvd_cuInit(d, 0)); err != nil {
		drv.Close()
		return nil, fmt.Errorf("%w: %v", ErrNoDriver, err)
	}
	var v C.int
	if err := drv.check("cuDriverGetVersion", C.kvd_cuDriverGetVersion(d, &v)); err != nil {
		drv.Close()
		return nil, err
	}
	drv.version = int(v)
	return drv, nil
}

// Close unloads the library; the Driver must not be used after.
func (drv *Driver) Close() {
	if drv.d != nil {
		C.kvd_cu_close(drv.d)
		C.free(unsafe.Pointer(drv.d))
		drv.d = nil
	}
}

// Version is the driver's CUDA version, as "13.0".
func (drv *Driver) Version() string {
	return fmt.Sprintf("%d.%d", drv.version/1000, drv.version%1000/10)
}

// check converts a CUresult into nil or an *Error, once, at the boundary.
func (drv *Driver) check(call string, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	e := &Error{Call: call, Code: int(r)}
	var s *C.char
	if C.kvd_cuGetErrorName(drv.d, r, &s) == 0 && s != nil {
		e.Name = C.GoString(s)
	}
	if C.kvd_cuGetErrorString(drv.d, r, &s) == 0 && s != nil {
		e.Message = C.GoString(s)
	}
	return e
}

// Devices describes every device the driver sees.
func (drv *Driver) Devices() ([]Device, error) {
	var n C.int
	if err := drv.check("cuDeviceGetCount", C.kvd_cuDeviceGetCount(drv.d, &n)); err != nil {
		return nil, err
	}
	devs := make([]Device, 0, int(n))
	for i := range int(n) {
		var dev C.CUdevice
		if err := drv.check("cuDeviceGet", C.kvd_cuDeviceGet(drv.d, &dev, C.int(i))); err != nil {
			return nil, err
		}
		var name [256]C.char
		if err := drv.check("cuDeviceGetName", C.kvd_cuDeviceGetName(drv.d, &name[0], C.int(len(name)), dev)); err != nil {
			return nil, err
		}
		var major, minor C.int
		if err := drv.check("cuDeviceGetAttribute", C.kvd_cuDeviceGetAttribute(drv.d, &major, attrComputeMajor, dev)); err != nil {
			return nil, err
		}
		if err := drv.check("cuDeviceGetAttribute", C.kvd_cuDeviceGetAttribute(drv.d, &minor, attrComputeMinor, dev)); err != nil {
			return nil, err
		}
		var sms C.int
		if err := drv.check("cuDeviceGetAttribute", C.kvd_cuDeviceGetAttribute(drv.d, &sms, attrSMs, dev)); err != nil {
			return nil, err
		}
		var mem C.size_t
		if err := drv.check("cuDeviceTotalMem", C.kvd_cuDeviceTotalMem(drv.d, &mem, dev)); err != nil {
			return nil, err
		}
		devs = append(devs, Device{Index: i, Name: C.GoString(&name[0]), Major: int(major), Minor: int(minor), SMs: int(sms), Memory: uint64(mem), handle: int32(dev)})
	}
	return devs, nil
}

// Context is a device's primary context. CUDA keeps the current context
// per OS thread, so every method locks the calling goroutine to its thread
// and makes the context current first.
type Context struct {
	drv *Driver
	dev Device
	ctx C.CUcontext
}

// Context retains dev's primary context.
func (drv *Driver) Context(dev Device) (*Context, error) {
	var c C.CUcontext
	if err := drv.check("cuDevicePrimaryCtxRetain", C.kvd_cuDevicePrimaryCtxRetain(drv.d, &c, C.CUdevice(dev.handle))); err != nil {
		return nil, err
	}
	return &Context{drv: drv, dev: dev, ctx: c}, nil
}

// Release gives the primary context back.
func (c *Context) Release() error {
	return c.drv.check("cuDevicePrimaryCtxRelease", C.kvd_cuDevicePrimaryCtxRelease(c.drv.d, C.CUdevice(c.dev.handle)))
}

// enter locks the goroutine to its thread and makes c current there; the
// caller defers runtime.UnlockOSThread.
func (c *Context) enter() error {
	runtime.LockOSThread()
	return c.drv.check("cuCtxSetCurrent", C.kvd_cuCtxSetCurrent(c.drv.d, c.ctx))
}

// MemInfo is the device's free and total memory in bytes.
func (c *Context) MemInfo() (free, total uint64, err error) {
	defer runtime.UnlockOSThread()
	if err = c.enter(); err != nil {
		return 0, 0, err
	}
	var f, t C.size_t
	err = c.drv.check("cuMemGetInfo", C.kvd_cuMemGetInfo(c.drv.d, &f, &t))
	return uint64(f), uint64(t), err
}

// Ptr is a device address.
type Ptr uint64

// Alloc allocates n bytes of device memory.
func (c *Context) Alloc(n int) (Ptr, error) {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return 0, err
	}
	var p C.CUdeviceptr
	if err := c.drv.check("cuMemAlloc", C.kvd_cuMemAlloc(c.drv.d, &p, C.size_t(n))); err != nil {
		return 0, err
	}
	return Ptr(p), nil
}

// Free frees device memory from Alloc.
func (c *Context) Free(p Ptr) error {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuMemFree", C.kvd_cuMemFree(c.drv.d, C.CUdeviceptr(p)))
}

// CopyToDevice copies src to dst (synchronously).
func (c *Context) CopyToDevice(dst Ptr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuMemcpyHtoD", C.kvd_cuMemcpyHtoD(c.drv.d, C.CUdeviceptr(dst), unsafe.Pointer(&src[0]), C.size_t(len(src))))
}

// CopyToHost copies len(dst) bytes from src (synchronously).
func (c *Context) CopyToHost(dst []byte, src Ptr) error {
	if len(dst) == 0 {
		return nil
	}
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuMemcpyDtoH", C.kvd_cuMemcpyDtoH(c.drv.d, unsafe.Pointer(&dst[0]), C.CUdeviceptr(src), C.size_t(len(dst))))
}

// Pinned is page-locked host memory from HostAlloc: copies from it can be
// asynchronous. Bytes aliases C memory, valid until FreeHost.
type Pinned struct {
	Bytes []byte
	p     unsafe.Pointer
}

// HostAlloc allocates n bytes of pinned host memory.
func (c *Context) HostAlloc(n int) (*Pinned, error) {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return nil, err
	}
	var p unsafe.Pointer
	if err := c.drv.check("cuMemHostAlloc", C.kvd_cuMemHostAlloc(c.drv.d, &p, C.size_t(n))); err != nil {
		return nil, err
	}
	return &Pinned{Bytes: unsafe.Slice((*byte)(p), n), p: p}, nil
}

// FreeHost frees pinned memory.
func (c *Context) FreeHost(m *Pinned) error {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	m.Bytes = nil
	return c.drv.check("cuMemFreeHost", C.kvd_cuMemFreeHost(c.drv.d, m.p))
}

// CopyToDeviceAsync queues a copy of src, which must lie in pinned memory
// and stay unchanged until s has run the copy, to dst on s.
func (c *Context) CopyToDeviceAsync(dst Ptr, src []byte, s Stream) error {
	if len(src) == 0 {
		return nil
	}
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuMemcpyHtoDAsync", C.kvd_cuMemcpyHtoDAsync(c.drv.d, C.CUdeviceptr(dst), unsafe.Pointer(&src[0]), C.size_t(len(src)), s.s))
}

// CopyToDeviceThenWait queues a copy of src (pinned, unchanged until the
// copy has run) to dst on copy, records e there and makes wait's later
// work wait for e: an upload that runs beside wait's kernels, ordered
// before the next one wait queues. e may be recorded again at once (a
// wait takes the record current when it is queued).
func (c *Context) CopyToDeviceThenWait(dst Ptr, src []byte, copy Stream, e Event, wait Stream) error {
	if len(src) == 0 {
		return nil
	}
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuMemcpyHtoDAsync+cuEventRecord+cuStreamWaitEvent", C.kvd_copyThenWait(c.drv.d, C.CUdeviceptr(dst), unsafe.Pointer(&src[0]), C.size_t(len(src)), copy.s, e.e, wait.s))
}

// IPCHandle is a CUDA IPC handle (of memory or of an event): 64 opaque
// bytes another process on the same machine opens.
type IPCHandle [64]byte

// IPCMemHandle exports the allocation that p starts.
func (c *Context) IPCMemHandle(p Ptr) (IPCHandle, error) {
	var h IPCHandle
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return h, err
	}
	err := c.drv.check("cuIpcGetMemHandle", C.kvd_cuIpcGetMemHandle(c.drv.d, unsafe.Pointer(&h[0]), C.CUdeviceptr(p)))
	return h, err
}

// OpenIPCMem maps another process's exported allocation into this one.
func (c *Context) OpenIPCMem(h IPCHandle) (Ptr, error) {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return 0, err
	}
	var p C.CUdeviceptr
	err := c.drv.check("cuIpcOpenMemHandle", C.kvd_cuIpcOpenMemHandle(c.drv.d, &p, unsafe.Pointer(&h[0])))
	return Ptr(p), err
}

// CloseIPCMem unmaps what OpenIPCMem mapped.
func (c *Context) CloseIPCMem(p Ptr) error {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuIpcCloseMemHandle", C.kvd_cuIpcCloseMemHandle(c.drv.d, C.CUdeviceptr(p)))
}

// Event is a CUDA event that other processes can wait on (interprocess,
// no timing).
type Event struct{ e C.CUevent }

// cuEventCreate's flags.
const (
	eventDefault       = 0 // records time
	eventDisableTiming = 2
	eventInterprocess  = 4 // needs eventDisableTiming
)

// NewIPCEvent creates an interprocess event.
func (c *Context) NewIPCEvent() (Event, error) {
	return c.newEvent(eventDisableTiming | eventInterprocess)
}

// NewTimingEvent creates an event that records when it happened, for
// Elapsed (profiling; not interprocess).
func (c *Context) NewTimingEvent() (Event, error) { return c.newEvent(eventDefault) }

// NewEvent creates an event for ordering work between streams of this
// process (no timing, not interprocess: the cheapest kind).
func (c *Context) NewEvent() (Event, error) { return c.newEvent(eventDisableTiming) }

func (c *Context) newEvent(flags uint) (Event, error) {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return Event{}, err
	}
	var e C.CUevent
	err := c.drv.check("cuEventCreate", C.kvd_cuEventCreate(c.drv.d, &e, C.unsigned(flags)))
	return Event{e}, err
}

// Elapsed is the device time from timing event a to b, both recorded and
// done.
func (c *Context) Elapsed(a, b Event) (time.Duration, error) {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return 0, err
	}
	var ms C.float
	err := c.drv.check("cuEventElapsedTime", C.kvd_cuEventElapsedTime(c.drv.d, &ms, a.e, b.e))
	return time.Duration(float64(ms) * 1e6), err
}

// IPCEventHandle exports e.
func (c *Context) IPCEventHandle(e Event) (IPCHandle, error) {
	var h IPCHandle
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return h, err
	}
	err := c.drv.check("cuIpcGetEventHandle", C.kvd_cuIpcGetEventHandle(c.drv.d, unsafe.Pointer(&h[0]), e.e))
	return h, err
}

// OpenIPCEvent opens another process's exported event.
func (c *Context) OpenIPCEvent(h IPCHandle) (Event, error) {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return Event{}, err
	}
	var e C.CUevent
	err := c.drv.check("cuIpcOpenEventHandle", C.kvd_cuIpcOpenEventHandle(c.drv.d, &e, unsafe.Pointer(&h[0])))
	return Event{e}, err
}

// Record marks e at the current end of s's work.
func (c *Context) Record(e Event, s Stream) error {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuEventRecord", C.kvd_cuEventRecord(c.drv.d, e.e, s.s))
}

// Wait makes s's later work wait for e (on the device; the host goes on).
func (c *Context) Wait(s Stream, e Event) error {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuStreamWaitEvent", C.kvd_cuStreamWaitEvent(c.drv.d, s.s, e.e))
}

// SyncEvent waits on the host until e has happened.
func (c *Context) SyncEvent(e Event) error {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuEventSynchronize", C.kvd_cuEventSynchronize(c.drv.d, e.e))
}

// Done reports whether e has happened, without waiting.
func (c *Context) Done(e Event) (bool, error) {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return false, err
	}
	r := C.kvd_cuEventQuery(c.drv.d, e.e)
	if r == 600 { // CUDA_ERROR_NOT_READY
		return false, nil
	}
	return true, c.drv.check("cuEventQuery", r)
}

// VMM is device memory made with cuMemCreate and mapped into this process:
// its physical memory can be shared with another process as a POSIX file
// descriptor, which crosses a unix socket like a memfd, and each process
// maps it at the granularity the driver recommends.
type VMM struct {
	Ptr    Ptr
	Size   int // bytes mapped: the size asked for, rounded up to the granularity
	handle C.CUmemGenericAllocationHandle
}

// VMMAlloc makes and maps at least n bytes of device memory.
func (c *Context) VMMAlloc(n int) (*VMM, error) {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return nil, err
	}
	size, err := c.vmmSize(n)
	if err != nil {
		return nil, err
	}
	v := &VMM{Size: size}
	if err := c.drv.check("cuMemCreate", C.kvd_vmm_create(c.drv.d, C.int(c.dev.handle), C.size_t(size), &v.handle)); err != nil {
		return nil, err
	}
	if err := c.vmmMap(v); err != nil {
		C.kvd_cuMemRelease(c.drv.d, v.handle)
		return nil, err
	}
	return v, nil
}

// vmmSize is n bytes rounded up to the granularity the driver recommends
// for this context's device (the context is entered).
func (c *Context) vmmSize(n int) (int, error) {
	var g C.size_t
	if err := c.drv.check("cuMemGetAllocationGranularity", C.kvd_vmm_granularity(c.drv.d, C.int(c.dev.handle), &g)); err != nil {
		return 0, err
	}
	return (n + int(g) - 1) / int(g) * int(g), nil
}

func (c *Context) vmmMap(v *VMM) error {
	var p C.CUdeviceptr
	var what *C.char
	if r := C.kvd_vmm_map(c.drv.d, C.int(c.dev.handle), v.handle, C.size_t(v.Size), &p, &what); r != 0 {
		return c.drv.check(C.GoString(what), r)
	}
	v.Ptr = Ptr(p)
	return nil
}

// VMMExport returns a new file descriptor for v's memory; the caller
// closes it.
func (c *Context) VMMExport(v *VMM) (int, error) {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return -1, err
	}
	var fd C.int
	err := c.drv.check("cuMemExportToShareableHandle", C.kvd_vmm_export(c.drv.d, v.handle, &fd))
	return int(fd), err
}

// VMMImport maps the device memory that fd (from another process's
// VMMExport of a VMMAlloc of n bytes) names; the caller still owns fd.
func (c *Context) VMMImport(fd, n int) (*VMM, error) {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return nil, err
	}
	size, err := c.vmmSize(n)
	if err != nil {
		return nil, err
	}
	v := &VMM{Size: size}
	if err := c.drv.check("cuMemImportFromShareableHandle", C.kvd_vmm_import(c.drv.d, C.int(fd), &v.handle)); err != nil {
		return nil, err
	}
	if err := c.vmmMap(v); err != nil {
		C.kvd_cuMemRelease(c.drv.d, v.handle)
		return nil, err
	}
	return v, nil
}

// VMMFree unmaps v and releases this process's hold on its memory (which
// is freed when no process holds it).
func (c *Context) VMMFree(v *VMM) error {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuMemUnmap", C.kvd_vmm_unmap(c.drv.d, C.CUdeviceptr(v.Ptr), C.size_t(v.Size), v.handle))
}

// DestroyEvent destroys e.
func (c *Context) DestroyEvent(e Event) error {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuEventDestroy", C.kvd_cuEventDestroy(c.drv.d, e.e))
}

// Memset32 sets n 32-bit words at p to v (tests poison outputs with it).
func (c *Context) Memset32(p Ptr, v uint32, n int) error {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuMemsetD32", C.kvd_cuMemsetD32(c.drv.d, C.CUdeviceptr(p), C.uint(v), C.size_t(n)))
}

// Module is loaded device code: PTX (JIT-compiled by the driver for this
// card) or a cubin built for it.
type Module struct {
	c *Context
	m C.CUmodule
}

// Function is a kernel of a Module.
type Function struct {
	c    *Context
	f    C.CUfunction
	name string
}

// LoadModule loads a PTX text or cubin image.
func (c *Context) LoadModule(image []byte) (*Module, error) {
	if len(image) == 0 {
		return nil, fmt.Errorf("cuda: empty module image")
	}
	img := C.CBytes(append(image, 0)) // PTX must end in NUL; a cubin does not mind
	defer C.free(img)
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return nil, err
	}
	var m C.CUmodule
	if err := c.drv.check("cuModuleLoadData", C.kvd_cuModuleLoadData(c.drv.d, &m, img)); err != nil {
		return nil, err
	}
	return &Module{c: c, m: m}, nil
}

// Unload frees the module.
func (m *Module) Unload() error {
	defer runtime.UnlockOSThread()
	if err := m.c.enter(); err != nil {
		return err
	}
	return m.c.drv.check("cuModuleUnload", C.kvd_cuModuleUnload(m.c.drv.d, m.m))
}

// Function looks a kernel up by its (extern "C") name.
func (m *Module) Function(name string) (*Function, error) {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	defer runtime.UnlockOSThread()
	if err := m.c.enter(); err != nil {
		return nil, err
	}
	var f C.CUfunction
	if err := m.c.drv.check("cuModuleGetFunction", C.kvd_cuModuleGetFunction(m.c.drv.d, &f, m.m, cname)); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Function{c: m.c, f: f, name: name}, nil
}

// SetMaxDynamicShared lets launches of f ask for up to n bytes of dynamic
// shared memory (more than the default 48 KB needs this).
func (f *Function) SetMaxDynamicShared(n int) error {
	defer runtime.UnlockOSThread()
	if err := f.c.enter(); err != nil {
		return err
	}
	const maxDynamicShared = 8 // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
	return f.c.drv.check("cuFuncSetAttribute", C.kvd_cuFuncSetAttribute(f.c.drv.d, f.f, maxDynamicShared, C.int(n)))
}

// Occupancy is how many CTAs of f, of threads threads and smem bytes of
// dynamic shared memory each, an SM holds at once
// (cuOccupancyMaxActiveBlocksPerMultiprocessor).
func (f *Function) Occupancy(threads, smem int) (int, error) {
	defer runtime.UnlockOSThread()
	if err := f.c.enter(); err != nil {
		return 0, err
	}
	var n C.int
	if err := f.c.drv.check("cuOccupancyMaxActiveBlocksPerMultiprocessor", C.kvd_cuOccupancy(f.c.drv.d, &n, f.f, C.int(threads), C.size_t(smem))); err != nil {
		return 0, fmt.Errorf("%s: %w", f.name, err)
	}
	return int(n), nil
}

// Stream is a CUDA stream (non-blocking with respect to the legacy
// default stream). The zero Stream is the default stream.
type Stream struct {
	s C.CUstream
}

// NewStream creates a stream.
func (c *Context) NewStream() (Stream, error) {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return Stream{}, err
	}
	var s C.CUstream
	err := c.drv.check("cuStreamCreate", C.kvd_cuStreamCreate(c.drv.d, &s))
	return Stream{s}, err
}

// DestroyStream destroys s.
func (c *Context) DestroyStream(s Stream) error {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuStreamDestroy", C.kvd_cuStreamDestroy(c.drv.d, s.s))
}

// Sync waits for everything queued on s.
func (c *Context) Sync(s Stream) error {
	defer runtime.UnlockOSThread()
	if err := c.enter(); err != nil {
		return err
	}
	return c.drv.check("cuStreamSynchronize", C.kvd_cuStreamSynchronize(c.drv.d, s.s))
}

// Dim3 is a grid or block shape.
type Dim3 struct{ X, Y, Z uint32 }

// Launch queues f on s. Arguments are Ptr, int32, uint32, int64, uint64
// or float32, in the kernel's parameter order (at most 32).
func (f *Function) Launch(s Stream, grid, block Dim3, shared uint32, args ...any) error {
	if len(args) > 32 {
		return fmt.Errorf("%s: %d arguments (at most 32)", f.name, len(args))
	}
	var slots [32]C.ulonglong // plain words: cgo lets C read them for the call
	for i, a := range args {
		switch v := a.(type) {
		case Ptr:
			slots[i] = C.ulonglong(v)
		case int32:
			*(*int32)(unsafe.Pointer(&slots[i])) = v
		case uint32:
			*(*uint32)(unsafe.Pointer(&slots[i])) = v
		case int64:
			*(*int64)(unsafe.Pointer(&slots[i])) = v
		case uint64:
			slots[i] = C.ulonglong(v)
		case float32:
			*(*float32)(unsafe.Pointer(&slots[i])) = v
		default:
			return fmt.Errorf("%s: argument %d has type %T", f.name, i, a)
		}
	}
	for _, d := range []*Dim3{&grid, &block} {
		d.X, d.Y, d.Z = max(d.X, 1), max(d.Y, 1), max(d.Z, 1)
	}
	defer runtime.UnlockOSThread()
	if err := f.c.enter(); err != nil {
		return err
	}
	r := C.kvd_cuLaunch(f.c.drv.d, f.f, C.uint(grid.X), C.uint(grid.Y), C.uint(grid.Z),
		C.uint(block.X), C.uint(block.Y), C.uint(block.Z), C.uint(shared), s.s, &slots[0], C.int(len(args)))
	if err := f.c.drv.check("cuLaunchKernel", r); err != nil {
		return fmt.Errorf("%s: %w", f.name, err)
	}
	return nil
}
