package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/kvd-project/kvd/shm"
)

func randSlice(rng *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64())
	}
	return s
}

func maxRel(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	var d, m float64
	for i := range want {
		d = math.Max(d, math.Abs(float64(got[i]-want[i])))
		m = math.Max(m, math.Abs(float64(want[i])))
	}
	if d > tol*math.Max(m, 1e-30) {
		t.Fatalf("%s: max error %.3g (scale %.3g)", what, d, m)
	}
}

// TestLinear runs the AVX2 kernel (where the CPU has it) and gonum's over
// shapes with and without remainders of its 6-row, 16-feature tiles and
// its 96-row blocks, a weight used twice (packed once), against float64.
func TestLinear(t *testing.T) {
	defer func(f bool) { hasFMA = f }(hasFMA)
	paths := []bool{false}
	if hasFMA {
		paths = append(paths, true)
	}
	for _, fma := range paths {
		hasFMA = fma
		for _, s := range []struct{ t, k, n int }{{1, 1, 1}, {1, 64, 17}, {7, 33, 97}, {64, 128, 300}, {3, 1979, 5}, {101, 64, 32}, {200, 96, 48}, {6, 16, 16}} {
			testLinear(t, s.t, s.k, s.n, false)
			testLinear(t, s.t, s.k, s.n, true)
		}
	}
}

// testLinear checks one shape; bf16 rounds the weight to bfloat16 values,
// as a bf16 checkpoint's are, which the FMA path keeps as bf16 panels.
func testLinear(t *testing.T, T, K, N int, bf16 bool) {
	s := struct{ t, k, n int }{T, K, N}
	rng := rand.New(rand.NewPCG(uint64(s.t*s.k*s.n), 1))
	c := NewCPU()
	x, w := randSlice(rng, s.t*s.k), randSlice(rng, s.n*s.k)
	if bf16 {
		for i, v := range w {
			w[i] = math.Float32frombits(math.Float32bits(v) &^ 0xffff)
		}
	}
	wt := c.FromHost(w, s.n, s.k)
	for range 2 {
		out := c.Alloc(s.t, s.n)
		c.Linear(out, c.FromHost(x, s.t, s.k), wt)
		want := make([]float32, s.t*s.n)
		for i := range s.t {
			for j := range s.n {
				var acc float64
				for e := range s.k {
					acc += float64(x[i*s.k+e]) * float64(w[j*s.k+e])
				}
				want[i*s.n+j] = float32(acc)
			}
		}
		maxRel(t, fmt.Sprintf("linear %dx%dx%d (fma %v, bf16 %v)", s.t, s.k, s.n, hasFMA, bf16), out.data, want, 1e-5)
	}
	if p := wt.packed.Load(); hasFMA && (p == nil || (p.half != nil) != bf16) {
		t.Errorf("linear %dx%dx%d: bf16 weights %v, packed as bf16 %v", s.t, s.k, s.n, bf16, p != nil && p.half != nil)
	}
}

