//go:build cgo

package kernels

import (
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/kvd-project/kvd/kernels/cuda"
	"github.com/kvd-project/kvd/shm"
)

// Every CUDA kernel against the CPU backend on fresh random inputs. These
// tests skip without a GPU; `make gpu-test` runs them on the GPU machine.
// KVD_GPU_QUICK=1 keeps the small sizes only (for compute-sanitizer, which
// is slow).

func newGPU(t testing.TB) *CUDA {
	t.Helper()
	g, err := NewCUDA(0)
	if errors.Is(err, cuda.ErrNoDriver) {
		t.Skipf("no GPU: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// seqLens are the sequence lengths every kernel is checked at.
func seqLens() []int {
	if os.Getenv("KVD_GPU_QUICK") != "" {
		return []int{1, 15, 17, 97, 600} // 600: several 32-key chunks per warp in split_paged_v2
	}
	return []int{1, 15, 17, 97, 1979, 5000}
}

func randn(rng *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

// bf16Round is x as the GPU holds a weight: rounded to bf16.
func bf16Round(x []float32) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = math.Float32frombits(uint32(toBF16(v)) << 16)
	}
	return out
}

// relErr is ‖got − want‖ / ‖want‖; a NaN anywhere (an unwritten, poisoned
// output) makes it +Inf.
func relErr(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		if math.IsNaN(float64(got[i])) || math.IsInf(float64(got[i]), 0) {
			return math.Inf(1)
		}
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// poisoned is an output tensor filled with NaN, so unwritten elements show.
func (c *CUDA) poisoned(shape ...int) *Tensor {
	t := c.tensor(shape, false)
	c.fail(c.ctx.Memset32(ptr(t), 0xffffffff, t.Len()))
	return t
}

func (c *CUDA) host(t testing.TB, x *Tensor) []float32 {
	t.Helper()
	out := make([]float32, x.Len())
	c.ToHost(out, x)
	if err := c.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func check(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if e := relErr(got, want); !(e <= tol) {
		t.Errorf("%s: relative error %.3g, want <= %.1g", what, e, tol)
	}
}

func TestGPUElementwise(t *testing.T) {
	g, cpu := newGPU(t), NewCPU()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, T := range seqLens() {
		for _, hd := range []int{64, 128} {
			name := fmt.Sprintf("T=%d/hd=%d", T, hd)
			D, V, heads := 3*hd, 1000, 4
			// Embedding: a bf16 table, so both sides see the same values.
			table := bf16Round(randn(rng, V*D))
			ids := make([]int32, T)
			for i := range ids {
				ids[i] = int32(rng.IntN(V))
			}
			want := cpu.Alloc(T, D)
			cpu.Embedding(want, cpu.Weight(table, V, D), ids)
			got := g.poisoned(T, D)
			g.Embedding(got, g.Weight(table, V, D), ids)
			check(t, name+" embedding", g.host(t, got), want.data, 0)

			x, w := randn(rng, T*D), randn(rng, D)
			cpu.RMSNorm(want, cpu.FromHost(x, T, D), cpu.FromHost(w, D), 1e-5)
			g.RMSNorm(got, g.FromHost(x, T, D), g.Weight(w, D), 1e-5)
			check(t, name+" rmsnorm", g.host(t, got), want.data, 1e-5)

			pos := make([]int32, T)
			for i := range pos {
				pos[i] = int32(rng.IntN(5000))
			}
			inv := make([]float32, hd/2)
			for i := range inv {
				inv[i] = float32(math.Pow(500000, -2*float64(i)/float64(hd)))
			}
			q := randn(rng, T*heads*hd)
			wq, gq := cpu.FromHost(slices.Clone(q), T, heads*hd), g.FromHost(q, T, heads*hd)
			cpu.RoPE(wq, heads, pos, inv)
			g.RoPE(gq, heads, pos, inv)
			check(t, name+" rope", g.host(t, gq), wq.data, 1e-6)

			// The fused forms against their parts.
			kvh := 2
			qkv := randn(rng, T*(heads+2*kvh)*hd)
			wq2, wk2, wv2 := cpu.Alloc(T, heads*hd), cpu.Alloc(T, kvh*hd), cpu.Alloc(T, kvh*hd)
			cpu.SplitRoPE(wq2, wk2, wv2, cpu.FromHost(qkv, T, (heads+2*kvh)*hd), pos, inv)
			gq2, gk2, gv2 := g.poisoned(T, heads*hd), g.poisoned(T, kvh*hd), g.poisoned(T, kvh*hd)
			g.SplitRoPE(gq2, gk2, gv2, g.FromHost(qkv, T, (heads+2*kvh)*hd), pos, inv)
			check(t, name+" split_rope q", g.host(t, gq2), wq2.data, 1e-6)
			check(t, name+" split_rope k", g.host(t, gk2), wk2.data, 1e-6)
			check(t, name+" split_rope v", g.host(t, gv2), wv2.data, 0)
			res, delta := randn(rng, T*D), randn(rng, T*D)
			wx, wo := cpu.FromHost(slices.Clone(res), T, D), cpu.FromHost(slices.Clone(delta), T, D)
			cpu.AddRMSNorm(wo, wx, wo, cpu.FromHost(w, D), 1e-5) // out aliases delta, as the forward pass does
			gx, gd := g.FromHost(res, T, D), g.FromHost(delta, T, D)
			g.AddRMSNorm(gd, gx, gd, g.Weight(w, D), 1e-5)
			check(t, name+" add_rmsnorm residual", g.host(t, gx), wx.data, 1e-6)
			check(t, name+" add_rmsnorm out", g.host(t, gd), wo.data, 1e-5)

			gu := randn(rng, T*2*D)
			wa, ga := cpu.Alloc(T, D), g.poisoned(T, D)
			cpu.SiLUMul(wa, cpu.FromHost(gu, T, 2*D))
			g.SiLUMul(ga, g.FromHost(gu, T, 2*D))
			check(t, name+" silu_mul", g.host(t, ga), wa.data, 1e-6)

			y := randn(rng, T*D)
			wy, gy := cpu.FromHost(slices.Clone(y), T, D), g.FromHost(y, T, D)
			cpu.Add(wy, cpu.FromHost(x, T, D))
			g.Add(gy, g.FromHost(x, T, D))
			check(t, name+" add", g.host(t, gy), wy.data, 0)

			rows := make([]int32, 1+T/3)
			for i := range rows {
				rows[i] = int32(rng.IntN(T))
			}
			wr, gr := cpu.Alloc(len(rows), D), g.poisoned(len(rows), D)
			cpu.Gather(wr, cpu.FromHost(x, T, D), rows)
			g.Gather(gr, g.FromHost(x, T, D), rows)
			check(t, name+" gather", g.host(t, gr), wr.data, 0)

			wc, gc := cpu.Alloc(T, hd), g.poisoned(T, hd)
			cpu.Columns(wc, cpu.FromHost(x, T, D), hd)
			g.Columns(gc, g.FromHost(x, T, D), hd)
			check(t, name+" columns", g.host(t, gc), wc.data, 0)
		}
	}
}

func TestGPULinear(t *testing.T) {
	g, cpu := newGPU(t), NewCPU()
	rng := rand.New(rand.NewPCG(3, 4))
	for _, T := range append(seqLens(), 2, 5, 8) { // up to gemvRows rows take the matrix-vector kernel
		for _, kn := range [][2]int{{384, 1152}, {1536, 384}, {4096, 1024}, {1000, 24}} {
			k, n := kn[0], kn[1]
			x, w := randn(rng, T*k), bf16Round(randn(rng, n*k))
			want := cpu.Alloc(T, n)
			cpu.Linear(want, cpu.FromHost(x, T, k), cpu.Weight(w, n, k))
			got := g.poisoned(T, n)
			g.Linear(got, g.FromHost(x, T, k), g.Weight(w, n, k))
			// bf16 activations against float32: about 2⁻⁹ per element
			// (the matrix-vector kernel keeps x in float32: far less).
			tol := 1e-2
			if T <= gemvRows && k%8 == 0 {
				tol = 1e-5
			}
			check(t, fmt.Sprintf("bf16 linear %dx%dx%d", T, k, n), g.host(t, got), want.data, tol)
			// LinearAdd onto a residual of the product's size (a
			// dropped residual is then an error of order 1): cuBLAS's
			// beta = 1 (the matrix-vector kernel's rows through a
			// scratch and Add), against the CPU's Linear and Add.
			res := randn(rng, T*n)
			for i := range res {
				res[i] *= float32(math.Sqrt(float64(k)))
			}
			wantAdd := cpu.FromHost(slices.Clone(res), T, n)
			cpu.LinearAdd(wantAdd, cpu.FromHost(x, T, k), cpu.Weight(w, n, k))
			gotAdd := g.FromHost(res, T, n)
			g.LinearAdd(gotAdd, g.FromHost(x, T, k), g.Weight(w, n, k))
			check(t, fmt.Sprintf("bf16 linear_add %dx%dx%d", T, k, n), g.host(t, gotAdd), wantAdd.data, tol)
			got32 := g.poisoned(T, n)
			g.Linear(got32, g.FromHost(x, T, k), g.FromHost(w, n, k))
			check(t, fmt.Sprintf("fp32 linear %dx%dx%d", T, k, n), g.host(t, got32), want.data, 1e-5)
		}
	}
}

// attnCase is one sequence of an attention batch: past cached tokens and
// rows new ones, scoring from scoreFrom (-1: no scores), or skipped.
type attnCase struct {
	past, rows, scoreFrom int
	skip                  bool
}

func attnCompositions() map[string][]attnCase {
	lens := seqLens()
	long := lens[len(lens)-1]
	prefill, decode := []attnCase{}, []attnCase{}
	for i, n := range lens {
		prefill = append(prefill, attnCase{rows: n, scoreFrom: -1 + (i%2)*(max(0, n-32)+1)})
		decode = append(decode, attnCase{past: n, rows: 1, scoreFrom: -1 + (i%2)*1})
	}
	return map[string][]attnCase{
		"prefill": prefill,
		"decode":  decode,
		"mixed": {
			{past: lens[len(lens)-2], rows: 97, scoreFrom: 65}, // a chunk of a long prompt
			{past: long, rows: 1, scoreFrom: 0},                // H2O decode
			{past: 0, rows: 17, skip: true},                    // a compressed prompt
			{past: 15, rows: 0},                                // nothing this step
			{past: 16, rows: 1, scoreFrom: -1},
		},
	}
}

// dtypes are the pool dtypes every pool kernel is checked with.
var dtypes = []shm.DType{shm.Float32, shm.BFloat16, shm.FP8E4M3}

// randomPool fills a pool of l with random K, V and positive scores; a
// bfloat16 or fp8 pool's rows are random values rounded and packed as
// putRow packs them.
func randomPool(rng *rand.Rand, l shm.Layout) []float32 {
	if l.DType != shm.Float32 {
		p := make([]float32, l.PoolElems())
		for b := range l.NumBlocks {
			for h := range l.KVHeads {
				for s := range l.BlockSize {
					putRow(p[l.K(b, h, s):], randn(rng, l.HeadDim), l.DType)
					putRow(p[l.V(b, h, s):], randn(rng, l.HeadDim), l.DType)
					p[l.Score(b, h, s)] = rng.Float32()
				}
			}
		}
		return p
	}
	p := randn(rng, l.PoolElems())
	for b := range l.NumBlocks {
		for h := range l.KVHeads {
			for s := range l.BlockSize {
				p[l.Score(b, h, s)] = rng.Float32()
			}
		}
	}
	return p
}

// tiledPool is randomPool's for a benchmark: up to 1024 random blocks,
// repeated over the pool. The kernels' speed does not depend on which
// blocks repeat, and making the pool took most of a benchmark's run: ~60
// s for 256 sequences of 5000 tokens on an H200 with randomPool (run 17,
// call A), ~9 s with three more cases tiled (call B).
func tiledPool(rng *rand.Rand, l shm.Layout) []float32 {
	small := l
	small.NumBlocks = min(l.NumBlocks, 1024)
	tile := randomPool(rng, small)
	p := make([]float32, l.PoolElems())
	for i := 0; i < len(p); i += len(tile) {
		copy(p[i:], tile)
	}
	return p
}

// splitPool separates a pool's keys and values from its scores.
func splitPool(p []float32, l shm.Layout) (kv, scores []float32) {
	for b := range l.NumBlocks {
		base := b * l.BlockElems()
		kv = append(kv, p[base:base+2*l.KVHeads*l.HeadElems()]...)
		scores = append(scores, p[base+2*l.KVHeads*l.HeadElems():base+l.BlockElems()]...)
	}
	return kv, scores
}

// testGroups are the query heads per KV head TestGPUAttention takes: 1,
// 4 and 8, or those KVD_GPU_GROUPS lists ("3,7": the groups of
// Llama-3.2-3B and Qwen2.5-7B, run on a card without the rest).
func testGroups() []int {
	env := os.Getenv("KVD_GPU_GROUPS")
	if env == "" {
		return []int{1, 4, 8}
	}
	var gs []int
	for _, f := range strings.Split(env, ",") {
		g, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || g < 1 || g > maxGroup {
			panic(fmt.Sprintf("KVD_GPU_GROUPS=%q: want group sizes from 1 to %d, comma-separated", env, maxGroup))
		}
		gs = append(gs, g)
	}
	return gs
}

func TestGPUAttention(t *testing.T) {
	g, cpu := newGPU(t), NewCPU()
	if g.dev.Major == 9 && g.dev.Minor == 0 && os.Getenv("KVD_FLASH_WGMMA") != "0" && !g.flashWGMMA {
		t.Fatalf("%s: the wgmma prefill kernels did not load: %v", g.dev, g.wgmmaErr)
	}
	const kvh = 2
	for name, cases := range attnCompositions() {
		for _, hd := range []int{64, 128} {
			for _, group := range testGroups() {
				// 12 and 6: block sizes that the wgmma loaders' runs of 8
				// keys (bf16 at head dim 128) and of 4 (bf16 at 64, fp8 at
				// 128) cross: kv_run's row-by-row path. (fp8's runs of 2
				// at head dim 64 cross only odd block sizes.)
				for _, bs := range []int{16, 32, 12, 6} {
					if bs < 16 && group != 4 {
						continue
					}
					for _, dt := range dtypes {
						// A subtest each, so that -test.run can pick a
						// dtype or head dim on a card (the whole test
						// takes ~2 minutes on an H200), e.g.
						// 'GPUAttention$/.*/hd=128/.*/.*/fp8' (the label
						// is five levels); each seeds its own random
						// numbers from its label, so that a failure
						// repeats under such a filter.
						label := fmt.Sprintf("%s/hd=%d/group=%d/bs=%d/%v", name, hd, group, bs, dt)
						t.Run(label, func(t *testing.T) {
							testGPUAttention(t, g, cpu, labelRand(label), cases, label, kvh, hd, group, bs, dt)
						})
					}
				}
			}
		}
	}
}

// testGPUAttention is one of TestGPUAttention's batches: cases over a pool
// of bs-token blocks of kvh heads of dim hd stored as dt.
func testGPUAttention(t *testing.T, g *CUDA, cpu *CPU, rng *rand.Rand, cases []attnCase, label string, kvh, hd, group, bs int, dt shm.DType) {
	heads := kvh * group
	b := &AttnBatch{QIndptr: []int32{0}, BlockIndptr: []int32{0}, ScoreFrom: []int32{}, Skip: []bool{}}
	total := 0
	for _, c := range cases {
		total += (c.past + c.rows + bs - 1) / bs
	}
	l := shm.Layout{NumBlocks: total + 8, BlockSize: bs, KVHeads: kvh, HeadDim: hd, DType: dt}
	ids := rng.Perm(l.NumBlocks - 1)
	T := 0
	for _, c := range cases {
		n := (c.past + c.rows + bs - 1) / bs
		for _, id := range ids[:n] {
			b.Blocks = append(b.Blocks, int32(id+1))
		}
		ids = ids[n:]
		T += c.rows
		b.QIndptr = append(b.QIndptr, int32(T))
		b.BlockIndptr = append(b.BlockIndptr, int32(len(b.Blocks)))
		b.KVLen = append(b.KVLen, int32(c.past+c.rows))
		sf := c.scoreFrom
		if sf < 0 {
			sf = c.rows
		}
		b.ScoreFrom = append(b.ScoreFrom, int32(sf))
		b.Skip = append(b.Skip, c.skip)
	}
	if err := b.Validate(T, l); err != nil {
		t.Fatalf("%s: %v", label, err)
	}
	pool, q := randomPool(rng, l), randn(rng, T*heads*hd)
	scale := float32(1 / math.Sqrt(float64(hd)))
	wantPool := cpu.FromHost(slices.Clone(pool), l.PoolElems())
	want := cpu.Alloc(T, heads*hd)
	cpu.Attention(want, cpu.FromHost(q, T, heads*hd), wantPool, l, b, scale)
	v2, mma, per, perV2, fused, own, dmma, wg, widen := g.attnV2, g.flashMMA, splitPerSM, splitPerSMV2, g.fusedScore, g.ownCombine, g.decodeMMA, g.flashWGMMA, g.widenFP8
	stream, ctas := g.streamV2, splitCTAsV2
	// Restored however this returns: a Fatal ends only this subtest, and
	// the next one takes what it finds here as the defaults.
	defer func() {
		g.attnV2, splitPerSM, splitPerSMV2, g.flashMMA, g.fusedScore, g.ownCombine, g.decodeMMA, g.flashWGMMA, g.widenFP8 = v2, per, perV2, mma, fused, own, dmma, wg, widen
		g.streamV2, splitCTAsV2, widenMaxBytes = stream, ctas, WidenMaxBytes
	}()
	// split_paged, and split_paged_v2 where it applies (head dim 128),
	// at the default 4 items per SM, also in long items (one per SM:
	// several chunks a warp) and short ones (8 per SM), and with
	// H2O's scores from its logits (fused); split_paged_v2 merging its
	// rows itself (the default) and in attn_combine (own=false); the TF32
	// tensor-core kernel, and the bf16 one (mma) at every head dim; the
	// same items on the tensor cores over a packed pool (dmma:
	// split_paged_mma). split_paged_v2's and split_paged_mma's items are
	// streamed (rowWork.stream) over a wave of CTAs where per is 4, over
	// three CTAs a head (many items each) where it is 1, and a row an
	// item (splitPerSMV2) where it is 8; launches with scoring rows are
	// never streamed. On an H100 or H200 the bf16 and fp8 pools' prompt
	// rows run on the wgmma kernel (flash_wgmma.cuh) unless wg is false.
	// An fp8 pool's prompt rows run on the bf16 kernels over widened
	// blocks (widenTiles) but where fp8k says to run the fp8 ones (by the
	// flag, and with wgmma by the scratch's cap: the fallback); the two
	// compute the same logits, and their outputs are compared, and each
	// run must have widened or not as it says.
	fp8k := map[bool][]float32{} // the fp8 kernels' prompt rows, by wg
	for _, run := range []struct {
		v2    bool
		per   int
		mma   bool
		fused bool
		own   bool
		dmma  bool
		wg    bool
		fp8k  bool
	}{{false, 8, true, false, true, false, false, true}, {false, 8, true, false, true, false, true, true},
		{false, 8, false, false, true, false, false, false}, {true, 8, false, false, true, false, false, false}, {true, 4, false, false, true, false, false, false}, {true, 4, false, false, false, false, false, false}, {true, 1, false, false, true, false, false, false},
		{true, 8, false, true, true, false, false, false}, {true, 4, false, true, true, false, false, false}, {true, 4, false, true, false, false, false, false}, {true, 1, false, true, true, false, false, false}, {false, 8, true, false, true, false, false, false},
		{false, 8, true, false, true, false, true, false},
		{true, 8, false, false, true, true, false, false}, {true, 4, false, false, false, true, false, false}, {true, 1, false, false, true, true, false, false},
		{true, 8, false, true, true, true, true, false}, {true, 4, false, true, true, true, false, false}, {true, 4, false, true, false, true, false, false}, {true, 1, false, true, true, true, false, false}} {
		if run.v2 && !v2OK(l) || run.dmma && dt == shm.Float32 || run.wg && (!wg || dt == shm.Float32) || run.fp8k && dt != shm.FP8E4M3 {
			continue
		}
		label := fmt.Sprintf("%s/v2=%v/split%d/mma=%v/fused=%v/own=%v/dmma=%v/wgmma=%v/fp8k=%v", label, run.v2, run.per, run.mma, run.fused, run.own, run.dmma, run.wg, run.fp8k)
		g.attnV2, splitPerSM, splitPerSMV2, g.flashMMA, g.fusedScore, g.ownCombine, g.decodeMMA, g.flashWGMMA, g.widenFP8 = run.v2, run.per, run.per, run.mma, run.fused, run.own, run.dmma, run.wg, !run.fp8k
		if run.fp8k && run.wg {
			// The fp8 kernel by the scratch's cap instead of the flag.
			g.widenFP8, widenMaxBytes = true, 0
		}
		widened := g.widened
		g.streamV2, splitCTAsV2 = run.per != 8, 0
		if run.per == 1 {
			splitCTAsV2 = 3
		}
		gotPool := g.FromHost(pool, l.PoolElems())
		got := g.poisoned(T, heads*hd)
		g.Attention(got, g.FromHost(q, T, heads*hd), gotPool, l, b, scale)
		widenMaxBytes = WidenMaxBytes
		out := g.host(t, got)
		// Compare the rows that were computed; the others must be left
		// alone (still poisoned). Sequences with a run of rows for the
		// tensor cores (TF32) get a looser bound.
		var gw, ww, gf, wf []float32
		for s, c := range cases {
			lo, hi := int(b.QIndptr[s])*heads*hd, int(b.QIndptr[s+1])*heads*hd
			if c.skip {
				for _, v := range out[lo:hi] {
					if !math.IsNaN(float64(v)) {
						t.Fatalf("%s: a skipped sequence's output was written", label)
					}
				}
				continue
			}
			if int(b.ScoreFrom[s]) >= flashMinRows && flashOK(l) {
				gf, wf = append(gf, out[lo:hi]...), append(wf, want.data[lo:hi]...)
			} else {
				gw, ww = append(gw, out[lo:hi]...), append(ww, want.data[lo:hi]...)
			}
		}
		// The split rows on the tensor cores round the queries and
		// probabilities to bf16 (f16 over fp8): the prompt kernels' bound.
		rowTol, scoreTol := 2e-5, 1e-5
		if run.dmma {
			rowTol, scoreTol = decodeMMATol, decodeMMATol
			t.Logf("%s: split rows' relative error %.3g", label, relErr(gw, ww))
		}
		check(t, label+" output", gw, ww, rowTol)
		check(t, label+" output (tensor cores)", gf, wf, flashTol(g))
		if dt == shm.FP8E4M3 && len(gf) > 0 && run.fp8k == (g.widened > widened) {
			t.Errorf("%s: widenTiles widened %d times where the fp8 kernel was asked for: %v", label, g.widened-widened, run.fp8k)
		}
		if dt == shm.FP8E4M3 && run.mma && !run.v2 && len(gf) > 0 {
			if run.fp8k {
				fp8k[run.wg] = gf
			} else if k, ok := fp8k[run.wg]; ok && !sameBits(gf, k) {
				// The same bf16 products and sums in the same order, the
				// same bits (64 of 64 cases on an H200, run 14): a
				// difference means the widened blocks or the rewritten
				// tables are not the pool's.
				t.Errorf("%s: the widened blocks' prompt rows differ from the fp8 kernel's by %.3g", label, relErr(gf, k))
			}
		}
		gp := g.host(t, gotPool)
		gkv, gsc := splitPool(gp, l)
		wkv, wsc := splitPool(wantPool.data, l)
		if !sameBits(gkv, wkv) {
			t.Errorf("%s: keys and values changed", label)
		}
		if run.dmma {
			t.Logf("%s: scores' relative error %.3g", label, relErr(gsc, wsc))
		}
		check(t, label+" scores", gsc, wsc, scoreTol)
		g.checkCountsZero(t, label)
	}
}

// labelRand is a random source seeded from a subtest's label.
func labelRand(label string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(label))
	return rand.New(rand.NewPCG(h.Sum64(), 6))
}

// checkCountsZero fails unless every count split_paged_v2's own combine
// used is back to 0, as the next launch needs it.
func (g *CUDA) checkCountsZero(t *testing.T, label string) {
	t.Helper()
	if g.countsN == 0 {
		return
	}
	got := make([]uint32, g.countsN)
	if err := g.ctx.CopyToHost(unsafe.Slice((*byte)(unsafe.Pointer(&got[0])), 4*len(got)), g.counts); err != nil {
		t.Fatalf("%s: reading the combine counts: %v", label, err)
	}
	for i, v := range got {
		if v != 0 {
			t.Fatalf("%s: combine count %d left at %d", label, i, v)
		}
	}
}

// decodeMMATol bounds the relative error of split rows that ran on the
// tensor cores (split_paged_mma) and of the scores they leave: the queries
// and probabilities rounded to bf16 (8 bits of precision) over a bfloat16
// pool, to f16 (11) over fp8. On an H200 (run 11) the largest was 2.5e-3
// over bfloat16 and 2.8e-4 over fp8; a fragment in the wrong place gives
// errors of order 1.
const decodeMMATol = 1e-2

// flashTol bounds the relative error of rows that ran on the tensor
// cores: TF32 (10 bits of mantissa), or bf16 (7) for the mma kernels.
func flashTol(g *CUDA) float64 {
	if g.flashMMA {
		return 2e-2
	}
	return 3e-3
}

func TestGPUWriteKV(t *testing.T) {
	g, cpu := newGPU(t), NewCPU()
	rng := rand.New(rand.NewPCG(7, 8))
	for _, T := range seqLens() {
		for _, c := range []struct {
			bs int
			dt shm.DType
		}{{16, shm.Float32}, {32, shm.Float32}, {16, shm.BFloat16}, {32, shm.BFloat16}, {16, shm.FP8E4M3}, {32, shm.FP8E4M3}} {
			bs := c.bs
			l := shm.Layout{NumBlocks: 2 + (T+bs-1)/bs*2, BlockSize: bs, KVHeads: 4, HeadDim: 128, DType: c.dt}
			perm := rng.Perm((l.NumBlocks - 1) * bs)
			slots := make([]int32, T)
			for i := range slots {
				slots[i] = int32(perm[i] + bs) // past the null block
				if rng.IntN(7) == 0 {
					slots[i] = -1
				}
			}
			pool := randomPool(rng, l)
			k, v := randn(rng, T*4*128), randn(rng, T*4*128)
			if c.dt == shm.FP8E4M3 {
				// E4M3's edges among the values: saturation at ±448 (and
				// of infinities), the largest rounding to 448, subnormals
				// and values below its smallest. (NaN's sign is left out:
				// cvt may not keep it as toE4M3 does.)
				edges := []float32{448, -448, 460, -465, 1e6, float32(math.Inf(1)), float32(math.Inf(-1)), 0x1p-9, -0x1p-10, 0x1.8p-8, 1e-4, 0}
				for i := 0; i < len(k); i += 17 {
					k[i], v[len(v)-1-i] = edges[(i/17)%len(edges)], edges[(i/17+5)%len(edges)]
				}
			}
			want := cpu.FromHost(slices.Clone(pool), l.PoolElems())
			cpu.WriteKV(want, l, cpu.FromHost(k, T, 512), cpu.FromHost(v, T, 512), slots)
			got := g.FromHost(pool, l.PoolElems())
			g.WriteKV(got, l, g.FromHost(k, T, 512), g.FromHost(v, T, 512), slots)
			// The same rounding (bfloat16 and fp8: to nearest even; fp8
			// saturated) gives the same bits.
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
			if !sameBits(g.host(t, got), want.data) {
				t.Errorf("write_kv T=%d bs=%d %v: the pool differs from the CPU's", T, bs, c.dt)
			}
		}
	}
}

func TestGPUSparsePrefill(t *testing.T) {
	g, cpu := newGPU(t), NewCPU()
	defer func(mma, p16, obs, wg bool) {
		g.flashMMA, g.promptBF16, g.obsTiles, g.flashWGMMA = mma, p16, obs, wg
	}(g.flashMMA, g.promptBF16, g.obsTiles, g.flashWGMMA)
	wg := g.flashWGMMA
	rng := rand.New(rand.NewPCG(9, 10))
	sels := map[string]Selection{
		"window":         {Sinks: 4, ObsWindow: 32},
		"snapkv":         {SnapKV: true, Sinks: 4, ObsWindow: 32, Kernel: 7},
		"snapkv-avg-max": {SnapKV: true, Sinks: 0, ObsWindow: 16, Kernel: 5, PoolAvg: true, GQAMax: true},
	}
	type geom struct {
		group, hd, bs int
		dt            shm.DType
	}
	// A bfloat16 pool only changes how the kept tokens are written
	// (scatter_kept_bf16): the prompt's attention reads its own K and V.
	geoms := []geom{{4, 128, 16, shm.Float32}, {1, 64, 32, shm.Float32}, {8, 64, 16, shm.Float32}, {4, 128, 16, shm.BFloat16}, {1, 64, 32, shm.BFloat16}, {4, 128, 16, shm.FP8E4M3}, {8, 64, 32, shm.FP8E4M3}}
	mmaRuns, runs := 0, 0
	for _, n := range seqLens() {
		if n < 2 {
			continue
		}
		for gi, ge := range geoms {
			for _, name := range slices.Sorted(maps.Keys(sels)) { // in order: the same runs every time
				sel := sels[name]
				const kvh = 2
				group, hd, bs := ge.group, ge.hd, ge.bs
				if gi > 0 && name == "window" && ge.dt == shm.Float32 {
					continue // the window's selection does not depend on the geometry
				}
				heads := kvh * group
				sel.Keep = min(n, max(sel.ObsWindow+sel.Sinks+1, n/3))
				l := shm.Layout{NumBlocks: 2 + (sel.Keep+bs-1)/bs, BlockSize: bs, KVHeads: kvh, HeadDim: hd, DType: ge.dt}
				slots := make([]int32, sel.Keep)
				for i := range slots {
					slots[i] = int32(bs + i) // block 1 onwards
				}
				const row0 = 3 // the prompt is not the step's first rows
				T := row0 + n
				q, k, v := randn(rng, T*heads*hd), randn(rng, T*kvh*hd), randn(rng, T*kvh*hd)
				pool := randomPool(rng, l)
				scale := float32(1 / math.Sqrt(float64(hd)))
				wantPool, want := cpu.FromHost(slices.Clone(pool), l.PoolElems()), cpu.Alloc(T, heads*hd)
				cpu.SparsePrefill(want, cpu.FromHost(q, T, heads*hd), cpu.FromHost(k, T, kvh*hd), cpu.FromHost(v, T, kvh*hd), row0, n, wantPool, l, slots, sel, scale)
				gotPool, got := g.FromHost(pool, l.PoolElems()), g.poisoned(T, heads*hd)
				gq, gk, gv := g.FromHost(q, T, heads*hd), g.FromHost(k, T, kvh*hd), g.FromHost(v, T, kvh*hd)
				g.flashMMA = gi%2 == 1 // the bf16 tensor-core kernel for every other geometry
				// and for every other of those runs over the prompt's K
				// and V rounded first (promptBF16)
				if g.flashMMA {
					mmaRuns++
				}
				g.promptBF16 = g.flashMMA && mmaRuns%2 == 0
				// Two runs of three vote over tiles of K (obsVote, the
				// window's rows on the tensor cores too), the third with
				// the split kernels.
				runs++
				g.obsTiles = runs%3 != 0
				// On an H100 or H200, the prompt's bf16 copies on the wgmma
				// kernel every other run that has them.
				g.flashWGMMA = wg && runs%2 == 0
				g.SparsePrefill(got, gq, gk, gv, row0, n, gotPool, l, slots, sel, scale)
				label := fmt.Sprintf("n=%d/%s/group=%d/hd=%d/bs=%d/%v/mma=%v/promptbf16=%v/obstiles=%v/wgmma=%v", n, name, group, hd, bs, ge.dt, g.flashMMA, g.promptBF16, g.obsTiles, g.flashWGMMA)
				tol := 2e-5
				flashN := n - sel.ObsWindow
				if g.obsTiles && sel.ObsWindow > 0 {
					flashN = n
				}
				if flashN >= flashMinRows {
					tol = flashTol(g) // these rows ran on the tensor cores
				}
				check(t, label+" output", g.host(t, got)[row0*heads*hd:], want.data[row0*heads*hd:], tol)
				// The kept tokens: compare each slot's key and value words
				// (which token it holds, rounded alike) and, where both kept
				// the same token, its score.
				gp := g.host(t, gotPool)
				differ := 0
				var gs, ws []float32
				rw := l.RowElems()
				for h := range kvh {
					for _, s := range slots {
						blk, off := int(s)/bs, int(s)%bs
						ko, vo := l.K(blk, h, off), l.V(blk, h, off)
						if !sameBits(gp[ko:ko+rw], wantPool.data[ko:ko+rw]) {
							differ++
							continue
						}
						if !sameBits(gp[vo:vo+rw], wantPool.data[vo:vo+rw]) {
							t.Errorf("%s: head %d slot %d holds the CPU's key but not its value", label, h, s)
						}
						gs, ws = append(gs, gp[l.Score(blk, h, off)]), append(ws, wantPool.data[l.Score(blk, h, off)])
					}
				}
				// Ties aside: near-equal votes may rank differently after
				// float32 sums on the GPU; more than 1% is a bug.
				if differ*100 > kvh*len(slots) {
					t.Errorf("%s: %d of %d kept tokens differ from the CPU's", label, differ, kvh*len(slots))
				} else if differ > 0 {
					t.Logf("%s: %d of %d kept tokens differ (near-ties)", label, differ, kvh*len(slots))
				}
				check(t, label+" kept scores", gs, ws, 1e-4)
			}
		}
	}
}

// TestGPUSelectOnDevice gives the device's SnapKV choice and the host's
// the same window sums (SparsePrefill accumulates them with atomics, so two
// prefills differ in their last bits) and wants the same pool to the bit:
// the same tokens in the same slots with the same scores. Sums drawn from
// a few values make ties, which both break toward the earlier token.
func TestGPUSelectOnDevice(t *testing.T) {
	g := newGPU(t)
	rng := rand.New(rand.NewPCG(21, 22))
	sels := map[string]Selection{
		"window":         {Sinks: 4, ObsWindow: 32},
		"snapkv":         {SnapKV: true, Sinks: 4, ObsWindow: 32, Kernel: 7},
		"snapkv-avg-max": {SnapKV: true, Sinks: 0, ObsWindow: 16, Kernel: 5, PoolAvg: true, GQAMax: true},
		"snapkv-k1":      {SnapKV: true, Sinks: 2, ObsWindow: 8, Kernel: 1},
	}
	for _, n := range append(seqLens(), 40, 300) {
		if n < 2 {
			continue
		}
		for _, group := range []int{1, 4} {
			for name, sel := range sels {
				for ti, ties := range []bool{false, true} {
					// float32 at group 4; at group 1 bfloat16
					// (scatter_kept_bf16) without ties, fp8 with them
					dt := dtypes[group%2]
					if dt == shm.BFloat16 && ti == 1 {
						dt = shm.FP8E4M3
					}
					const kvh, hd, bs, row0 = 2, 64, 16, 3
					heads := kvh * group
					sel.Keep = min(n, max(sel.ObsWindow+sel.Sinks+1, n/3))
					l := shm.Layout{NumBlocks: 2 + (sel.Keep+bs-1)/bs, BlockSize: bs, KVHeads: kvh, HeadDim: hd, DType: dt}
					slots := make([]int32, sel.Keep)
					for i := range slots {
						slots[i] = int32(bs + i)
					}
					sums := make([]float32, heads*n)
					for i := range sums {
						sums[i] = rng.Float32()
						if ties {
							sums[i] = float32(rng.IntN(4)) / 4
						}
					}
					T := row0 + n
					k, v := g.FromHost(randn(rng, T*kvh*hd), T, kvh*hd), g.FromHost(randn(rng, T*kvh*hd), T, kvh*hd)
					hs := g.FromHost(sums, heads, n)
					pool := randomPool(rng, l)
					onHost, onDevice := g.FromHost(pool, l.PoolElems()), g.FromHost(pool, l.PoolElems())
					g.selectOnHost(hs, group, k, v, row0, n, onHost, l, slots, sel)
					g.selectOnDevice(hs, group, k, v, row0, n, onDevice, l, slots, sel)
					sameAsHost(t, g, fmt.Sprintf("n=%d/%s/group=%d/ties=%v/%v", n, name, group, ties, dt), onDevice, onHost)
				}
			}
		}
	}
}

func TestGPUEvict(t *testing.T) {
	g, cpu := newGPU(t), NewCPU()
	rng := rand.New(rand.NewPCG(11, 12))
	for _, tokens := range seqLens() {
		if tokens < 3 {
			continue
		}
		for _, c := range []struct {
			bs, hd int
			dt     shm.DType
		}{{16, 64, shm.Float32}, {32, 128, shm.Float32}, {16, 128, shm.BFloat16}, {32, 256, shm.BFloat16}, {16, 128, shm.FP8E4M3}} {
			bs := c.bs
			nb := (tokens + bs - 1) / bs
			l := shm.Layout{NumBlocks: nb + 5, BlockSize: bs, KVHeads: 4, HeadDim: c.hd, DType: c.dt}
			ids := rng.Perm(l.NumBlocks - 1)[:nb]
			blocks := make([]int32, nb)
			for i, id := range ids {
				blocks[i] = int32(id + 1)
			}
			keep, sinks, recent := tokens/2+1, min(4, tokens/4), min(32, tokens/4)
			pool := randomPool(rng, l)
			want := cpu.FromHost(slices.Clone(pool), l.PoolElems())
			cpu.Evict(want, l, []EvictJob{{blocks, tokens, keep, sinks, recent}})
			got := g.FromHost(pool, l.PoolElems())
			g.Evict(got, l, []EvictJob{{blocks, tokens, keep, sinks, recent}})
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
			if !sameBits(g.host(t, got), want.data) {
				t.Errorf("evict tokens=%d bs=%d hd=%d %v: the pool differs from the CPU's", tokens, bs, c.hd, c.dt)
			}
		}
	}
}

// TestGPUEvictMany evicts several tables of one pool in one call (a
// step's evictions), of different lengths and budgets, one left alone.
// TestGPUEvictOnDevice runs a step's eviction chosen and compacted on the
// device (the default) and on the host (KVD_HOST_EVICT) over the same pool and wants the
// same pool to the bit: scores with many ties and some NaNs, tables of
// every shape the engine makes and some it does not (nothing to drop,
// recent windows longer than the table).
func TestGPUEvictOnDevice(t *testing.T) {
	g := newGPU(t)
	rng := rand.New(rand.NewPCG(23, 24))
	for _, geo := range []struct {
		bs, kvh, hd int
		dt          shm.DType
	}{{16, 8, 128, shm.Float32}, {32, 2, 64, shm.Float32}, {16, 4, 96, shm.Float32}, {16, 8, 128, shm.BFloat16}, {16, 4, 96, shm.BFloat16}, {16, 2, 256, shm.BFloat16}, {16, 8, 128, shm.FP8E4M3}, {32, 4, 96, shm.FP8E4M3}} {
		for _, ties := range []bool{false, true} {
			l := shm.Layout{NumBlocks: 600, BlockSize: geo.bs, KVHeads: geo.kvh, HeadDim: geo.hd, DType: geo.dt}
			ids := rng.Perm(l.NumBlocks - 1)
			var jobs []EvictJob
			for _, j := range []EvictJob{
				{Tokens: 1040, Keep: 1024, Recent: 32},
				{Tokens: 1552, Keep: 1536, Sinks: 4, Recent: 32},
				{Tokens: 17, Keep: 9, Sinks: 2, Recent: 3},
				{Tokens: 300, Keep: 300, Sinks: 4, Recent: 32},
				{Tokens: 40, Keep: 20, Sinks: 4, Recent: 64},
				{Tokens: 2500, Keep: 700, Sinks: 0, Recent: 0},
				{Tokens: 3, Keep: 1, Sinks: 1, Recent: 0},
			} {
				nb := (j.Tokens + l.BlockSize - 1) / l.BlockSize
				j.Blocks = make([]int32, nb)
				for i := range j.Blocks {
					j.Blocks[i] = int32(ids[0] + 1)
					ids = ids[1:]
				}
				jobs = append(jobs, j)
			}
			pool := randomPool(rng, l)
			if ties {
				for b := range l.NumBlocks {
					for h := range l.KVHeads {
						for s := range l.BlockSize {
							v := float32(rng.IntN(3))
							if rng.IntN(50) == 0 {
								v = float32(math.NaN())
							}
							pool[l.Score(b, h, s)] = v
						}
					}
				}
			}
			label := fmt.Sprintf("bs=%d kvh=%d hd=%d %v ties=%v", geo.bs, geo.kvh, geo.hd, geo.dt, ties)
			onHost, onDevice := g.FromHost(pool, l.PoolElems()), g.FromHost(pool, l.PoolElems())
			g.gpuEvict = false
			g.Evict(onHost, l, jobs)
			g.gpuEvict = true
			g.Evict(onDevice, l, jobs)
			sameAsHost(t, g, label, onDevice, onHost)
		}
	}
}

func TestGPUEvictMany(t *testing.T) {
	g, cpu := newGPU(t), NewCPU()
	rng := rand.New(rand.NewPCG(13, 14))
	for _, dt := range dtypes {
		l := shm.Layout{NumBlocks: 400, BlockSize: 16, KVHeads: 8, HeadDim: 128, DType: dt}
		ids := rng.Perm(l.NumBlocks - 1)
		var jobs []EvictJob
		for _, tokens := range []int{1040, 17, 300, 1979} {
			nb := (tokens + l.BlockSize - 1) / l.BlockSize
			blocks := make([]int32, nb)
			for i := range blocks {
				blocks[i] = int32(ids[0] + 1)
				ids = ids[1:]
			}
			jobs = append(jobs, EvictJob{blocks, tokens, min(tokens, 1024), 4, 32})
		}
		pool := randomPool(rng, l)
		want := cpu.FromHost(slices.Clone(pool), l.PoolElems())
		cpu.Evict(want, l, jobs)
		got := g.FromHost(pool, l.PoolElems())
		g.Evict(got, l, jobs)
		if err := g.Err(); err != nil {
			t.Fatal(err)
		}
		if !sameBits(g.host(t, got), want.data) {
			t.Errorf("evict four tables %v: the pool differs from the CPU's", dt)
		}
	}
}

func TestGPUErrors(t *testing.T) {
	g := newGPU(t)
	l := shm.Layout{NumBlocks: 4, BlockSize: 16, KVHeads: 1, HeadDim: 64}
	b := &AttnBatch{QIndptr: []int32{0, 1}, KVLen: []int32{1}, BlockIndptr: []int32{0, 1}, Blocks: []int32{1}}
	out, q := g.Alloc(1, 16*64), g.Alloc(1, 16*64)
	g.Attention(out, q, g.Alloc(l.PoolElems()), l, b, 1)
	if err := g.Err(); err == nil || !strings.Contains(err.Error(), "query heads per KV head") {
		t.Errorf("16 query heads per KV head: got %v, want an error saying what the kernels take", err)
	}
	if err := g.Err(); err != nil {
		t.Errorf("Err did not clear: %v", err)
	}
	huge := g.Alloc(1<<42, 1) // 16 TiB
	// Work given the failed allocation's tensor is not launched (a fault
	// would end the context) until the error has been seen.
	g.Evict(huge, l, []EvictJob{{Blocks: []int32{1, 2}, Tokens: 20, Keep: 4, Recent: 2}})
	var ce *cuda.Error
	if err := g.Err(); !errors.As(err, &ce) || ce.Name != "CUDA_ERROR_OUT_OF_MEMORY" {
		t.Errorf("16 TiB allocation: got %v, want CUDA_ERROR_OUT_OF_MEMORY", err)
	}
	if got := g.host(t, g.FromHost([]float32{1, 2, 3}, 3)); !slices.Equal(got, []float32{1, 2, 3}) {
		t.Errorf("after the errors the context gives back %v, want [1 2 3]", got)
	}
}

// BenchmarkGPU measures the two ceilings (copy bandwidth, bf16 GEMM rate)
// and the forward pass's GEMM shapes at decode and prefill row counts:
// go test -run '^$' -bench GPU ./kernels on a GPU machine.
func BenchmarkGPU(b *testing.B) {
	g := newGPU(b)
	rng := rand.New(rand.NewPCG(1, 1))
	const n = 1 << 28 // 1 GiB of float32
	x, y := g.Alloc(n), g.Alloc(n)
	g.fail(g.ctx.Memset32(ptr(x), 0x3f800000, n))
	b.Run("copy-1GiB", func(b *testing.B) {
		for range b.N {
			g.Add(y, x) // reads 2, writes 1
		}
		g.sync(b)
		b.ReportMetric(float64(3*4*n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
	})
	g.Free(x)
	g.Free(y)
	// Rows x in x out: the matrix-vector sizes, then Llama-3.1-8B's four
	// projections (qkv, o, gate+up, down) and LM head at a 32-sequence
	// decode step and at an 8192-token prefill step.
	shapes := [][3]int{{1, 4096, 14336}, {2, 4096, 14336}, {4, 4096, 14336}, {8, 4096, 14336}, {1, 14336, 4096}, {1, 4096, 128256}, {4096, 4096, 14336}}
	for _, t := range []int{32, 64, 8192} {
		shapes = append(shapes, [][3]int{{t, 4096, 6144}, {t, 4096, 4096}, {t, 4096, 28672}, {t, 14336, 4096}}...)
	}
	shapes = append(shapes, [3]int{32, 4096, 128256})
	for _, sh := range shapes {
		T, k, nn := sh[0], sh[1], sh[2]
		w := g.Weight(randn(rng, nn*k), nn, k)
		in, out := g.FromHost(randn(rng, T*k), T, k), g.Alloc(T, nn)
		b.Run(fmt.Sprintf("linear-%dx%dx%d", T, k, nn), func(b *testing.B) {
			for range b.N {
				g.Linear(out, in, w)
			}
			g.sync(b)
			s := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(float64(2*nn*k+4*T*(k+nn))/s/1e9, "GB/s")
			b.ReportMetric(float64(2*T*k*nn)/s/1e12, "TFLOP/s")
		})
		g.Free(w)
	}
}

// BenchmarkGPUAttention times Llama-3.1-8B's attention (32 heads, 8 KV
// heads of 128) over the pool: a 5000-token prompt (the tensor-core
// kernel), and decode at 5000 tokens of context for 1, 8 and 32 sequences
// (the split row kernels: split_paged, split_paged_v2 as /v2, and
// split_paged_mma over the packed pools as /v2/dmma), with
// FLOP/s and the bytes of K and V read; the -bf16 cases over a bfloat16
// pool (half the bytes).
func BenchmarkGPUAttention(b *testing.B) {
	g := newGPU(b)
	rng := rand.New(rand.NewPCG(3, 3))
	const heads, kvh, hd, bs = 32, 8, 128, 16
	per, perV2, v2, mma, dmma, wg := splitPerSM, splitPerSMV2, g.attnV2, g.flashMMA, g.decodeMMA, g.flashWGMMA
	for _, c := range []struct {
		name       string
		seqs, rows int
		dt         shm.DType
		ctx        int
		score      bool // every row scores (H2O's decode rows)
	}{
		{"prefill-1x5000", 1, 5000, shm.Float32, 5000, false}, {"decode-1x5000", 1, 1, shm.Float32, 5000, false}, {"decode-8x5000", 8, 1, shm.Float32, 5000, false}, {"decode-32x5000", 32, 1, shm.Float32, 5000, false},
		{"prefill-1x5000-bf16", 1, 5000, shm.BFloat16, 5000, false}, {"decode-32x5000-bf16", 32, 1, shm.BFloat16, 5000, false},
		// A sparse layer's decode at the 26 / 1024 preset: ~1100 kept
		// tokens, every row scoring (the fused pass over bfloat16).
		{"decode-32x1100-bf16-h2o", 32, 1, shm.BFloat16, 1100, true},
		// An fp8 pool: a quarter of float32's bytes.
		{"prefill-1x5000-fp8", 1, 5000, shm.FP8E4M3, 5000, false}, {"decode-32x5000-fp8", 32, 1, shm.FP8E4M3, 5000, false},
		{"decode-32x1100-fp8-h2o", 32, 1, shm.FP8E4M3, 1100, true},
		// 128 sequences, as the served runs at C = 128: run 10's decode
		// kernel with the queries in registers saved 15 us a layer at 32
		// sequences and 256 served at 128.
		{"decode-128x5000-bf16", 128, 1, shm.BFloat16, 5000, false}, {"decode-128x5000-fp8", 128, 1, shm.FP8E4M3, 5000, false},
		// 256, as C = 256 with 8192 tokens a step (run 16): all 256
		// places decode, and fp8 decode is most of a decode-only step.
		{"decode-256x5000-fp8", 256, 1, shm.FP8E4M3, 5000, false},
	} {
		if only := os.Getenv("KVD_BENCH_ONLY"); only != "" && !strings.Contains(c.name, only) {
			continue
		}
		ctx := c.ctx
		nb := (ctx + bs - 1) / bs
		l := shm.Layout{NumBlocks: c.seqs*nb + 1, BlockSize: bs, KVHeads: kvh, HeadDim: hd, DType: c.dt}
		ab := &AttnBatch{QIndptr: []int32{0}, BlockIndptr: []int32{0}}
		for s := range c.seqs {
			for i := range nb {
				ab.Blocks = append(ab.Blocks, int32(1+s*nb+i))
			}
			ab.QIndptr = append(ab.QIndptr, int32((s+1)*c.rows))
			ab.BlockIndptr = append(ab.BlockIndptr, int32(len(ab.Blocks)))
			ab.KVLen = append(ab.KVLen, int32(ctx))
		}
		if c.score {
			ab.ScoreFrom = make([]int32, c.seqs)
		}
		T := c.seqs * c.rows
		// The case's pool is made (seconds at 128 sequences) when the
		// first of its runs that -test.bench selects starts.
		var pool, q, out *Tensor
		setup := func(b *testing.B) {
			if pool == nil {
				pool = g.FromHost(tiledPool(rng, l), l.PoolElems())
				q, out = g.FromHost(randn(rng, T*heads*hd), T, heads*hd), g.Alloc(T, heads*hd)
				g.sync(b)
			}
			b.ResetTimer()
		}
		for _, run := range []struct {
			per               int
			v2, mma, dmma, wg bool
		}{{2, false, false, false, false}, {8, false, false, false, false}, {16, false, false, false, false}, {2, true, false, false, false}, {4, true, false, false, false}, {8, true, false, false, false}, {16, true, false, false, false}, {32, true, false, false, false}, {8, false, true, false, false},
			{8, false, true, false, true}, {2, true, false, true, false}, {4, true, false, true, false}, {8, true, false, true, false}} {
			if c.rows > 1 && (run.per != 8 || run.v2) || c.rows == 1 && (run.mma || run.wg) {
				continue // the prompt's rows do not split; decode rows do not run on the prompt's tensor-core kernel
			}
			if run.v2 && !v2OK(l) || run.dmma && c.dt == shm.Float32 || run.wg && (!wg || c.dt == shm.Float32) {
				continue // head dim 128 only; split_paged_mma over packed pools only; wgmma on sm_90 over packed pools
			}
			splitPerSM, splitPerSMV2, g.attnV2, g.flashMMA, g.decodeMMA, g.flashWGMMA = run.per, run.per, run.v2, run.mma, run.dmma, run.wg
			name := fmt.Sprintf("%s/split%d", c.name, run.per)
			if run.v2 {
				name += "/v2"
			}
			if run.mma {
				name += "/mma"
			}
			if run.wg {
				name += "/wgmma"
			}
			if run.dmma {
				name += "/dmma"
			}
			b.Run(name, func(b *testing.B) {
				setup(b)
				for range b.N {
					g.Attention(out, q, pool, l, ab, 0.088)
				}
				g.sync(b)
				s := b.Elapsed().Seconds() / float64(b.N)
				keys := float64(c.seqs) * float64(ctx) // per row of the last query
				flops := 4 * float64(heads*hd) * keys
				if c.rows > 1 {
					flops *= float64(c.rows) / 2 // causal
				}
				b.ReportMetric(flops/s/1e12, "TFLOP/s")
				b.ReportMetric(keys*2*kvh*float64(4*l.RowElems())/s/1e9, "KV-GB/s")
			})
		}
		splitPerSM, splitPerSMV2, g.attnV2, g.flashMMA, g.decodeMMA, g.flashWGMMA = per, perV2, v2, mma, dmma, wg
		if pool != nil {
			g.Free(pool)
			g.Free(q)
			g.Free(out)
		}
	}
}

func (c *CUDA) sync(tb testing.TB) {
	tb.Helper()
	c.fail(c.ctx.Sync(cuda.Stream{}))
	if err := c.Err(); err != nil {
		tb.Fatal(err)
	}
}

func TestGPUSample(t *testing.T) {
	g, cpu := newGPU(t), NewCPU()
	for _, v := range []int{1000, 128256} {
		rows, want := argmaxRows(rand.New(rand.NewPCG(2, uint64(v))), v)
		got := make([]int32, len(want))
		g.Sample(got, g.FromHost(rows, len(want), v), make([]SampleParams, len(want)))
		if err := g.Err(); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("vocab %d: greedy %v, want %v", v, got, want)
		}
		// Random rows under every kind of setting: the same draws as
		// the CPU, but for near-ties of float64 sums at a boundary.
		rng := rand.New(rand.NewPCG(3, uint64(v)))
		const R = 96
		data := make([]float32, R*v)
		params := make([]SampleParams, R)
		for r := range R {
			for i := range v {
				data[r*v+i] = float32(rng.NormFloat64() * 3)
			}
			params[r] = SampleParams{Temperature: []float32{0, 0.5, 1, 2}[r%4], TopK: []int{0, 1, 50, v / 2}[r/4%4],
				TopP: []float32{1, 0.9, 0.5}[r/16%3], Seed: uint64(r), Step: uint64(r * 7)}
			if r%5 == 0 {
				params[r].Suppress = []int32{int32(rng.IntN(v)), int32(rng.IntN(v))}
			}
		}
		wantTok, gotTok := make([]int32, R), make([]int32, R)
		cpu.Sample(wantTok, cpu.FromHost(slices.Clone(data), R, v), params)
		g.Sample(gotTok, g.FromHost(data, R, v), params)
		if err := g.Err(); err != nil {
			t.Fatal(err)
		}
		differ := 0
		for r := range R {
			if gotTok[r] != wantTok[r] {
				differ++
				t.Logf("vocab %d row %d %+v: GPU drew %d, CPU %d", v, r, params[r], gotTok[r], wantTok[r])
			}
		}
		if differ > 1 {
			t.Errorf("vocab %d: %d of %d draws differ from the CPU's", v, differ, R)
		}
	}
}

// sameAsHost fails the test when g has an error pending or the pool the
// device's choice left differs in any bit from the one the host's left.
func sameAsHost(t *testing.T, g *CUDA, label string, onDevice, onHost *Tensor) {
	t.Helper()
	if err := g.Err(); err != nil {
		t.Fatalf("%s: %v", label, err)
	}
	if !sameBits(g.host(t, onDevice), g.host(t, onHost)) {
		t.Errorf("%s: the device's choice differs from the host's", label)
	}
}

// sameBits reports whether a and b hold the same float32 bit patterns (NaN
// poison included).
func sameBits(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}

// TestFlashKernelNames checks, without a GPU, that every tensor-core
// kernel Attention and SparsePrefill may launch is one NewCUDA loads, with
// dynamic shared memory within the 163 KiB a CTA may have on sm_80.
func TestFlashKernelNames(t *testing.T) {
	loaded := map[string]bool{}
	for _, n := range kernelNames["attention"] {
		loaded[n] = true
	}
	for _, hd := range []int{64, 128} {
		for _, dt := range dtypes {
			for _, base := range []string{"flash_paged", "flash_prompt"} {
				for _, mma := range []bool{false, true} {
					if !flashExists(base, dt, mma) {
						continue // a prompt's own K and V in bf16 run on the mma kernel only
					}
					name, smem := flashKernel(base, hd, dt, mma)
					if !loaded[name] {
						t.Errorf("%s (hd %d, %v, mma %v) is not among the attention module's kernels", name, hd, dt, mma)
					}
					if smem <= 0 || smem > 163<<10 {
						t.Errorf("%s: %d bytes of dynamic shared memory", name, smem)
					}
				}
			}
		}
	}
}

// TestHeaviestFirst: flash_paged's tiles reordered by the keys their last
// row sees, most first, and no tile lost or changed.
func TestHeaviestFirst(t *testing.T) {
	// Two sequences: 130 prompt rows after 0 past tokens (table 0), and 70
	// rows after 1000 (table 5), in tiles of 64 rows.
	tiles := []int32{0, 64, 0, 0, 64, 64, 64, 0, 128, 2, 128, 0, 130, 64, 1000, 5, 194, 6, 1064, 5}
	want := []int32{194, 6, 1064, 5, 130, 64, 1000, 5, 128, 2, 128, 0, 64, 64, 64, 0, 0, 64, 0, 0}
	got := slices.Clone(tiles)
	heaviestFirst(got)
	if !slices.Equal(got, want) {
		t.Fatalf("heaviestFirst(%v) = %v, want %v", tiles, got, want)
	}
}
