// Package cuda is kvd's thin shim over the CUDA driver API: it dlopens
// libcuda.so.1 at run time through our own declarations, so building needs
// no CUDA headers or libraries and one binary runs with or without a GPU
// (DESIGN.md, Kernels). CUDA errors become Go errors here, once: an *Error
// names the call and the driver's error name and text.
//
// Without cgo (CGO_ENABLED=0) Open always reports ErrNoDriver.
package cuda

import (
	"errors"
	"fmt"
)

// ErrNoDriver means no usable CUDA driver: the library is missing, is not
// a CUDA driver, or cuInit failed (no device, driver/kernel-module
// mismatch). The wrapping error says which.
var ErrNoDriver = errors.New("no usable CUDA driver")

// Error is a failed driver call.
type Error struct {
	Call    string // the entry point, as "cuMemAlloc"
	Code    int    // the CUresult
	Name    string // as "CUDA_ERROR_OUT_OF_MEMORY"
	Message string // the driver's text for it
}

func (e *Error) Error() string {
	if e.Name == "" {
		return fmt.Sprintf("%s: CUDA error %d", e.Call, e.Code)
	}
	return fmt.Sprintf("%s: %s (%s)", e.Call, e.Name, e.Message)
}

// Device is one GPU as the driver reports it.
type Device struct {
	Index        int
	Name         string
	Major, Minor int    // compute capability
	SMs          int    // multiprocessors
	Memory       uint64 // bytes
	handle       int32  // the CUdevice
}

// String is how logs name the device: "NVIDIA H100 80GB HBM3 (sm_90, 79.2 GiB)".
func (d Device) String() string {
	return fmt.Sprintf("%s (sm_%d%d, %.1f GiB)", d.Name, d.Major, d.Minor, float64(d.Memory)/(1<<30))
}