func TestElementwise(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 1))
	c := NewCPU()
	const T, D = 5, 24
	x, w := randSlice(rng, T*D), randSlice(rng, D)
	out := c.Alloc(T, D)
	c.RMSNorm(out, c.FromHost(x, T, D), c.FromHost(w, D), 1e-5)
	want := make([]float32, T*D)
	for i := range T {
		var ss float64
		for e := range D {
			ss += float64(x[i*D+e]) * float64(x[i*D+e])
		}
		r := 1 / math.Sqrt(ss/D+1e-5)
		for e := range D {
			want[i*D+e] = float32(float64(x[i*D+e]) * r * float64(w[e]))
		}
	}
	maxRel(t, "rmsnorm", out.data, want, 1e-6)

	gu := randSlice(rng, T*2*D)
	act := c.Alloc(T, D)
	c.SiLUMul(act, c.FromHost(gu, T, 2*D))
	for i := range T {
		for e := range D {
			g, u := float64(gu[i*2*D+e]), float64(gu[i*2*D+D+e])
			want[i*D+e] = float32(g / (1 + math.Exp(-g)) * u)
		}
	}
	maxRel(t, "silu_mul", act.data, want, 1e-6)

	// RoPE against the complex-number form: the pair (x[i], x[i+half]) is
	// multiplied by e^{i·pos·freq}.
	const H, Hd = 3, 8
	q := randSlice(rng, T*H*Hd)
	orig := append([]float32(nil), q...)
	freq := []float32{1, 0.1, 0.01, 0.001}
	pos := []int32{0, 1, 7, 100, 4095}
	c.RoPE(c.FromHost(q, T, H*Hd), H, pos, freq)
	for tt := range T {
		for h := range H {
			for i := range Hd / 2 {
				o := (tt*H+h)*Hd + i
				z := complex(float64(orig[o]), float64(orig[o+Hd/2])) *
					complex(math.Cos(float64(pos[tt])*float64(freq[i])), math.Sin(float64(pos[tt])*float64(freq[i])))
				want := []float32{float32(real(z)), float32(imag(z))}
				maxRel(t, "rope", []float32{q[o], q[o+Hd/2]}, want, 1e-5)
			}
		}
	}
}

// TestAttentionPaged scatters each sequence's K/V over shuffled blocks and
// compares with dense causal attention over the same K/V.
func TestAttentionPaged(t *testing.T) {
	cases := []struct {
		name               string
		heads, kvHeads, hd int
		blockSize          int
		past, new          []int // per sequence: tokens already cached, new queries
		scoreFrom          []int // per sequence: the first new query that scores (nil: none)
	}{
		{"decode batch, GQA 4", 8, 2, 16, 16, []int{0, 15, 16, 97}, []int{1, 1, 1, 1}, []int{0, 0, 0, 0}},
		{"prefill chunk after cache, MHA, block 3", 3, 3, 8, 3, []int{10, 0}, []int{7, 17}, []int{3, 17}},
		{"MQA, head dim 128, block 32", 4, 1, 128, 32, []int{33}, []int{5}, nil},
		// Large enough that jobs take the tiled BLAS path, with scores.
		{"long prefill, GQA 4, head dim 64", 8, 2, 64, 16, []int{300, 0}, []int{150, 200}, []int{120, 170}},
		{"decode over long context with scores", 6, 2, 64, 16, []int{900, 1000, 3}, []int{1, 1, 1}, []int{0, 0, 0}},
	}
	defer func(f bool) { hasFMA = f }(hasFMA)
	paths := []bool{false}
	if hasFMA {
		paths = append(paths, true)
	}
	for _, fma := range paths {
		hasFMA = fma
		for _, dt := range []shm.DType{shm.Float32, shm.BFloat16, shm.FP8E4M3} {
			for _, tc := range cases {
				testAttentionPaged(t, fma, dt, tc.name, tc.heads, tc.kvHeads, tc.hd, tc.blockSize, tc.past, tc.new, tc.scoreFrom)
			}
		}
	}
}

