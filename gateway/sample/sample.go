// Package sample holds a request's sampling settings, computes the
// log-probabilities the OpenAI API returns, and filters streamed text for
// OpenAI stop strings. Tokens themselves are drawn by the compute backend,
// where the logits are (kernels.SampleParams, Backend.Sample).
//
// Everything here is plain Go over []float32 of one vocabulary row
// ([vocab]); nothing panics on bad numbers: NaN logits count as -Inf.
package sample

import "math"

// Params are one request's sampling settings. The API layer validates them;
// the backend's sampler treats whatever gets through out of range as off.
type Params struct {
	Temperature float32 // 0 (or anything below 1e-5, or NaN) = greedy
	TopP        float32 // (0,1]; 1 = off; 0, NaN and values outside are off
	TopK        int     // <= 0 = off (vLLM uses -1); >= vocab is off too
	Seed        *uint64 // nil = a random seed for the request (crypto/rand)
}

// maxLogit returns the largest logit, NaN as -Inf.
func maxLogit(logits []float32) float32 {
	m := float32(math.Inf(-1))
	for _, v := range logits {
		if v > m {
			m = v
		}
	}
	return m
}
