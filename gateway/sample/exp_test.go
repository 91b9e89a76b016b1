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
