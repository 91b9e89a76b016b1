// Package sample turns one sequence's next-token logits into a token and
// log-probabilities the way vLLM's sampler does (temperature, then top-k,
// then top-p over the renormalised top-k, then one draw), and filters
// streamed text for OpenAI stop strings.
//
// Everything here is plain Go over []float32 of one vocabulary row
// ([vocab]); nothing panics on bad numbers: NaN logits count as -Inf,
// out-of-range parameters are clamped, and a Sampler reuses its scratch
// buffers so that sampling a token allocates nothing.
package sample

import (
	crand "crypto/rand"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"slices"
)

// greedyEps is the temperature below which sampling is argmax; vLLM uses the
// same bound (_SAMPLING_EPS) because logits/T overflows for smaller T.
const greedyEps = 1e-5

// seedStream is PCG's second seed word. Fixed, so that a request's Seed alone
// decides its draws.
const seedStream = 0x9e3779b97f4a7c15

// Params are one request's sampling settings. The API layer validates them;
// New clamps whatever gets through instead of failing.
type Params struct {
	Temperature float32 // 0 (or anything below 1e-5, or NaN) = greedy
	TopP        float32 // (0,1]; 1 = off; 0, NaN and values outside are off
	TopK        int     // <= 0 = off (vLLM uses -1); >= vocab is off too
	Seed        *uint64 // nil = seeded from crypto/rand once per Sampler
}

// Sampler holds one request's random state and scratch buffers. A request
// with a Seed draws the same tokens every run given the same logits,
// whatever other requests do, because nothing is shared between Samplers.
//
// A Sampler belongs to one request and is not safe for concurrent use.
type Sampler struct {
	greedy bool
	invT   float64 // 1/temperature
	topP   float64 // 1 = off
	topK   int     // 0 = off
	rng    *rand.Rand

	w       []float32 // [vocab] unnormalised probabilities, full-vocabulary paths
	cand    []cand    // top-k heap, then kept candidates best first
	buckets [nBuckets]float64
}

// cand is a candidate token: v is its raw logit while top-k selects, its
// unnormalised probability afterwards.
type cand struct {
	v  float32
	id int32
}

// New returns a Sampler for one request.
func New(p Params) *Sampler {
	s := &Sampler{topP: 1}
	t := float64(p.Temperature)
	switch {
	case !(t >= greedyEps): // also NaN
		s.greedy = true
	case math.IsInf(t, 1):
		s.invT = 1 / math.MaxFloat32
	default:
		s.invT = 1 / t
	}
	if tp := float64(p.TopP); tp > 0 && tp < 1 {
		s.topP = tp
	}
	if p.TopK > 0 {
		s.topK = p.TopK
	}
	if s.topK == 1 {
		s.greedy = true // the one kept token is the argmax; no draw needed
	}
	var seed, stream uint64 = 0, seedStream
	if p.Seed != nil {
		seed = *p.Seed
	} else {
		var b [16]byte
		crand.Read(b[:]) // never fails since Go 1.24
		seed, stream = binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])
	}
	s.rng = rand.New(rand.NewPCG(seed, stream))
	return s
}

// Sample picks the next token from logits [vocab] without modifying them.
// Greedy is argmax with the lowest index on ties. Otherwise it scales by
// 1/temperature, keeps the top-k, keeps the smallest prefix whose
// probability reaches top_p (at least one token), renormalises and draws
// once from the Sampler's rng.
//
// NaN logits count as -Inf; if some logits are +Inf, the draw is uniform
// over them; if all are -Inf, uniform over all. An empty vocabulary gives -1.
func (s *Sampler) Sample(logits []float32) int32 {
	n := len(logits)
	switch {
	case n == 0:
		return -1
	case s.greedy:
		return argmax(logits)
	case s.topK > 0 && s.topK < n:
		c := s.topKCands(logits)
		total := toWeights(c, s.invT)
		if s.topP < 1 {
			c, total = cutTopP(c, total, s.topP)
		}
		return s.pick(c, total)
	case s.topP < 1:
		c, total := s.topPCands(logits)
		return s.pick(c, total)
	default:
		total := s.weights(logits)
		return s.pickFull(s.w, total)
	}
}

