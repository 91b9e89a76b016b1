package sample

import (
	"math"
	"slices"
)

// LogSoftmax writes the log-probabilities of the raw logits [vocab] into dst
// [vocab]: no temperature, which is what vLLM returns as logprobs by
// default. It subtracts the maximum and accumulates in float64, so logits
// of ±1e4 are fine. NaN counts as -Inf; with +Inf logits they share all the
// mass; if all are -Inf the result is uniform. dst may be logits itself.
//
// Precondition: len(dst) == len(logits); a shorter dst gets only its first
// len(dst) entries, a longer one keeps the rest untouched.
func LogSoftmax(dst, logits []float32) {
	if len(logits) == 0 {
		return
	}
	m := maxLogit(logits)
	logSum := math.Log(expSum(logits, m))
	ninf := float32(math.Inf(-1))
	n := min(len(dst), len(logits))
	for i, v := range logits[:n] {
		if v != v {
			v = ninf
		}
		if v == m {
			dst[i] = float32(-logSum)
		} else {
			dst[i] = float32(float64(v) - float64(m) - logSum)
		}
	}
}

// TokenLogprob is one entry of a top-logprobs list.
type TokenLogprob struct {
	Token   int32
	Logprob float32
}

// TopN returns the n highest log-probabilities as (token, logprob) pairs,
// highest first, ties by lower token id. n <= 0 gives nil; n > len gives
// all. NaN is reported as -Inf.
func TopN(logprobs []float32, n int) []TokenLogprob {
	n = min(n, len(logprobs))
	if n <= 0 {
		return nil
	}
	h := selectTop(make([]cand, 0, n), logprobs, n)
	slices.SortFunc(h, compareCands)
	out := make([]TokenLogprob, n)
	for i, c := range h {
		out[i] = TokenLogprob{Token: c.id, Logprob: c.v}
	}
	return out
}

// Suppress sets logits[id] to -Inf for each id, so those tokens cannot be
// sampled (min_tokens keeps EOS out this way). Ids outside the vocabulary
// are ignored.
func Suppress(logits []float32, ids []int32) {
	for _, id := range ids {
		if id >= 0 && int(id) < len(logits) {
			logits[id] = float32(math.Inf(-1))
		}
	}
}
