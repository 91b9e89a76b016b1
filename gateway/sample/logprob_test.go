package sample

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

var (
	inf  = float32(math.Inf(1))
	ninf = float32(math.Inf(-1))
	nan  = float32(math.NaN())
)

func TestLogSoftmax(t *testing.T) {
	for _, tc := range []struct {
		name   string
		logits []float32
		want   []float64 // nil: check against softmax(logits, 1)
	}{
		{"small", []float32{1, 2, 3}, nil},
		{"single", []float32{-5}, []float64{0}},
		{"equal", []float32{7, 7, 7, 7}, []float64{-math.Log(4), -math.Log(4), -math.Log(4), -math.Log(4)}},
		{"large positive", []float32{1e4, 1e4 - 1, 1e4 - 2}, nil},
		{"large negative", []float32{-1e4, -1e4 - 1, -1e4 + 3}, nil},
		{"huge spread", []float32{1e4, -1e4, 0}, []float64{0, -2e4, -1e4}},
		{"float32 extremes", []float32{math.MaxFloat32, -math.MaxFloat32}, []float64{0, math.Inf(-1)}},
		{"NaN is -Inf", []float32{nan, 0, 0}, []float64{math.Inf(-1), -math.Ln2, -math.Ln2}},
		{"+Inf takes all", []float32{inf, 3, inf}, []float64{-math.Ln2, math.Inf(-1), -math.Ln2}},
		{"-Inf entries", []float32{ninf, 1, ninf}, []float64{math.Inf(-1), 0, math.Inf(-1)}},
		{"all -Inf is uniform", []float32{ninf, ninf}, []float64{-math.Ln2, -math.Ln2}},
		{"all NaN is uniform", []float32{nan, nan}, []float64{-math.Ln2, -math.Ln2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			if want == nil {
				// The reference in shifted form: l - max - log Σ exp(l - max).
				for _, p := range softmax(shift(tc.logits), 1) {
					want = append(want, math.Log(p))
				}
			}
			dst := make([]float32, len(tc.logits))
			orig := slices.Clone(tc.logits)
			LogSoftmax(dst, tc.logits)
			var sum float64
			for i, lp := range dst {
				sum += math.Exp(float64(lp))
				if math.IsNaN(float64(lp)) || lp > 0 {
					t.Errorf("logprob[%d] = %v", i, lp)
				}
				if !close32(lp, want[i]) {
					t.Errorf("logprob[%d] = %v, want %v", i, lp, want[i])
				}
			}
			if math.Abs(sum-1) > 1e-5 {
				t.Errorf("Σ exp(logprob) = %v, want 1", sum)
			}
			if !slices.EqualFunc(orig, tc.logits, func(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) }) {
				t.Errorf("logits changed: %v -> %v", orig, tc.logits)
			}
			// In place gives the same.
			inPlace := slices.Clone(tc.logits)
			LogSoftmax(inPlace, inPlace)
			if !slices.Equal(inPlace, dst) {
				t.Errorf("in place %v, want %v", inPlace, dst)
			}
		})
	}
}

// shift subtracts the maximum so the reference softmax cannot overflow.
func shift(l []float32) []float32 {
	m := slices.Max(l)
	out := make([]float32, len(l))
	for i, v := range l {
		out[i] = v - m
	}
	return out
}

func close32(got float32, want float64) bool {
	if math.IsInf(want, -1) {
		return math.IsInf(float64(got), -1)
	}
	return math.Abs(float64(got)-want) <= 1e-5*math.Max(1, math.Abs(want))
}

func TestLogSoftmaxLargeVocab(t *testing.T) {
	logits := randomLogits(rand.New(rand.NewPCG(5, 5)), llama3Vocab)
	for i := range logits {
		logits[i] += 3e3
	}
	dst := make([]float32, len(logits))
	LogSoftmax(dst, logits)
	var sum float64
	for _, lp := range dst {
		sum += math.Exp(float64(lp))
	}
	if math.Abs(sum-1) > 1e-4 {
		t.Errorf("Σ exp(logprob) = %v over %d tokens, want 1", sum, len(dst))
	}
	argmax := func(x []float32) int { return slices.Index(x, slices.Max(x)) }
	if got, want := argmax(dst), argmax(logits); got != want {
		t.Errorf("argmax of logprobs %d, of logits %d", got, want)
	}
}

