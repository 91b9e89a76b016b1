//go:build cgo

package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/kvd-project/kvd/kernels/cuda"
)

// The kernels that write a GEMM's operand in bf16 (AllocLinearInput:
// rmsnorm_bf16out, add_rmsnorm_bf16out, silu_mul_bf16out) and Linear over
// such an operand (cuBLAS, gemv_bf16_bf16in). Like gpu_test.go's, these
// tests skip without a GPU.

// bf16Case is one shape: T rows, hidden size D, MLP width F, and N output
// features of the Linears checked on the results.
type bf16Case struct {
	name    string
	T, D, F int
	N       int
}

func bf16Cases() []bf16Case {
	return []bf16Case{
		{name: "one row", T: 1, D: 4096, F: 14336, N: 1024}, // decode of one sequence: gemv_bf16_bf16in
		{name: "small odd", T: 17, D: 384, F: 1000, N: 96},
		{name: "llama-8b decode", T: 32, D: 4096, F: 14336, N: 1024},
		{name: "llama-8b odd rows", T: 97, D: 4096, F: 14336, N: 512},
	}
}

func TestGPUBF16Out(t *testing.T) {
	g, cpu := newGPU(t), NewCPU()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KVD_TEST_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("KVD_TEST_SEED: %v", err)
		}
	}
	t.Logf("seed %d (KVD_TEST_SEED=%[1]d repeats it)", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for _, tc := range bf16Cases() {
		t.Run(tc.name, func(t *testing.T) {
			T, D, F := tc.T, tc.D, tc.F
			w := randn(rng, D)
			gw := g.Weight(w, D)
			const eps = 1e-5
			// Each producer's bf16 output against the CPU's float32
			// result rounded, within one bf16 step (the CPU sums squares
			// in float64 and takes exp in float64: the float32 values
			// differ in their last bits), and against the GPU's float32
			// kernel rounded, exactly (the same arithmetic, then the
			// rounding to_bf16 would have done).
			var ops []linearInput

			// rmsnorm_bf16out.
			x := randn(rng, T*D)
			want := cpu.Alloc(T, D)
			cpu.RMSNorm(want, cpu.FromHost(x, T, D), cpu.FromHost(w, D), eps)
			gx := g.FromHost(x, T, D)
			normed, normed32 := g.poisonedLinearInput(T, D), g.poisoned(T, D)
			g.RMSNorm(normed, gx, gw, eps)
			g.RMSNorm(normed32, gx, gw, eps)
			ops = append(ops, linearInput{"rmsnorm_bf16out", normed, g.host(t, normed), g.host(t, normed32)})
			checkBF16(t, "rmsnorm_bf16out", ops[0].values, want.data, 1)
			checkBF16(t, "rmsnorm_bf16out against rmsnorm", ops[0].values, ops[0].f32, 0)

			// add_rmsnorm_bf16out: out as rmsnorm's, the residual updated
			// in place in float32, as the CPU does it.
			res, delta := randn(rng, T*D), randn(rng, T*D)
			wx := cpu.FromHost(slices.Clone(res), T, D)
			cpu.AddRMSNorm(want, wx, cpu.FromHost(delta, T, D), cpu.FromHost(w, D), eps)
			gres, gres32, gdelta := g.FromHost(res, T, D), g.FromHost(res, T, D), g.FromHost(delta, T, D)
			added, added32 := g.poisonedLinearInput(T, D), g.poisoned(T, D)
			g.AddRMSNorm(added, gres, gdelta, gw, eps)
			g.AddRMSNorm(added32, gres32, gdelta, gw, eps)
			check(t, "add_rmsnorm_bf16out residual", g.host(t, gres), wx.data, 0)
			ops = append(ops, linearInput{"add_rmsnorm_bf16out", added, g.host(t, added), g.host(t, added32)})
			checkBF16(t, "add_rmsnorm_bf16out", ops[1].values, want.data, 1)
			checkBF16(t, "add_rmsnorm_bf16out against add_rmsnorm", ops[1].values, ops[1].f32, 0)

			// silu_mul_bf16out, F wide.
			gu := randn(rng, T*2*F)
			wantAct := cpu.Alloc(T, F)
			cpu.SiLUMul(wantAct, cpu.FromHost(gu, T, 2*F))
			ggu := g.FromHost(gu, T, 2*F)
			act, act32 := g.poisonedLinearInput(T, F), g.poisoned(T, F)
			g.SiLUMul(act, ggu)
			g.SiLUMul(act32, ggu)
			ops = append(ops, linearInput{"silu_mul_bf16out", act, g.host(t, act), g.host(t, act32)})
			checkBF16(t, "silu_mul_bf16out", ops[2].values, wantAct.data, 1)
			checkBF16(t, "silu_mul_bf16out against silu_mul", ops[2].values, ops[2].f32, 0)

			// The gate and up projections into a bf16 out (AllocGateUp):
			// cuBLAS's float32 sums rounded, against the float32 GEMM's
			// output, within half a bf16 step of it or, for sums that
			// nearly cancel, 1e-3 of the outputs' RMS (cuBLAS may pick
			// another kernel, or split K, for each output type); then
			// silu_mul_bf16in_bf16out over them against silu_mul_bf16out
			// over the same values in float32, exactly.
			wgu := g.Weight(bf16Round(randn(rng, 2*F*D)), 2*F, D)
			g.gateUpBF16 = true // the default
			gu16, gu32 := g.AllocGateUp(T, 2*F), g.poisoned(T, 2*F)
			g.gateUpBF16 = false // KVD_GATEUP_BF16=0
			if !gu16.bf16 || g.AllocGateUp(1, 8).bf16 {
				t.Fatalf("AllocGateUp: bf16 %v by default, %v with KVD_GATEUP_BF16=0", gu16.bf16, g.AllocGateUp(1, 8).bf16)
			}
			g.Linear(gu16, normed, wgu)
			g.Linear(gu32, normed, wgu)
			gu16v, gu32v := g.host(t, gu16), g.host(t, gu32)
			rms := math.Sqrt(float64(dot(gu32v, gu32v)) / float64(len(gu32v)))
			bad := 0
			for i, v := range gu16v {
				if d := math.Abs(float64(v - gu32v[i])); d > math.Max(math.Abs(float64(gu32v[i]))/256, 1e-3*rms) {
					if bad++; bad <= 5 {
						t.Errorf("linear into a bf16 out: element %d is %v, the float32 GEMM's %v", i, v, gu32v[i])
					}
				}
			}
			act16, actRef := g.poisonedLinearInput(T, F), g.poisonedLinearInput(T, F)
			g.SiLUMul(act16, gu16)
			g.SiLUMul(actRef, g.FromHost(gu16v, T, 2*F))
			if !sameBits(g.host(t, act16), g.host(t, actRef)) {
				t.Errorf("silu_mul_bf16in_bf16out differs from silu_mul_bf16out over the same values")
			}

			// Linear over each bf16 operand against Linear over the same
			// values in float32: the same bf16 operand reaches the same
			// kernel (cuBLAS, or the matrix-vector kernel, which widens
			// x to float32 either way), so the same bits come out. Over
			// more than gemvRows rows, the float32 path rounds x with
			// to_bf16, so the float32 kernel's unrounded output gives
			// those bits too: the forward pass's results do not change.
			for _, op := range ops {
				k := op.x.Cols()
				wt := g.Weight(bf16Round(randn(rng, tc.N*k)), tc.N, k)
				got, ref := g.poisoned(T, tc.N), g.poisoned(T, tc.N)
				g.Linear(got, op.x, wt)
				gotOut := g.host(t, got)
				g.Linear(ref, g.FromHost(op.values, T, k), wt)
				if !sameBits(gotOut, g.host(t, ref)) {
					t.Errorf("linear %dx%dx%d of %s: differs from Linear of the same values in float32", T, k, tc.N, op.name)
				}
				if T > gemvRows {
					g.Linear(ref, g.FromHost(op.f32, T, k), wt)
					if !sameBits(gotOut, g.host(t, ref)) {
						t.Errorf("linear %dx%dx%d of %s: differs from Linear of the float32 kernel's output", T, k, tc.N, op.name)
					}
				}
			}
		})
	}
}

