//go:build cgo

package cuda

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestOpenNotADriver loads libraries that are not a CUDA driver.
func TestOpenNotADriver(t *testing.T) {
	for _, c := range []struct{ lib, want string }{
		{"/nonexistent/libcuda.so.1", "cannot load /nonexistent/libcuda.so.1"},
		{"libc.so.6", "libc.so.6 has no cuInit"},
	} {
		t.Setenv("KVD_LIBCUDA", c.lib)
		_, err := Open()
		if !errors.Is(err, ErrNoDriver) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("KVD_LIBCUDA=%s: %v, want ErrNoDriver saying %q", c.lib, err, c.want)
		}
	}
}

func testDevice(t *testing.T, drv *Driver) {
	devs, err := drv.Devices()
	if err != nil || len(devs) == 0 {
		t.Fatalf("driver %s: devices %v, %v", drv.Version(), devs, err)
	}
	t.Logf("driver %s: %v", drv.Version(), devs)
	ctx, err := drv.Context(devs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Release()
	free, total, err := ctx.MemInfo()
	if err != nil || free > total || total == 0 {
		t.Fatalf("MemInfo: free %d total %d, %v", free, total, err)
	}
	src := make([]byte, 1<<20+3)
	for i := range src {
		src[i] = byte(rand.IntN(256))
	}
	p, err := ctx.Alloc(len(src))
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Free(p)
	if err := ctx.CopyToDevice(p, src); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(src))
	if err := ctx.CopyToHost(back, p); err != nil || !bytes.Equal(back, src) {
		t.Fatalf("round trip through the device: equal %v, %v", bytes.Equal(back, src), err)
	}
	// More than the card has: a typed error naming the call and the code.
	_, err = ctx.Alloc(int(total) * 2)
	var ce *Error
	if !errors.As(err, &ce) || ce.Call != "cuMemAlloc" || ce.Name != "CUDA_ERROR_OUT_OF_MEMORY" {
		t.Fatalf("oversized cuMemAlloc: %v", err)
	}
}
