//go:build !cgo

package cuda

import "fmt"

// Driver is unavailable without cgo.
type Driver struct{}

// Open reports ErrNoDriver: this binary was built with CGO_ENABLED=0.
func Open() (*Driver, error) {
	return nil, fmt.Errorf("%w: this binary was built without cgo (CGO_ENABLED=0)", ErrNoDriver)
}

// Close does nothing.
func (*Driver) Close() {}

// NVML is unavailable without cgo.
type NVML struct{}

// GPUStats is one reading.
type GPUStats struct {
	MemoryUsed, MemoryTotal uint64
	Utilization             int
	MemoryUtilization       int
	Temperature             int
}

// OpenNVML reports ErrNoDriver.
func OpenNVML(index int) (*NVML, error) {
	return nil, fmt.Errorf("%w: this binary was built without cgo (CGO_ENABLED=0)", ErrNoDriver)
}

// Stats reports ErrNoDriver.
func (*NVML) Stats() (GPUStats, error) { return GPUStats{}, ErrNoDriver }

// Close does nothing.
func (*NVML) Close() {}

// IPCHandle is a CUDA IPC handle (never made without cgo).
type IPCHandle [64]byte

// Event is a CUDA event (never made without cgo).
type Event struct{}

// VMM is device memory shared by file descriptor (never made without cgo).
type VMM struct {
	Ptr  uint64
	Size int
}
