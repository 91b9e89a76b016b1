package cuda

import (
	"errors"
	"strings"
	"testing"
)

// TestOpen runs against whatever this machine has: without a GPU, Open must
// say so with ErrNoDriver; with one, memory must round-trip through the
// device and a failed call must come back as a typed *Error.
func TestOpen(t *testing.T) {
	drv, err := Open()
	if err != nil {
		if !errors.Is(err, ErrNoDriver) || !(strings.Contains(err.Error(), "libcuda") || strings.Contains(err.Error(), "cgo") || strings.Contains(err.Error(), "cuInit")) {
			t.Fatalf("Open without a usable driver: %v", err)
		}
		t.Logf("no GPU here: %v", err)
		return
	}
	defer drv.Close()
	testDevice(t, drv)
}
