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

func seed(v uint64) *uint64 { return &v }

func TestGreedy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		logits []float32
		want   int32
	}{
		{"single", []float32{3}, 0},
		{"max in middle", []float32{1, 5, 2}, 1},
		{"max last", []float32{-3, -2, -1}, 2},
		{"tie takes lowest index", []float32{1, 7, 3, 7, 7}, 1},
		{"all equal", []float32{2, 2, 2}, 0},
		{"NaN is -Inf", []float32{nan, -100, nan}, 1},
		{"+Inf wins", []float32{1e30, inf, 3, inf}, 1},
		{"all -Inf", []float32{ninf, ninf}, 0},
		{"all NaN", []float32{nan, nan, nan}, 0},
		{"empty", nil, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, p := range []Params{
				{Temperature: 0},
				{Temperature: 1e-6},
				{Temperature: float32(math.NaN())},
				{Temperature: -1},
				{Temperature: 0.7, TopK: 1},
			} {
				if got := New(p).Sample(tc.logits); got != tc.want {
					t.Errorf("%+v: Sample = %d, want %d", p, got, tc.want)
				}
			}
		})
	}
}

func TestSampleDoesNotModifyLogits(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	logits := randomLogits(rng, 1000)
	logits[3], logits[10] = nan, ninf
	orig := slices.Clone(logits)
	for _, p := range benchParams {
		p.Params.Seed = seed(1)
		New(p.Params).Sample(logits)
		for i := range logits {
			if math.Float32bits(logits[i]) != math.Float32bits(orig[i]) {
				t.Fatalf("%s: logits[%d] changed from %v to %v", p.name, i, orig[i], logits[i])
			}
		}
	}
}

func TestSeededReproducible(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	rows := make([][]float32, 200)
	for i := range rows {
		rows[i] = randomLogits(rng, 64)
	}
	draw := func(p Params) []int32 {
		s := New(p)
		out := make([]int32, len(rows))
		for i, r := range rows {
			out[i] = s.Sample(r)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		p    Params
	}{
		{"temperature", Params{Temperature: 1}},
		{"top_p", Params{Temperature: 1.3, TopP: 0.95}},
		{"top_k", Params{Temperature: 2, TopK: 20}},
		{"top_k and top_p", Params{Temperature: 2, TopK: 20, TopP: 0.9}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.p
			a.Seed = seed(42)
			b := tc.p
			b.Seed = seed(42)
			first, again := draw(a), draw(b)
			if !slices.Equal(first, again) {
				t.Errorf("seed 42 gave different tokens on two runs:\n%v\n%v", first, again)
			}
			// Another request's draws between ours must not matter.
			other := New(Params{Temperature: 1, Seed: seed(42)})
			s := New(a)
			for i, r := range rows {
				other.Sample(r)
				if got := s.Sample(r); got != first[i] {
					t.Fatalf("row %d: interleaved sampler gave %d, want %d", i, got, first[i])
				}
			}
			c := tc.p
			c.Seed = seed(43)
			if slices.Equal(first, draw(c)) {
				t.Errorf("seeds 42 and 43 gave the same %d tokens", len(rows))
			}
			// Unseeded samplers get independent seeds from crypto/rand.
			if slices.Equal(draw(tc.p), draw(tc.p)) {
				t.Errorf("two unseeded samplers gave the same %d tokens", len(rows))
			}
		})
	}
}

func TestTopK1IsGreedy(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	for _, temp := range []float32{0.01, 0.5, 1, 2, 100, inf} {
		for _, topP := range []float32{0, 0.5, 1} {
			s := New(Params{Temperature: temp, TopK: 1, TopP: topP, Seed: seed(1)})
			for range 50 {
				logits := randomLogits(rng, 300)
				if got, want := s.Sample(logits), argmax(logits); got != want {
					t.Fatalf("T=%v top_p=%v: Sample = %d, argmax = %d", temp, topP, got, want)
				}
			}
		}
	}
}

