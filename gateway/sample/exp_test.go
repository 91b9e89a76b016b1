package sample

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestExpReduced(t *testing.T) {
	for _, tc := range []struct {
		name string
		x    float64
	}{
		{"zero", 0},
		{"minus one", -1},
		{"tiny", -1e-300},
		{"half step", -math.Ln2 / 128},
		{"float32 underflow", -87},
		{"large negative", -700},
		{"floor64", floor64},
		{"positive", 5},
		{"largest", 709},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, want := expReduced(tc.x), math.Exp(tc.x); !closeRel(got, want, 1e-12) {
				t.Errorf("expReduced(%v) = %v, math.Exp gives %v", tc.x, got, want)
			}
		})
	}
	if got := expReduced(0); got != 1 {
		t.Errorf("expReduced(0) = %v, want exactly 1: the maximum must weigh 1", got)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for range 100000 {
		x := -rng.Float64() * 708
		if rng.IntN(2) == 0 {
			x = -rng.Float64() * 5
		}
		if got, want := expReduced(x), math.Exp(x); !closeRel(got, want, 1e-12) {
			t.Fatalf("expReduced(%v) = %v, math.Exp gives %v", x, got, want)
		}
	}
}

func closeRel(got, want, tol float64) bool {
	return got == want || math.Abs(got-want) <= tol*math.Abs(want)
}

// TestExpRow holds the row loops to weight, and weight to its definition.
