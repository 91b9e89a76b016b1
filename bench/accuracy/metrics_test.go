package main

import (
	"math"
	"testing"
)

func TestEditSimilarity(t *testing.T) {
	cases := []struct {
		a, b string
		want float64
	}{
		{"return x", "return x", 100},
		{"  return x\n", "return x", 100},
		{"", "", 100},
		{"abc", "", 0},
		{"kitten", "sitting", 100 * (1 - 3.0/7)},
		{"héllo", "hello", 80},
	}
	for _, c := range cases {
		if got := editSimilarity(c.a, c.b); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("editSimilarity(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	s := summarize([]float64{1, 2, 3, 4})
	if s.Mean != 2.5 || s.N != 4 || math.Abs(s.CI-1.96*math.Sqrt(5.0/3/4)) > 1e-12 {
		t.Errorf("%+v", s)
	}
	if !math.IsNaN(summarize(nil).Mean) {
		t.Error("the mean of nothing is not NaN")
	}
}
