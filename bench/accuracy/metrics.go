package main

import (
	"math"
	"strings"
)

// editSimilarity is LongBench's code-completion score: 100 × (1 − edit
// distance / the longer length), over runes, of the two strings trimmed.
func editSimilarity(a, b string) float64 {
	ra, rb := []rune(strings.TrimSpace(a)), []rune(strings.TrimSpace(b))
	if len(ra) == 0 && len(rb) == 0 {
		return 100
	}
	return 100 * (1 - float64(levenshtein(ra, rb))/float64(max(len(ra), len(rb))))
}

func levenshtein(a, b []rune) int {
	prev, cur := make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// stat is a sample mean with its 95% confidence half-width (normal
// approximation: 1.96 standard errors).
type stat struct {
	Mean, CI float64
	N        int
}

func summarize(xs []float64) stat {
	if len(xs) == 0 {
		return stat{Mean: math.NaN()}
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	m := s / float64(len(xs))
	var v float64
	for _, x := range xs {
		v += (x - m) * (x - m)
	}
	ci := 0.0
	if len(xs) > 1 {
		ci = 1.96 * math.Sqrt(v/float64(len(xs)-1)/float64(len(xs)))
	}
	return stat{Mean: m, CI: ci, N: len(xs)}
}