// argmax returns the index of the largest logit, lowest on ties, NaN as -Inf.
func argmax(logits []float32) int32 {
	best, at := float32(math.Inf(-1)), 0
	for i, v := range logits {
		if v > best { // false for NaN
			best, at = v, i
		}
	}
	return int32(at)
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

// weight is exp((v-m)/T) for a logit v under the maximum m, with v == m
// giving 1 so that the ±Inf cases come out as limits: +Inf logits share all
// the mass, and if every logit is -Inf they are all equal.
func weight(v, m float32, invT float64) float32 {
	if v != v {
		v = float32(math.Inf(-1))
	}
	if v == m {
		return 1
	}
	return float32(math.Exp((float64(v) - float64(m)) * invT))
}

// weights fills s.w [vocab] with the unnormalised probabilities of logits at
// the Sampler's temperature and returns their sum.
func (s *Sampler) weights(logits []float32) float64 {
	w := s.scratchW(len(logits))
	m := maxLogit(logits)
	var total float64
	for i, v := range logits {
		x := weight(v, m, s.invT)
		w[i] = x
		total += float64(x)
	}
	return total
}

func (s *Sampler) scratchW(n int) []float32 {
	if cap(s.w) < n {
		s.w = make([]float32, n)
	}
	s.w = s.w[:n]
	return s.w
}

// pickFull draws an index of w [vocab] with probability w[i]/total.
func (s *Sampler) pickFull(w []float32, total float64) int32 {
	u := s.rng.Float64() * total
	var cum float64
	last := -1
	for i, x := range w {
		if x > 0 {
			cum += float64(x)
			last = i
			if u < cum {
				return int32(i)
			}
		}
	}
	// Rounding left u past the sum: the last token that had any mass.
	return int32(max(last, 0))
}

// pick draws one of the kept candidates c (weights in v) with probability
// v/total.
func (s *Sampler) pick(c []cand, total float64) int32 {
	if len(c) == 0 {
		return 0 // not reached: the maximum always weighs 1
	}
	u := s.rng.Float64() * total
	var cum float64
	last := 0
	for i, x := range c {
		if x.v > 0 {
			cum += float64(x.v)
			last = i
			if u < cum {
				return x.id
			}
		}
	}
	return c[last].id
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

// topKCands returns the k highest logits as candidates, best first (raw
// logits in v). It keeps a min-heap of the best k seen, so a pass over the
// vocabulary is one compare per token once the heap is warm.
func (s *Sampler) topKCands(logits []float32) []cand {
	s.cand = selectTop(s.cand[:0], logits, s.topK)
	slices.SortFunc(s.cand, compareCands)
	return s.cand
}

// selectTop appends to h the k best (value, index) pairs of vals, in heap
// order, NaN as -Inf. Precondition: 0 < k <= len(vals).
func selectTop(h []cand, vals []float32, k int) []cand {
	for i, v := range vals {
		if v != v {
			v = float32(math.Inf(-1))
		}
		c := cand{v, int32(i)}
		if len(h) < k {
			h = append(h, c)
			siftUp(h, len(h)-1)
			continue
		}
		// Indices only grow, so an equal value never beats the root.
		if v > h[0].v {
			h[0] = c
			siftDown(h, 0)
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

// toWeights turns the raw logits of c (best first) into unnormalised
// probabilities at temperature 1/invT and returns their sum.
func toWeights(c []cand, invT float64) float64 {
	m := c[0].v
	var total float64
	for i := range c {
		c[i].v = weight(c[i].v, m, invT)
		total += float64(c[i].v)
	}
	return total
}

// cutTopP keeps the shortest prefix of c (weights, best first) whose weight
// reaches p*total, at least one candidate, and returns it with its weight.
func cutTopP(c []cand, total, p float64) ([]cand, float64) {
	want := p * total
	var cum float64
	for i, x := range c {
		cum += float64(x.v)
		if cum >= want {
			return c[:i+1], cum
		}
	}
	return c, cum // rounding: keep everything
}

// nBuckets covers the float32 bit patterns of weights in [0, 1] shifted
// right by bucketShift: the exponent and the top two mantissa bits, so a
// bucket spans a factor of at most 1.25 and the one sorted besides the
// needed tokens stays small.
const (
	bucketShift = 21
	nBuckets    = 0x3f800000>>bucketShift + 1 // bucket of 1.0, plus one
)

// topPCands returns the top-p set of the whole vocabulary, best first, with
// weights in v, and its weight. Rather than sort 128k tokens it histograms
// the weights by their float32 bits (monotone for non-negative floats),
// finds the bucket where the cumulative mass from the top reaches p, and
// sorts only the tokens at or above that bucket: every token below it
// weighs less than every token kept.
func (s *Sampler) topPCands(logits []float32) ([]cand, float64) {
	w := s.scratchW(len(logits))
	m := maxLogit(logits)
	clear(s.buckets[:])
	var total float64
	for i, v := range logits {
		x := weight(v, m, s.invT)
		w[i] = x
		total += float64(x)
		s.buckets[math.Float32bits(x)>>bucketShift] += float64(x)
	}
	want := s.topP * total
	b := nBuckets - 1
	for cum := 0.0; b > 0; b-- {
		cum += s.buckets[b]
		if cum >= want {
			break
		}
	}
	floor := math.Float32frombits(uint32(b) << bucketShift)
	c := s.cand[:0]
	for i, x := range w {
		if x >= floor {
			c = append(c, cand{logits[i], int32(i)})
		}
	}
	s.cand = c
	// Sort by logit, not weight: distinct logits can round to one weight,
	// and the order among those must not depend on that rounding.
	for i := range c {
		if c[i].v != c[i].v {
			c[i].v = float32(math.Inf(-1))
		}
	}
	slices.SortFunc(c, compareCands)
	for i := range c {
		c[i].v = w[c[i].id]
	}
	return cutTopP(c, total, s.topP)
}