// linearInput is a producer's bf16 output x, its values widened, and the
// float32 kernel's output from the same inputs.
type linearInput struct {
	name        string
	x           *Tensor
	values, f32 []float32
}

// TestGPUBF16OutMisuse: a bf16 operand where a float32 is read fails with
// an error for Err, launching nothing, rather than reading it as float32.
func TestGPUBF16OutMisuse(t *testing.T) {
	g := newGPU(t)
	g.gateUpBF16 = true // AllocGateUp in bf16, as by default
	x := g.AllocLinearInput(2, 64)
	for _, tc := range []struct {
		name string
		call func()
	}{
		{"linear by a float32 weight", func() { g.Linear(g.Alloc(2, 8), x, g.FromHost(make([]float32, 8*64), 8, 64)) }},
		{"linear into a bf16 out by a float32 weight", func() {
			g.Linear(g.AllocGateUp(2, 8), g.Alloc(2, 64), g.FromHost(make([]float32, 8*64), 8, 64))
		}},
		{"linear_add into a bf16 out", func() { g.LinearAdd(g.AllocGateUp(2, 8), x, g.Weight(make([]float32, 8*64), 8, 64)) }},
		{"silu_mul of a bf16 gate_up into a float32 out", func() { g.SiLUMul(g.Alloc(2, 32), g.AllocGateUp(2, 64)) }},
		{"rmsnorm of a bf16 x", func() { g.RMSNorm(g.Alloc(2, 64), x, g.FromHost(make([]float32, 64), 64), 1e-5) }},
		{"add_rmsnorm onto a bf16 delta", func() {
			g.AddRMSNorm(g.AllocLinearInput(2, 64), g.Alloc(2, 64), x, g.FromHost(make([]float32, 64), 64), 1e-5)
		}},
		{"silu_mul of a bf16 gate_up", func() { g.SiLUMul(g.Alloc(2, 32), x) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.call()
			if err := g.Err(); err == nil {
				t.Error("no error")
			}
		})
	}
}