// testAttentionPaged writes random K and V into a pool of dtype dt
// (WriteKV) and wants Attention over it to match dense attention over the
// same K and V as the pool holds them (rounded to bfloat16 or fp8 for
// such a pool).
func testAttentionPaged(t *testing.T, fma bool, dt shm.DType, name string, heads, kvHeads, hd, blockSize int, past, new, scoreFrom []int) {
	tc := struct {
		name               string
		heads, kvHeads, hd int
		blockSize          int
		past, new          []int
		scoreFrom          []int
	}{name, heads, kvHeads, hd, blockSize, past, new, scoreFrom}
	{
		t.Run(fmt.Sprintf("%s/fma=%v/%v", tc.name, fma, dt), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(len(tc.name)), 5))
			c := NewCPU()
			l := shm.Layout{NumBlocks: 1, BlockSize: tc.blockSize, KVHeads: tc.kvHeads, HeadDim: tc.hd, DType: dt}
			for s := range tc.past {
				l.NumBlocks += l.BlocksFor(tc.past[s]+tc.new[s]) + 2 // spare blocks stay unused
			}
			pool := c.Alloc(l.PoolElems())
			perm := rng.Perm(l.NumBlocks - 1)
			nextBlock := 0
			b := &AttnBatch{QIndptr: []int32{0}, BlockIndptr: []int32{0}}
			var qAll []float32
			var want, wantScores, gotScores []float32
			kvw := tc.kvHeads * tc.hd
			if tc.scoreFrom != nil {
				for _, f := range tc.scoreFrom {
					b.ScoreFrom = append(b.ScoreFrom, int32(f))
				}
			}
			var tables [][]int32
			for s := range tc.past {
				total := tc.past[s] + tc.new[s]
				k, v := randSlice(rng, total*kvw), randSlice(rng, total*kvw)
				nb := l.BlocksFor(total)
				var slots []int32
				for i := range nb {
					b.Blocks = append(b.Blocks, int32(perm[nextBlock+i]+1))
				}
				for i := range total {
					slots = append(slots, b.Blocks[len(b.Blocks)-nb+i/tc.blockSize]*int32(tc.blockSize)+int32(i%tc.blockSize))
				}
				nextBlock += nb
				c.WriteKV(pool, l, c.FromHost(k, total, kvw), c.FromHost(v, total, kvw), slots)
				switch dt { // what the pool holds
				case shm.BFloat16:
					k, v = roundBF16s(k), roundBF16s(v)
				case shm.FP8E4M3:
					k, v = roundE4M3s(k), roundE4M3s(v)
				}
				b.BlockIndptr = append(b.BlockIndptr, int32(len(b.Blocks)))
				b.KVLen = append(b.KVLen, int32(total))
				b.QIndptr = append(b.QIndptr, b.QIndptr[len(b.QIndptr)-1]+int32(tc.new[s]))
				q := randSlice(rng, tc.new[s]*tc.heads*tc.hd)
				qAll = append(qAll, q...)
				o, sc := denseAttention(q, k, v, tc.heads, tc.kvHeads, tc.hd, tc.past[s], scoreFromOr(tc.scoreFrom, s, tc.new[s]))
				want = append(want, o...)
				wantScores = append(wantScores, sc...)
				tables = append(tables, slots)
			}
			nq := len(qAll) / (tc.heads * tc.hd)
			if err := b.Validate(nq, l); err != nil {
				t.Fatal(err)
			}
			out := c.Alloc(nq, tc.heads*tc.hd)
			c.Attention(out, c.FromHost(qAll, nq, tc.heads*tc.hd), pool, l, b, float32(1/math.Sqrt(float64(tc.hd))))
			maxRel(t, "attention", out.data, want, 1e-5)
			// Each cached token's score: the attention the scoring queries
			// of its KV head's group paid it.
			for _, slots := range tables {
				for h := range tc.kvHeads {
					for _, sl := range slots {
						gotScores = append(gotScores, pool.data[l.Score(int(sl)/tc.blockSize, h, int(sl)%tc.blockSize)])
					}
				}
			}
			maxRel(t, "scores", gotScores, wantScores, 1e-5)
		})
	}
}

func scoreFromOr(from []int, s, n int) int {
	if from == nil {
		return n
	}
	return from[s]
}

