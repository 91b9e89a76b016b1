//go:build cgo

package cuda

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"unsafe"
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

// TestNVMLNotALibrary loads libraries that are not NVML.
func TestNVMLNotALibrary(t *testing.T) {
	for _, c := range []struct{ lib, want string }{
		{"/nonexistent/libnvidia-ml.so.1", "/nonexistent/libnvidia-ml.so.1"},
		{"libc.so.6", "nvmlInit_v2"},
	} {
		t.Setenv("KVD_LIBNVML", c.lib)
		_, err := OpenNVML(0)
		if !errors.Is(err, ErrNoDriver) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("KVD_LIBNVML=%s: %v, want ErrNoDriver saying %q", c.lib, err, c.want)
		}
	}
}

// testNVML checks NVML's reading of dev against the driver's.
func testNVML(t *testing.T, dev Device) {
	m, err := OpenNVML(dev.Index)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, err := m.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("NVML: %+v", s)
	if s.MemoryTotal < dev.Memory*9/10 || s.MemoryTotal > dev.Memory*11/10 || s.MemoryUsed > s.MemoryTotal ||
		s.Temperature < 5 || s.Temperature > 110 || s.Utilization < 0 || s.Utilization > 100 {
		t.Errorf("NVML reading %+v for a device the driver says has %d bytes", s, dev.Memory)
	}
	m.Close()
	if _, err := m.Stats(); err == nil {
		t.Error("Stats after Close succeeded")
	}
}

func testDevice(t *testing.T, drv *Driver) {
	devs, err := drv.Devices()
	if err != nil || len(devs) == 0 {
		t.Fatalf("driver %s: devices %v, %v", drv.Version(), devs, err)
	}
	t.Logf("driver %s: %v", drv.Version(), devs)
	if devs[0].SMs < 1 {
		t.Errorf("device %v reports %d multiprocessors", devs[0], devs[0].SMs)
	}
	testNVML(t, devs[0])
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
	testLaunch(t, ctx)
	testGemm(t, ctx)
	// More than the card has: a typed error naming the call and the code.
	_, err = ctx.Alloc(int(total) * 2)
	var ce *Error
	if !errors.As(err, &ce) || ce.Call != "cuMemAlloc" || ce.Name != "CUDA_ERROR_OUT_OF_MEMORY" {
		t.Fatalf("oversized cuMemAlloc: %v", err)
	}
}

// add1PTX adds 1 to n floats; hand-written PTX, JIT-compiled by the driver.
const add1PTX = `.version 7.0
.target sm_50
.address_size 64
.visible .entry add1(.param .u64 p, .param .u32 n)
{
	.reg .pred %p<2>;
	.reg .b32 %r<6>;
	.reg .f32 %f<3>;
	.reg .b64 %rd<5>;
	ld.param.u64 %rd1, [p];
	ld.param.u32 %r2, [n];
	mov.u32 %r3, %ctaid.x;
	mov.u32 %r4, %ntid.x;
	mov.u32 %r5, %tid.x;
	mad.lo.s32 %r1, %r3, %r4, %r5;
	setp.ge.u32 %p1, %r1, %r2;
	@%p1 bra DONE;
	cvta.to.global.u64 %rd2, %rd1;
	mul.wide.u32 %rd3, %r1, 4;
	add.s64 %rd4, %rd2, %rd3;
	ld.global.f32 %f1, [%rd4];
	add.f32 %f2, %f1, 0f3F800000;
	st.global.f32 [%rd4], %f2;
DONE:
	ret;
}
`

func testLaunch(t *testing.T, ctx *Context) {
	const n = 1000
	p, err := ctx.Alloc(4 * (n + 24))
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Free(p)
	// 2.0 everywhere, then add 1 to the first n only.
	if err := ctx.Memset32(p, math.Float32bits(2), n+24); err != nil {
		t.Fatal(err)
	}
	m, err := ctx.LoadModule([]byte(add1PTX))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unload()
	if _, err := m.Function("nope"); err == nil {
		t.Error("a kernel that is not there was found")
	}
	f, err := m.Function("add1")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ctx.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.DestroyStream(s)
	if err := f.Launch(s, Dim3{X: (n + 255) / 256}, Dim3{X: 256}, 0, p, uint32(n)); err != nil {
		t.Fatal(err)
	}
	if err := ctx.Sync(s); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, n+24)
	if err := ctx.CopyToHost(unsafe.Slice((*byte)(unsafe.Pointer(&got[0])), 4*len(got)), p); err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if want := float32(2 + b2f(i < n)); v != want {
			t.Fatalf("element %d = %v, want %v", i, v, want)
		}
	}
	if err := f.Launch(s, Dim3{X: 1}, Dim3{X: 1}, 0, "string"); err == nil {
		t.Error("a string argument was taken")
	}
}

func b2f(b bool) float32 {
	if b {
		return 1
	}
	return 0
}

// testGemm checks y[T, N] = x[T, K]·Wᵀ (row-major, W [N, K]) in fp32.
func testGemm(t *testing.T, ctx *Context) {
	bl, err := ctx.BLAS()
	if err != nil {
		t.Fatal(err)
	}
	defer bl.Close()
	t.Logf("cuBLAS %s, version %d", bl.Path, bl.Version)
	const T, N, K = 5, 7, 33
	x, w := make([]float32, T*K), make([]float32, N*K)
	for i := range x {
		x[i] = rand.Float32() - 0.5
	}
	for i := range w {
		w[i] = rand.Float32() - 0.5
	}
	up := func(v []float32) Ptr {
		p, err := ctx.Alloc(4 * len(v))
		if err != nil {
			t.Fatal(err)
		}
		if err := ctx.CopyToDevice(p, unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))); err != nil {
			t.Fatal(err)
		}
		return p
	}
	px, pw, py := up(x), up(w), up(make([]float32, T*N))
	defer ctx.Free(px)
	defer ctx.Free(pw)
	defer ctx.Free(py)
	if err := bl.Gemm(Trans, NoTrans, N, T, K, 1, Matrix{pw, Float32, K}, Matrix{px, Float32, K}, 0, Matrix{py, Float32, N}); err != nil {
		t.Fatal(err)
	}
	if err := ctx.Sync(Stream{}); err != nil {
		t.Fatal(err)
	}
	y := make([]float32, T*N)
	if err := ctx.CopyToHost(unsafe.Slice((*byte)(unsafe.Pointer(&y[0])), 4*len(y)), py); err != nil {
		t.Fatal(err)
	}
	for r := range T {
		for c := range N {
			var want float64
			for k := range K {
				want += float64(x[r*K+k]) * float64(w[c*K+k])
			}
			if math.Abs(float64(y[r*N+c])-want) > 1e-4 {
				t.Fatalf("y[%d,%d] = %v, want %v", r, c, y[r*N+c], want)
			}
		}
	}
	// A leading dimension too small: cuBLAS's own error, typed.
	err = bl.Gemm(Trans, NoTrans, N, T, K, 1, Matrix{pw, Float32, 1}, Matrix{px, Float32, K}, 0, Matrix{py, Float32, N})
	var be *BlasError
	if !errors.As(err, &be) || be.Status != 7 {
		t.Errorf("GEMM with lda 1: %v, want CUBLAS_STATUS_INVALID_VALUE", err)
	}
}
