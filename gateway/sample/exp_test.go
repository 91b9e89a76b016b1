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
		{"floor32", floor32},
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
		{"float32 extremes", []float32{math.MaxFloat32, -math.MaxFloat32, 0}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := maxLogit(tc.logits)
			dst := make([]float32, len(tc.logits))
			sum := expRow(dst, tc.logits, m, tc.invT)
			var want, want64 float64
			for i, v := range tc.logits {
				w := weight(v, m, tc.invT)
				if dst[i] != w {
					t.Fatalf("logit %v: expRow weight %v, weight() %v", v, dst[i], w)
				}
				want += float64(w)
				// The definition, with math.Exp.
				var def float64
				switch {
				case v == m || (v != v && m == ninf):
					def = 1
				case v == v:
					def = math.Exp((float64(v) - float64(m)) * tc.invT)
				}
				if def < math.SmallestNonzeroFloat32*1e7 { // flushed below float32's normal range
					def = 0
				}
				if !closeRel(float64(w), def, 1e-6) {
					t.Fatalf("weight(%v) = %v, want %v", v, w, def)
				}
				if tc.invT == 1 {
					if v == m || (v != v && m == ninf) {
						want64++
					} else if v == v {
						want64 += math.Exp(float64(v) - float64(m))
					}
				}
			}
			if sum != want {
				t.Errorf("expRow sum %v, want %v", sum, want)
			}
			if tc.invT == 1 {
				if got := expSum(tc.logits, m); !closeRel(got, want64, 1e-12) {
					t.Errorf("expSum = %v, want %v", got, want64)
				}
			}
		})
	}
}