// denseAttention is causal attention of new queries (after past cached
// tokens) over contiguous k, v [total, kvHeads*hd], in float64, and the
// scores [kvHeads, total] that queries from scoreFrom on add.
func denseAttention(q, k, v []float32, heads, kvHeads, hd, past, scoreFrom int) ([]float32, []float32) {
	n := len(q) / (heads * hd)
	out := make([]float32, len(q))
	scores := make([]float64, kvHeads*(past+n))
	for i := range n {
		for h := range heads {
			kh := h / (heads / kvHeads)
			visible := past + i + 1
			s := make([]float64, visible)
			mx := math.Inf(-1)
			for j := range visible {
				var d float64
				for e := range hd {
					d += float64(q[(i*heads+h)*hd+e]) * float64(k[(j*kvHeads+kh)*hd+e])
				}
				s[j] = d / math.Sqrt(float64(hd))
				mx = math.Max(mx, s[j])
			}
			var sum float64
			for j := range s {
				s[j] = math.Exp(s[j] - mx)
				sum += s[j]
			}
			for e := range hd {
				var acc float64
				for j := range s {
					acc += s[j] / sum * float64(v[(j*kvHeads+kh)*hd+e])
				}
				out[(i*heads+h)*hd+e] = float32(acc)
			}
			if i >= scoreFrom {
				for j := range s {
					scores[kh*(past+n)+j] += s[j] / sum
				}
			}
		}
	}
	sc := make([]float32, len(scores))
	for i, x := range scores {
		sc[i] = float32(x)
	}
	return out, sc
}

