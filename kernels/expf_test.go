package kernels

import (
	"math"
	"testing"
)

func TestExpf(t *testing.T) {
	worst := 0.0
	for x := -87.0; x <= 0; x += 0.000731 {
		got, want := float64(expf(float32(x))), math.Exp(float64(float32(x)))
		if rel := math.Abs(got-want) / want; rel > worst {
			worst = rel
		}
	}
	if worst > 5e-7 {
		t.Errorf("expf: worst relative error %.3g", worst)
	}
	for _, x := range []float32{-88, -1000, float32(math.Inf(-1))} {
		if got := expf(x); got != 0 {
			t.Errorf("expf(%v) = %v, want 0", x, got)
		}
	}
	if expf(0) != 1 {
		t.Errorf("expf(0) = %v", expf(0))
	}
	t.Logf("worst relative error %.3g", worst)
}

func BenchmarkExpf(b *testing.B) {
	var s float32
	for i := range b.N {
		s += expf(-float32(i%8000) / 100)
	}
	_ = s
}
