//go:build !cgo

package kernels

import (
	"fmt"

	"github.com/kvd-project/kvd/kernels/cuda"
)

// CUDA is unavailable in a binary built without cgo.
type CUDA struct{ Backend }

// NewCUDA reports cuda.ErrNoDriver: the binary was built with CGO_ENABLED=0.
func NewCUDA(index int) (*CUDA, error) {
	return nil, fmt.Errorf("%w: this binary was built without cgo (CGO_ENABLED=0)", cuda.ErrNoDriver)
}

// Close does nothing.
func (c *CUDA) Close() {}

// Device is the zero Device.
func (c *CUDA) Device() cuda.Device { return cuda.Device{} }

// MemInfo reports no memory.
func (c *CUDA) MemInfo() (free, total uint64, err error) { return 0, 0, cuda.ErrNoDriver }
