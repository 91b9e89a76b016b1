package cli

import (
	"fmt"
	"log/slog"

	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kvd/pool"
)

// selectDevice opens the backend --device asks for and logs which one and
// why. The sidecar keeps the CPU: kvd's pool is shared host memory until
// it can be shared over CUDA IPC.
func selectDevice(device string, embedded bool, log *slog.Logger) (kernels.Backend, error) {
	if !embedded {
		switch device {
		case kernels.DeviceCUDA:
			return nil, fmt.Errorf("%w: --device cuda needs --embedded: kvd's pool is shared host memory, which the GPU backend cannot use yet", ErrUsage)
		case kernels.DeviceAuto:
			log.Info("backend chosen", "backend", "cpu", "why", "--device auto with kvd as a sidecar: its pool is shared host memory")
			return kernels.NewCPU(), nil
		}
	}
	b, why, err := kernels.Select(device)
	if err != nil {
		return nil, err
	}
	log.Info("backend chosen", "backend", b.Name(), "why", why)
	return b, nil
}

// freeMemory is what a --kv-memory fraction is taken of: free GPU memory
// (after the weights) for the CUDA backend, available host memory else.
func freeMemory(b kernels.Backend) func() (int64, error) {
	if g, ok := b.(*kernels.CUDA); ok {
		return func() (int64, error) {
			free, _, err := g.MemInfo()
			return int64(free), err
		}
	}
	return pool.AvailableMemory
}