// TestElementwiseKernelNames checks, without a GPU, that the elementwise
// module's list in kernelNames is exactly the entry points elementwise.cu
// defines, and that every kernel name RMSNorm, AddRMSNorm, SiLUMul and
// Linear may launch is among them.
func TestElementwiseKernelNames(t *testing.T) {
	src, err := os.ReadFile("elementwise.cu")
	if err != nil {
		t.Fatal(err)
	}
	defined := map[string]bool{}
	for _, m := range regexp.MustCompile(`extern "C" __global__ void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)\(`).FindAllSubmatch(src, -1) {
		defined[string(m[1])] = true
	}
	listed := map[string]bool{}
	for _, n := range kernelNames["elementwise"] {
		listed[n] = true
		if !defined[n] {
			t.Errorf("%s is listed in kernelNames but elementwise.cu does not define it", n)
		}
	}
	for n := range defined {
		if !listed[n] {
			t.Errorf("elementwise.cu defines %s, which kernelNames does not list: NewCUDA would not load it", n)
		}
	}
	for _, out := range []*Tensor{{}, {bf16: true}} {
		for _, n := range []string{"rmsnorm" + bf16Out(out), "add_rmsnorm" + bf16Out(out), "silu_mul" + bf16Out(out)} {
			if !listed[n] {
				t.Errorf("%s (bf16 out %v) is not among the elementwise module's kernels", n, out.bf16)
			}
		}
	}
	for _, n := range []string{"gemv_bf16", "gemv_bf16_bf16in", "to_bf16"} {
		if !listed[n] {
			t.Errorf("Linear's %s is not among the elementwise module's kernels", n)
		}
	}
}