func TestLogSoftmaxShortDst(t *testing.T) {
	dst := []float32{9, 9}
	LogSoftmax(dst[:1], []float32{0, 0})
	if !close32(dst[0], -math.Ln2) || dst[1] != 9 {
		t.Errorf("dst = %v, want [-ln 2, 9]", dst)
	}
	LogSoftmax(nil, nil) // nothing to do, no panic
}

func TestTopN(t *testing.T) {
	lp := []float32{-2, -0.5, -3, -0.5, nan, -1, ninf}
	for _, tc := range []struct {
		name string
		n    int
		want []TokenLogprob
	}{
		{"zero", 0, nil},
		{"negative", -3, nil},
		{"one", 1, []TokenLogprob{{1, -0.5}}},
		{"tie by lower id", 2, []TokenLogprob{{1, -0.5}, {3, -0.5}}},
		{"three", 3, []TokenLogprob{{1, -0.5}, {3, -0.5}, {5, -1}}},
		{"all, NaN as -Inf after -Inf's lower id", 7, []TokenLogprob{
			{1, -0.5}, {3, -0.5}, {5, -1}, {0, -2}, {2, -3}, {4, ninf}, {6, ninf}}},
		{"more than len", 100, []TokenLogprob{
			{1, -0.5}, {3, -0.5}, {5, -1}, {0, -2}, {2, -3}, {4, ninf}, {6, ninf}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := TopN(lp, tc.n); !slices.Equal(got, tc.want) {
				t.Errorf("TopN(%d) = %v, want %v", tc.n, got, tc.want)
			}
		})
	}
	if got := TopN(nil, 5); got != nil {
		t.Errorf("TopN(nil, 5) = %v, want nil", got)
	}
}

func TestTopNMatchesSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 6))
	for range 50 {
		n := 1 + rng.IntN(500)
		lp := make([]float32, n)
		for i := range lp {
			lp[i] = -float32(rng.IntN(20)) // many ties
		}
		ref := make([]TokenLogprob, n)
		for i, v := range lp {
			ref[i] = TokenLogprob{int32(i), v}
		}
		slices.SortStableFunc(ref, func(a, b TokenLogprob) int {
			switch {
			case a.Logprob > b.Logprob:
				return -1
			case a.Logprob < b.Logprob:
				return 1
			}
			return 0
		})
		k := rng.IntN(n + 2)
		want := ref[:min(k, n)]
		if k == 0 {
			want = nil
		}
		if got := TopN(lp, k); !slices.Equal(got, want) {
			t.Fatalf("vocab %d, n %d: got %v, want %v", n, k, got, want)
		}
	}
}

func TestSuppress(t *testing.T) {
	for _, tc := range []struct {
		name string
		ids  []int32
		want []float32
	}{
		{"none", nil, []float32{1, 2, 3}},
		{"one", []int32{2}, []float32{1, 2, ninf}},
		{"several and repeated", []int32{0, 2, 0}, []float32{ninf, 2, ninf}},
		{"out of range ignored", []int32{-1, 3, 1 << 30, 1}, []float32{1, ninf, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logits := []float32{1, 2, 3}
			Suppress(logits, tc.ids)
			if !slices.Equal(logits, tc.want) {
				t.Errorf("Suppress(%v) = %v, want %v", tc.ids, logits, tc.want)
			}
		})
	}
}

func softmax(logits []float32, temp float64) []float64 {
	m := math.Inf(-1)
	for _, v := range logits {
		m = math.Max(m, float64(v)/temp)
	}
	p := make([]float64, len(logits))
	var z float64
	for i, v := range logits {
		p[i] = math.Exp(float64(v)/temp - m)
		z += p[i]
	}
	for i := range p {
		p[i] /= z
	}
	return p
}
