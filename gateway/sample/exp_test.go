package sample

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestExpNeg(t *testing.T) {
	for _, tc := range []struct {
		name string
		x    float64
		want float64
	}{
		{"zero", 0, 1},
		{"minus one", -1, math.Exp(-1)},
		{"tiny", -1e-300, 1},
		{"half ln2 boundary", -math.Ln2 / 2, math.Exp(-math.Ln2 / 2)},
		{"large negative", -700, math.Exp(-700)},
		{"underflow", -709, 0},
		{"-Inf", math.Inf(-1), 0},
		{"positive", 5, math.Exp(5)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := expNeg(tc.x); !closeRel(got, tc.want, 1e-10) {
				t.Errorf("expNeg(%v) = %v, want %v", tc.x, got, tc.want)
			}
		})
	}
	if got := expNeg(math.NaN()); !math.IsNaN(got) {
		t.Errorf("expNeg(NaN) = %v, want NaN", got)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for range 100000 {
		x := -rng.Float64() * 708
		if rng.IntN(2) == 0 {
			x = -rng.Float64() * 5
		}
		if got, want := expNeg(x), math.Exp(x); !closeRel(got, want, 1e-10) {
			t.Fatalf("expNeg(%v) = %v, math.Exp gives %v", x, got, want)
		}
	}
}

func closeRel(got, want, tol float64) bool {
	return got == want || math.Abs(got-want) <= tol*math.Abs(want)
}

// TestExpRow holds the written-out loop to expNeg and weight.
func TestExpRow(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	for _, tc := range []struct {
		name   string
		logits []float32
		invT   float64
	}{
		{"random", randomLogits(rng, 5000), 1.25},
		{"cold", randomLogits(rng, 5000), 1e5},
		{"hot", randomLogits(rng, 5000), 1e-3},
		{"non-finite", []float32{nan, 1, ninf, 3, nan}, 1},
		{"with +Inf", []float32{inf, 1, ninf, inf, nan}, 2},
		{"all -Inf and NaN", []float32{ninf, nan, ninf}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := maxLogit(tc.logits)
			dst := make([]float32, len(tc.logits))
			sum := expRow(dst, tc.logits, m, tc.invT)
			sum64 := expRow(nil, tc.logits, m, tc.invT)
			var want, want64 float64
			for i, v := range tc.logits {
				w := weight(v, m, tc.invT)
				if dst[i] != w {
					t.Fatalf("logit %v: expRow weight %v, weight() %v", v, dst[i], w)
				}
				want += float64(w)
				if v == v && v != m {
					want64 += expNeg((float64(v) - float64(m)) * tc.invT)
				} else if v == m || (v != v && m == ninf) {
					want64++
				}
			}
			if sum != want || !closeRel(sum64, want64, 1e-15) {
				t.Errorf("sums %v and %v, want %v and %v", sum, sum64, want, want64)
			}
		})
	}
}