func TestTinyTopPKeepsMax(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	for _, tc := range []struct {
		name string
		p    Params
	}{
		{"top_p only", Params{Temperature: 5, TopP: 1e-6}},
		{"with top_k", Params{Temperature: 5, TopP: 1e-6, TopK: 40}},
		{"flat logits, top_p below 1/vocab", Params{Temperature: 1, TopP: 1e-4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.p.Seed = seed(9)
			s := New(tc.p)
			for range 200 {
				logits := randomLogits(rng, 1000)
				if got, want := s.Sample(logits), argmax(logits); got != want {
					t.Fatalf("Sample = %d, argmax = %d", got, want)
				}
			}
		})
	}
}

// softmax is the reference: exp(l/T) normalised, in float64, from the
// definition.
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

func empirical(s *Sampler, logits []float32, draws int) []float64 {
	f := make([]float64, len(logits))
	for range draws {
		f[s.Sample(logits)]++
	}
	for i := range f {
		f[i] /= float64(draws)
	}
	return f
}

func TestDistributionMatchesSoftmax(t *testing.T) {
	logits := []float32{1.0, 2.0, 0.5, -1.0, 1.7}
	for _, tc := range []struct {
		name string
		p    Params
		want []float64
	}{
		{"temperature 1", Params{Temperature: 1}, softmax(logits, 1)},
		{"temperature 0.5", Params{Temperature: 0.5}, softmax(logits, 0.5)},
		{"temperature 2", Params{Temperature: 2}, softmax(logits, 2)},
		{"top_k 5 of 5 is off", Params{Temperature: 1, TopK: 5}, softmax(logits, 1)},
		{"top_p 1 is off", Params{Temperature: 1, TopP: 1}, softmax(logits, 1)},
		// Probabilities: token 1 .420, 4 .311, 0 .154, 2 .094, 3 .021;
		// cumulative from the top .420 .731 .885 .979.
		{"top_k 2", Params{Temperature: 1, TopK: 2}, renorm(softmax(logits, 1), 1, 4)},
		{"top_p 0.4", Params{Temperature: 1, TopP: 0.4}, renorm(softmax(logits, 1), 1)},
		{"top_p 0.7", Params{Temperature: 1, TopP: 0.7}, renorm(softmax(logits, 1), 1, 4)},
		{"top_p 0.8", Params{Temperature: 1, TopP: 0.8}, renorm(softmax(logits, 1), 1, 4, 0)},
		// Within the top 3 the cumulative is .474 .826 1.
		{"top_k 3, top_p 0.8", Params{Temperature: 1, TopK: 3, TopP: 0.8}, renorm(softmax(logits, 1), 1, 4)},
		{"top_k 3, top_p 0.85", Params{Temperature: 1, TopK: 3, TopP: 0.85}, renorm(softmax(logits, 1), 1, 4, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.p.Seed = seed(2024)
			got := empirical(New(tc.p), logits, 20000)
			for i := range got {
				if d := math.Abs(got[i] - tc.want[i]); d > 0.02 {
					t.Errorf("token %d: frequency %.4f, want %.4f", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// renorm keeps only the given tokens of p and renormalises.
func renorm(p []float64, keep ...int) []float64 {
	out := make([]float64, len(p))
	var z float64
	for _, i := range keep {
		z += p[i]
	}
	for _, i := range keep {
		out[i] = p[i] / z
	}
	return out
}

func TestTemperatureSharpens(t *testing.T) {
	logits := []float32{0.3, 1.2, 0.9, -0.4}
	const draws = 20000
	prev := 0.0
	for _, temp := range []float32{4, 2, 1, 0.5, 0.25} {
		f := empirical(New(Params{Temperature: temp, Seed: seed(5)}), logits, draws)
		if f[1] <= prev {
			t.Errorf("T=%v: mass on the max %.4f, not above %.4f at the higher temperature", temp, f[1], prev)
		}
		if want := softmax(logits, float64(temp))[1]; math.Abs(f[1]-want) > 0.02 {
			t.Errorf("T=%v: mass on the max %.4f, want %.4f", temp, f[1], want)
		}
		prev = f[1]
	}
}

func TestNonFiniteLogits(t *testing.T) {
	for _, tc := range []struct {
		name    string
		logits  []float32
		allowed []int32 // tokens a draw may give
	}{
		{"NaN never drawn", []float32{nan, 0, nan, 1, nan}, []int32{1, 3}},
		{"-Inf never drawn", []float32{ninf, 0, ninf, 0.5}, []int32{1, 3}},
		{"+Inf takes all mass", []float32{3, inf, 1e30, inf, nan}, []int32{1, 3}},
		{"one finite among NaN", []float32{nan, nan, -1e30, nan}, []int32{2}},
		{"huge finite spread", []float32{-3e38, 3e38, 0}, []int32{1}},
		{"all -Inf is uniform", []float32{ninf, ninf, ninf}, []int32{0, 1, 2}},
		{"all NaN is uniform", []float32{nan, nan}, []int32{0, 1}},
		{"single token", []float32{nan}, []int32{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, p := range benchParams {
				p.Params.Seed = seed(11)
				s := New(p.Params)
				for range 200 {
					if got := s.Sample(tc.logits); !slices.Contains(tc.allowed, got) {
						t.Fatalf("%s: Sample = %d, want one of %v", p.name, got, tc.allowed)
					}
				}
			}
		})
	}
}

func TestParamsClamped(t *testing.T) {
	logits := []float32{0, 1, 2, 3}
	for _, tc := range []struct {
		name string
		p    Params
	}{
		{"negative top_k", Params{Temperature: 1, TopK: -1}},
		{"top_k above vocab", Params{Temperature: 1, TopK: 1 << 40}},
		{"top_p 0", Params{Temperature: 1, TopP: 0}},
		{"top_p negative", Params{Temperature: 1, TopP: -3}},
		{"top_p above 1", Params{Temperature: 1, TopP: 7}},
		{"top_p NaN", Params{Temperature: 1, TopP: float32(math.NaN())}},
		{"temperature +Inf", Params{Temperature: inf}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.p.Seed = seed(8)
			seen := map[int32]bool{}
			s := New(tc.p)
			for range 400 {
				got := s.Sample(logits)
				if got < 0 || int(got) >= len(logits) {
					t.Fatalf("Sample = %d, out of range", got)
				}
				seen[got] = true
			}
			if len(seen) != len(logits) {
				t.Errorf("drew only %v; the filter should be off", seen)
			}
		})
	}
}

// refKeep is the reference for the kept set: sort the whole vocabulary
// (logit descending, index ascending), take k, weigh, cut at top_p.
func refKeep(logits []float32, p Params) []cand {
	invT := 1 / float64(p.Temperature)
	c := make([]cand, len(logits))
	for i, v := range logits {
		if v != v {
			v = ninf
		}
		c[i] = cand{v, int32(i)}
	}
	slices.SortStableFunc(c, func(a, b cand) int {
		switch {
		case a.v > b.v:
			return -1
		case a.v < b.v:
			return 1
		}
		return 0
	})
	if p.TopK > 0 && p.TopK < len(c) {
		c = c[:p.TopK]
	}
	var total float64
	m := c[0].v
	for i := range c {
		c[i].v = weight(c[i].v, m, invT)
		total += float64(c[i].v)
	}
	if p.TopP > 0 && p.TopP < 1 {
		var cum float64
		for i := range c {
			cum += float64(c[i].v)
			if cum >= float64(p.TopP)*total {
				return c[:i+1]
			}
		}
	}
	return c
}

// TestKeptSetMatchesFullSort checks the heap and histogram selections
// against refKeep on random vocabularies with ties and non-finite logits.
func TestKeptSetMatchesFullSort(t *testing.T) {
	s0 := rand.Uint64()
	t.Logf("seed %d", s0)
	rng := rand.New(rand.NewPCG(s0, 0))
	for _, tc := range []struct {
		name string
		p    Params
	}{
		{"top_k 1", Params{Temperature: 1, TopK: 1}},
		{"top_k 7", Params{Temperature: 0.8, TopK: 7}},
		{"top_k 50", Params{Temperature: 1.5, TopK: 50}},
		{"top_p 0.5", Params{Temperature: 1, TopP: 0.5}},
		{"top_p 0.9", Params{Temperature: 0.8, TopP: 0.9}},
		{"top_p 0.99 hot", Params{Temperature: 3, TopP: 0.99}},
		{"top_p 0.9 cold", Params{Temperature: 0.05, TopP: 0.9}},
		{"top_k 50, top_p 0.9", Params{Temperature: 1, TopK: 50, TopP: 0.9}},
		{"top_k 500, top_p 0.3", Params{Temperature: 2, TopK: 500, TopP: 0.3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(tc.p)
			for iter := range 60 {
				n := 1 + rng.IntN(3000)
				logits := randomLogits(rng, n)
				switch iter % 10 {
				case 1: // a wide, flat row: the radix select narrows twice
					n = 4000 + rng.IntN(4000)
					logits = make([]float32, n)
					for i := range logits {
						logits[i] = float32(rng.NormFloat64() * 0.1)
					}
				case 2: // all equal: one weight, a sort by id decides
					n = 1000 + rng.IntN(1000)
					logits = make([]float32, n)
				}
				if iter%3 == 0 { // ties
					for i := range logits {
						logits[i] = float32(math.Round(float64(logits[i]) * 2))
					}
				}
				if iter%5 == 0 {
					for range 1 + n/10 {
						logits[rng.IntN(n)] = []float32{nan, ninf}[rng.IntN(2)]
					}
				}
				topK := s.topK > 0 && s.topK < n
				if !topK && s.topP == 1 {
					continue // no filter: Sample draws from the whole row
				}
				want := refKeep(logits, tc.p)
				var got []cand
				if topK {
					got = s.topKCands(logits)
					var total float64
					total = toWeights(got, s.invT)
					if s.topP < 1 {
						got, _ = cutTopP(got, total, s.topP)
					}
				} else {
					got = keptByCut(t, s, logits)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("iter %d, vocab %d: kept %d tokens, reference %d\n got %v\nwant %v",
						iter, n, len(got), len(want), head(got), head(want))
				}
			}
		})
	}
}

func head(c []cand) []cand { return c[:min(len(c), 10)] }

func TestSampleAllocatesNothing(t *testing.T) {
	logits := randomLogits(rand.New(rand.NewPCG(1, 1)), 32000)
	for _, p := range benchParams {
		t.Run(p.name, func(t *testing.T) {
			p.Params.Seed = seed(1)
			s := New(p.Params)
			s.Sample(logits) // grow scratch
			if a := testing.AllocsPerRun(20, func() { s.Sample(logits) }); a != 0 {
				t.Errorf("Sample allocates %v times per call", a)
			}
		})
	}
}

// keptByCut lists the tokens topPCut keeps, in reference order, with their
// weights.
func keptByCut(t *testing.T, s *Sampler, logits []float32) []cand {
	t.Helper()
	last, kept := s.topPCut(logits)
	var got []cand
	var sum float64
	for i, v := range logits {
		if v != v {
			v = ninf
		}
		if v > last.v || (v == last.v && int32(i) <= last.id) {
			got = append(got, cand{v, int32(i)})
			sum += float64(s.w[i])
		}
	}
	slices.SortFunc(got, compareCands)
	for i := range got {
		got[i].v = s.w[got[i].id]
	}
	if math.Abs(sum-kept) > 1e-9*kept {
		t.Fatalf("topPCut says kept weight %v, its tokens weigh %v", kept, sum)
	}
	return got
}
