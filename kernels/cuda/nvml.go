//go:build cgo

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

// Our own declarations of the NVML entry points we call (nvml.h's
// nvmlMemory_t and nvmlUtilization_t layouts), so no header is needed.
typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } kvd_nvmlMemory;
typedef struct { unsigned int gpu, memory; } kvd_nvmlUtilization;

typedef struct {
	void *lib;
	nvmlReturn_t (*init)(void);
	nvmlReturn_t (*shutdown)(void);
	nvmlReturn_t (*count)(unsigned int *);
	nvmlReturn_t (*handle)(unsigned int, nvmlDevice_t *);
	nvmlReturn_t (*memory)(nvmlDevice_t, kvd_nvmlMemory *);
	nvmlReturn_t (*util)(nvmlDevice_t, kvd_nvmlUtilization *);
	nvmlReturn_t (*temp)(nvmlDevice_t, int, unsigned int *);
	const char *(*errstr)(nvmlReturn_t);
} kvd_nvml;

static const char *kvd_nvml_open(kvd_nvml *n, const char *path) {
	n->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!n->lib) return dlerror();
#define SYM(field, name) \
	if (!(*(void **)(&n->field) = dlsym(n->lib, name))) return name;
	SYM(init, "nvmlInit_v2")
	SYM(shutdown, "nvmlShutdown")
	SYM(count, "nvmlDeviceGetCount_v2")
	SYM(handle, "nvmlDeviceGetHandleByIndex_v2")
	SYM(memory, "nvmlDeviceGetMemoryInfo")
	SYM(util, "nvmlDeviceGetUtilizationRates")
	SYM(temp, "nvmlDeviceGetTemperature")
	SYM(errstr, "nvmlErrorString")
#undef SYM
	return NULL;
}

static nvmlReturn_t kvd_nvml_init(kvd_nvml *n) { return n->init(); }
static nvmlReturn_t kvd_nvml_shutdown(kvd_nvml *n) { return n->shutdown(); }
static nvmlReturn_t kvd_nvml_count(kvd_nvml *n, unsigned int *c) { return n->count(c); }
static nvmlReturn_t kvd_nvml_handle(kvd_nvml *n, unsigned int i, nvmlDevice_t *d) { return n->handle(i, d); }
static nvmlReturn_t kvd_nvml_memory(kvd_nvml *n, nvmlDevice_t d, kvd_nvmlMemory *m) { return n->memory(d, m); }
static nvmlReturn_t kvd_nvml_util(kvd_nvml *n, nvmlDevice_t d, kvd_nvmlUtilization *u) { return n->util(d, u); }
static nvmlReturn_t kvd_nvml_temp(kvd_nvml *n, nvmlDevice_t d, unsigned int *t) { return n->temp(d, 0, t); } // NVML_TEMPERATURE_GPU
static const char *kvd_nvml_errstr(kvd_nvml *n, nvmlReturn_t r) { return n->errstr(r); }
*/
import "C"

import (
	"fmt"
	"os"
	"sync"
	"unsafe"
)

// NVML reads a GPU's memory, utilisation and temperature through
// libnvidia-ml.so.1 (or $KVD_LIBNVML), dlopened like the driver.
type NVML struct {
	mu  sync.Mutex
	n   *C.kvd_nvml
	dev C.nvmlDevice_t
}

// GPUStats is one reading.
type GPUStats struct {
	MemoryUsed, MemoryTotal uint64 // bytes
	Utilization             int    // percent of the last sample period with a kernel running
	MemoryUtilization       int    // percent of it with device memory read or written
	Temperature             int    // degrees Celsius
}

// OpenNVML opens NVML for GPU index. Errors wrap ErrNoDriver.
func OpenNVML(index int) (*NVML, error) {
	path := "libnvidia-ml.so.1"
	if p := os.Getenv("KVD_LIBNVML"); p != "" {
		path = p
	}
	n := (*C.kvd_nvml)(C.calloc(1, C.size_t(unsafe.Sizeof(C.kvd_nvml{}))))
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	if msg := C.kvd_nvml_open(n, cpath); msg != nil {
		if n.lib != nil {
			C.dlclose(n.lib)
		}
		C.free(unsafe.Pointer(n))
		return nil, fmt.Errorf("%w: NVML %s: %s", ErrNoDriver, path, C.GoString(msg))
	}
	m := &NVML{n: n}
	if err := m.check("nvmlInit", C.kvd_nvml_init(n)); err != nil {
		C.dlclose(n.lib)
		C.free(unsafe.Pointer(n))
		return nil, fmt.Errorf("%w: %v", ErrNoDriver, err)
	}
	if err := m.check("nvmlDeviceGetHandleByIndex", C.kvd_nvml_handle(n, C.uint(index), &m.dev)); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func (m *NVML) check(call string, r C.nvmlReturn_t) error {
	if r == 0 {
		return nil
	}
	return &Error{Call: call, Code: int(r), Name: fmt.Sprintf("NVML_ERROR_%d", int(r)), Message: C.GoString(C.kvd_nvml_errstr(m.n, r))}
}

// Stats reads the GPU now.
func (m *NVML) Stats() (GPUStats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var s GPUStats
	if m.n == nil {
		return s, fmt.Errorf("NVML closed")
	}
	var mem C.kvd_nvmlMemory
	if err := m.check("nvmlDeviceGetMemoryInfo", C.kvd_nvml_memory(m.n, m.dev, &mem)); err != nil {
		return s, err
	}
	var u C.kvd_nvmlUtilization
	if err := m.check("nvmlDeviceGetUtilizationRates", C.kvd_nvml_util(m.n, m.dev, &u)); err != nil {
		return s, err
	}
	var t C.uint
	if err := m.check("nvmlDeviceGetTemperature", C.kvd_nvml_temp(m.n, m.dev, &t)); err != nil {
		return s, err
	}
	return GPUStats{MemoryUsed: uint64(mem.used), MemoryTotal: uint64(mem.total), Utilization: int(u.gpu), MemoryUtilization: int(u.memory), Temperature: int(t)}, nil
}

// Close shuts NVML down.
func (m *NVML) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.n == nil {
		return
	}
	C.kvd_nvml_shutdown(m.n)
	C.dlclose(m.n.lib)
	C.free(unsafe.Pointer(m.n))
	m.n = nil
}
