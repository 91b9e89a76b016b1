package kernels

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kvd-project/kvd/kernels/cuda"
)

// Devices are the values --device takes.
const (
	DeviceAuto = "auto"
	DeviceCPU  = "cpu"
	DeviceCUDA = "cuda"
)

// Select opens the backend --device names: cpu, cuda (GPU 0; an error
// that says what is missing when there is none), or auto (the GPU when
// one is usable, else the CPU). It also says why, for the log.
func Select(device string) (b Backend, why string, err error) {
	switch device {
	case DeviceCPU:
		return NewCPU(), "--device cpu", nil
	case DeviceCUDA, DeviceAuto:
	default:
		return nil, "", fmt.Errorf("--device %q: want auto, cpu or cuda", device)
	}
	g, err := NewCUDA(0)
	if err == nil {
		return g, fmt.Sprintf("--device %s: %s", device, g.Device()), nil
	}
	if device == DeviceAuto && errors.Is(err, cuda.ErrNoDriver) {
		return NewCPU(), "--device auto: no GPU (" + firstLine(err.Error()) + ")", nil
	}
	return nil, "", fmt.Errorf("--device %s: %w (install the NVIDIA driver, set KVD_LIBCUDA to libcuda.so.1's path, or use --device cpu)", device, err)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