// poisonedLinearInput is AllocLinearInput filled with bf16 NaNs, so
// unwritten elements show.
func (c *CUDA) poisonedLinearInput(rows, cols int) *Tensor {
	t := c.AllocLinearInput(rows, cols)
	c.fail(c.ctx.Memset32(ptr(t), 0xffffffff, (t.Len()*2+3)/4))
	return t
}

// checkBF16 checks that got, values a bf16 tensor holds, is want rounded
// to bf16 to within ulps steps of bf16 (0: the same bits).
func checkBF16(t *testing.T, what string, got, want []float32, ulps int) {
	t.Helper()
	bad := 0
	for i := range want {
		g, w := math.Float32bits(got[i]), toBF16(want[i])
		d := math.MaxInt
		if g&0xffff == 0 && !math.IsNaN(float64(got[i])) { // a bf16 value, widened
			d = abs(bf16Order(uint16(g>>16)) - bf16Order(w))
		}
		if d > ulps {
			if bad < 5 {
				t.Errorf("%s: element %d is %v (%#04x), want %v rounded (%#04x)", what, i, got[i], g>>16, want[i], w)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d elements more than %d bf16 steps off", what, bad, len(want), ulps)
	}
}

// bf16Order maps bf16 bits to integers in the order of their values, one
// apart for neighbours (both zeros at 0).
func bf16Order(b uint16) int {
	if b&0x8000 != 0 {
		return -int(b & 0x7fff)
	}
	return int(b)
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// TestGPUToBF16 checks to_bf16, Linear's rounding of a float32 operand,
// against toBF16 bit for bit: lengths that leave 0 to 3 elements past the
// four a thread takes, x and out at offsets that break the 16- and 8-byte
// alignment of the vector path (the scalar path then takes all), the grid
// Linear launches and one of three blocks (every thread strides over many
// fours), with nothing written before or past the n elements.
func TestGPUToBF16(t *testing.T) {
	g := newGPU(t)
	rng := rand.New(rand.NewPCG(7, 1))
	for _, n := range []int{1, 3, 4, 5, 6, 17, 1000, 4098, 4099, 300001} {
		for _, xoff := range []int{0, 1, 2} {
			for _, ooff := range []int{0, 1, 4} {
				for _, grid := range []uint32{gridFor((n + 3) / 4), 3} {
					src := randn(rng, n+xoff)
					for i := 0; i < len(src); i += 7 {
						src[i] = math.Float32frombits(math.Float32bits(src[i])&^0xffff | 0x8000) // a tie: to even
					}
					x := g.FromHost(src, len(src))
					cols := n + ooff + 3
					out := g.poisonedLinearInput(1, cols)
					g.launch("to_bf16", cuda.Dim3{X: grid}, cuda.Dim3{X: 256}, ptr(out)+cuda.Ptr(2*ooff), ptr(x)+cuda.Ptr(4*xoff), int64(n))
					got := g.host(t, out)
					bad := 0
					for i, v := range got {
						in := i >= ooff && i < ooff+n
						want := uint32(0xffff) << 16 // the poison, widened
						if in {
							want = uint32(toBF16(src[xoff+i-ooff])) << 16
						}
						if b := math.Float32bits(v); b != want {
							if bad < 3 {
								t.Errorf("n %d, x at +%d, out at +%d, grid %d: element %d is %#08x, want %#08x (in range %v)", n, xoff, ooff, grid, i, b, want, in)
							}
							bad++
						}
					}
					g.Free(x)
					g.Free(out)
				}
			}
		}
	}
}