// BenchmarkLinear compares the AVX2 kernel with gonum's at a decode step's
// and a prefill's shapes (go test -bench Linear ./kernels).
func BenchmarkLinear(b *testing.B) {
	defer func(f bool) { hasFMA = f }(hasFMA)
	can := hasFMA
	for _, s := range []struct {
		t, k, n int
		bf16    bool
	}{{4, 512, 1536, false}, {4, 512, 1536, true}, {256, 512, 1536, false}, {256, 512, 1536, true}} {
		for _, fma := range []bool{false, true} {
			if fma && !can {
				continue
			}
			b.Run(fmt.Sprintf("t%d-k%d-n%d-bf16=%v/fma=%v", s.t, s.k, s.n, s.bf16, fma), func(b *testing.B) {
				hasFMA = fma
				rng := rand.New(rand.NewPCG(1, 1))
				c := NewCPU()
				wd := randSlice(rng, s.n*s.k)
				if s.bf16 {
					for i, v := range wd {
						wd[i] = math.Float32frombits(math.Float32bits(v) &^ 0xffff)
					}
				}
				x, w, out := c.FromHost(randSlice(rng, s.t*s.k), s.t, s.k), c.FromHost(wd, s.n, s.k), c.Alloc(s.t, s.n)
				c.Linear(out, x, w)
				b.ResetTimer()
				for range b.N {
					c.Linear(out, x, w)
				}
				b.ReportMetric(2*float64(s.t*s.k*s.n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}

// argmaxRows are logits rows with the cases greedy sampling must agree on:
// ties (the lowest index wins), NaN (never chosen), all -Inf (index 0),
// +Inf, and plain random rows of vocabulary size v.
func argmaxRows(rng *rand.Rand, v int) ([]float32, []int32) {
	inf := float32(math.Inf(1))
	nan := float32(math.NaN())
	var rows []float32
	var want []int32
	add := func(row []float32, w int32) { rows, want = append(rows, row...), append(want, w) }
	for range 5 {
		row := make([]float32, v)
		best := 0
		for i := range row {
			row[i] = float32(rng.NormFloat64())
			if row[i] > row[best] {
				best = i
			}
		}
		add(row, int32(best))
	}
	row := make([]float32, v)
	row[v/3], row[v/2] = 7, 7 // a tie
	add(row, int32(v/3))
	row = make([]float32, v)
	for i := range row {
		row[i] = nan
	}
	row[v-1] = -1 // NaN everywhere else
	add(row, int32(v-1))
	row = make([]float32, v)
	for i := range row {
		row[i] = -inf
	}
	add(row, 0)
	row = make([]float32, v)
	row[v-2], row[v-1] = inf, inf
	add(row, int32(v-2))
	return rows, want
}

func TestSampleGreedy(t *testing.T) {
	c := NewCPU()
	rows, want := argmaxRows(rand.New(rand.NewPCG(1, 1)), 1000)
	got := make([]int32, len(want))
	c.Sample(got, c.FromHost(rows, len(want), 1000), make([]SampleParams, len(want)))
	if !slices.Equal(got, want) {
		t.Errorf("greedy %v, want %v", got, want)
	}
}

// sampleDist is the distribution Sample draws from for row under p,
// computed directly: temperature, top-k, top-p, renormalised.
func sampleDist(row []float64, p SampleParams) []float64 {
	idx := make([]int, len(row))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmpDesc(row[a], row[b]) })
	keep := len(row)
	if p.TopK > 0 && p.TopK < len(row) {
		keep = p.TopK
	}
	w := make([]float64, len(row))
	W := 0.0
	for _, i := range idx[:keep] {
		w[i] = math.Exp((row[i] - row[idx[0]]) / float64(p.Temperature))
		W += w[i]
	}
	if p.TopP > 0 && p.TopP < 1 {
		s, cut := 0.0, keep
		for n, i := range idx[:keep] {
			s += w[i]
			if s >= float64(p.TopP)*W {
				cut = n + 1
				break
			}
		}
		for _, i := range idx[cut:keep] {
			W -= w[i]
			w[i] = 0
		}
	}
	for i := range w {
		w[i] /= W
	}
	return w
}

func cmpDesc(a, b float64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

func TestSampleDistribution(t *testing.T) {
	c := NewCPU()
	row := []float64{1.5, -0.3, 2.2, 0.8, 2.0, -1.1, 0.1, 1.2}
	r32 := make([]float32, len(row))
	for i, x := range row {
		r32[i] = float32(x)
	}
	for _, p := range []SampleParams{
		{Temperature: 1},
		{Temperature: 0.7, TopK: 5},
		{Temperature: 1.3, TopP: 0.8},
		{Temperature: 0.9, TopK: 6, TopP: 0.7, Seed: 99},
	} {
		want := sampleDist(row, p)
		const n = 40000
		count := make([]float64, len(row))
		for s := range n {
			p.Step = uint64(s)
			got := []int32{0}
			c.Sample(got, c.FromHost(slices.Clone(r32), 1, len(row)), []SampleParams{p})
			count[got[0]]++
		}
		for i := range count {
			if f := count[i] / n; math.Abs(f-want[i]) > 0.01 || (want[i] == 0 && f != 0) {
				t.Errorf("%+v: token %d drawn %.4f of the time, want %.4f", p, i, f, want[i])
			}
		}
	}
}

func TestSampleSeededAndSuppressed(t *testing.T) {
	c := NewCPU()
	rng := rand.New(rand.NewPCG(5, 5))
	row := randSlice(rng, 500)
	draw := func(p SampleParams) int32 {
		got := []int32{0}
		c.Sample(got, c.FromHost(slices.Clone(row), 1, len(row)), []SampleParams{p})
		return got[0]
	}
	p := SampleParams{Temperature: 5, Seed: 7, Step: 3}
	if draw(p) != draw(p) {
		t.Error("the same seed and step drew different tokens")
	}
	differ := false
	for s := range 20 {
		q := p
		q.Step = uint64(s)
		differ = differ || draw(q) != draw(p)
	}
	if !differ {
		t.Error("20 steps drew the same token at temperature 5")
	}
	p.Temperature = 0
	top := draw(p)
	p.Suppress = []int32{top}
	if got := draw(p); got == top {
		t.Errorf("suppressed token %d drawn", top)
	}
	inf := float32(math.Inf(1))
	row = make([]float32, 500)
	row[10], row[400] = inf, inf
	seen := map[int32]bool{}
	for s := range 50 {
		seen[draw(SampleParams{Temperature: 1, Step: uint64(s)})] = true
	}
	if len(seen) != 2 || !seen[10] || !seen[400] {
		t.Errorf("+Inf logits at 10 and 400: drew %v", seen)
	}
}

// TestSampleOddInputs: whatever the logits and settings, Sample returns a
// token of the vocabulary and never panics; a suppressed token is never
// drawn while another is finite.
func TestSampleOddInputs(t *testing.T) {
	c := NewCPU()
	rng := rand.New(rand.NewPCG(8, 8))
	odd := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), 0, 1e30, -1e30}
	temps := []float32{0, 1e-6, 0.5, 1, 1e6, float32(math.Inf(1)), float32(math.NaN()), -1}
	for i := range 2000 {
		v := 1 + rng.IntN(300)
		row := make([]float32, v)
		for j := range row {
			if rng.IntN(4) == 0 {
				row[j] = odd[rng.IntN(len(odd))]
			} else {
				row[j] = float32(rng.NormFloat64() * 5)
			}
		}
		p := SampleParams{
			Temperature: temps[rng.IntN(len(temps))],
			TopK:        rng.IntN(2*v+2) - 1,
			TopP:        []float32{0, 0.1, 0.5, 0.99, 1, 2, -1, float32(math.NaN())}[rng.IntN(8)],
			Seed:        rng.Uint64(), Step: uint64(i),
			Suppress: []int32{int32(rng.IntN(v)), -1, int32(v), 1 << 30},
		}
		got := []int32{-1}
		c.Sample(got, c.FromHost(slices.Clone(row), 1, v), []SampleParams{p})
		if got[0] < 0 || int(got[0]) >= v {
			t.Fatalf("row %v, %+v: drew %d of a vocabulary of %d", row, p, got[0], v)
		}
		s := p.Suppress[0]
		finite := false
		for j, x := range row {
			finite = finite || (int32(j) != s && x == x && !math.IsInf(float64(x), -1))
		}
		if finite && got[0] == s {
			t.Fatalf("row %v, %+v: drew the suppressed token %d", row, p, s)
		}
	}
}

// TestEvictSources checks eviction's choice against the plain definition
// (a stable sort by score, highest first), with ties, small and large
// numbers to drop, and budgets past the table.
func TestEvictSources(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for trial := range 2000 {
		tokens := 1 + rng.IntN(300)
		sinks, recent := rng.IntN(8), rng.IntN(40)
		keep := sinks + recent + rng.IntN(tokens+2)
		scores := make([]float32, tokens)
		for i := range scores {
			scores[i] = float32(rng.IntN(1 + trial%20)) // many ties
		}
		got := evictSources(func(i int) float32 { return scores[i] }, tokens, keep, sinks, recent)
		// The definition.
		var mid []int
		for i := sinks; i < tokens-recent; i++ {
			mid = append(mid, i)
		}
		sort.SliceStable(mid, func(a, b int) bool { return scores[mid[a]] > scores[mid[b]] })
		kept := mid[:max(0, min(keep-sinks-recent, len(mid)))]
		want := []int{}
		for i := range min(sinks, tokens) {
			want = append(want, i)
		}
		want = append(want, slices.Sorted(slices.Values(kept))...)
		for i := max(tokens-recent, sinks); i < tokens; i++ {
			want = append(want, i)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("tokens %d keep %d sinks %d recent %d scores %v:\ngot  %v\nwant %v", tokens, keep, sinks, recent, scores, got, want)
		}
		// The device's eviction sizes its output by this count.
		if n := evictKept(EvictJob{Tokens: tokens, Keep: keep, Sinks: sinks, Recent: recent}); n != len(got) {
			t.Fatalf("tokens %d keep %d sinks %d recent %d: evictKept %d, evictSources keeps %d", tokens, keep, sinks, recent, n, len(got))
		}
	}
}

// roundE4M3s is x rounded to FP8 E4M3, as an fp8 pool keeps it.
func roundE4M3s(x []float32) []float32 {
	out := make([]float32, len(x))
	for i, f := range x {
		out[i] = fromE4M3(toE4M3(f))
	}
	return out
}

// roundBF16s is x rounded to bfloat16, as a bfloat16 pool keeps it.
func roundBF16s(x []float32) []float32 {
	out := make([]float32, len(x))
	for i, f := range x {
		out[i] = fromBF16(toBF16(f))
	}
	return out
}
