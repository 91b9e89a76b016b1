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

// cand is a candidate token: v is its raw logit while top-k selects, its
// unnormalised probability afterwards.
type cand struct {
	v  float32
	id int32
}

// better orders candidates best first: higher value, then lower token id.
func better(a, b cand) bool {
	return a.v > b.v || (a.v == b.v && a.id < b.id)
}

func compareCands(a, b cand) int {
	switch {
	case better(a, b):
		return -1
	case better(b, a):
		return 1
	}
	return 0
}

// selectTop appends to h the k best (value, index) pairs of vals, in heap
// order, NaN as -Inf. Precondition: 0 < k <= len(vals).
func selectTop(h []cand, vals []float32, k int) []cand {
	for i, v := range vals[:k] {
		if v != v {
			v = float32(math.Inf(-1))
		}
		h = append(h, cand{v, int32(i)})
		siftUp(h, len(h)-1)
	}
	// Indices only grow, so an equal value never beats the root; NaN fails
	// the compare too. Keeping the root's value in a register makes this
	// one compare per token.
	floor := h[0].v
	for i, v := range vals[k:] {
		if v > floor {
			h[0] = cand{v, int32(k + i)}
			siftDown(h, 0)
			floor = h[0].v
		}
	}
	return h
}

// The heap keeps the worst candidate at the root.
func siftUp(h []cand, i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !better(h[p], h[i]) {
			return
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
}

func siftDown(h []cand, i int) {
	n := len(h)
	for {
		worst, l, r := i, 2*i+1, 2*i+2
		if l < n && better(h[worst], h[l]) {
			worst = l
		}
		if r < n && better(h[worst], h[r]) {
			worst = r
		}
		if worst == i {
			return
		}
		h[i], h[worst] = h[worst], h[i]
		i = worst
	}
}
