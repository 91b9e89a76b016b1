package sample

import (
	"math"
	"math/rand/v2"
	"testing"
)

// benchParams are the settings BenchmarkSample times; tests reuse them.
var benchParams = []struct {
	name string
	Params
}{
	{"greedy", Params{}},
	{"temperature_0.8", Params{Temperature: 0.8}},
	{"top_p_0.9", Params{Temperature: 0.8, TopP: 0.9}},
	{"top_k_50", Params{Temperature: 0.8, TopK: 50}},
	{"top_k_50_top_p_0.9", Params{Temperature: 0.8, TopK: 50, TopP: 0.9}},
}

// randomLogits gives a row shaped like a language model's: a normal body
// and a handful of much likelier tokens.
func randomLogits(rng *rand.Rand, n int) []float32 {
	l := make([]float32, n)
	for i := range l {
		l[i] = float32(rng.NormFloat64() * 2)
	}
	for range min(n, 10) {
		l[rng.IntN(n)] += float32(8 + 6*rng.Float64())
	}
	return l
}

const llama3Vocab = 128256

// BenchmarkSample reports ns per sampled token over a Llama 3 vocabulary.
// "peaked" logits look like a confident model; "flat" ones (a normal body
// only) make the top-p set thousands of tokens wide, its worst case.
func BenchmarkSample(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	peaked := randomLogits(rng, llama3Vocab)
	flat := make([]float32, llama3Vocab)
	for i := range flat {
		flat[i] = float32(rng.NormFloat64())
	}
	for _, shape := range []struct {
		name   string
		logits []float32
	}{{"peaked", peaked}, {"flat", flat}} {
		for _, p := range benchParams {
			b.Run(shape.name+"/"+p.name, func(b *testing.B) {
				p.Params.Seed = seed(1)
				s := New(p.Params)
				for b.Loop() {
					s.Sample(shape.logits)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/token")
			})
		}
	}
}

func BenchmarkLogSoftmax(b *testing.B) {
	logits := randomLogits(rand.New(rand.NewPCG(1, 2)), llama3Vocab)
	dst := make([]float32, len(logits))
	for b.Loop() {
		LogSoftmax(dst, logits)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/token")
}

func BenchmarkTopN(b *testing.B) {
	logits := randomLogits(rand.New(rand.NewPCG(1, 2)), llama3Vocab)
	for b.Loop() {
		TopN(logits, 20)
	}
}

var sinkSum float64

// BenchmarkExpRow compares the row of weights with the same loop over
// math.Exp, the reason expReduced exists.
func BenchmarkExpRow(b *testing.B) {
	logits := randomLogits(rand.New(rand.NewPCG(1, 2)), llama3Vocab)
	w := make([]float32, len(logits))
	m := maxLogit(logits)
	b.Run("expRow", func(b *testing.B) {
		for b.Loop() {
			sinkSum = expRow(w, logits, m, 1.25)
		}
	})
	b.Run("math.Exp", func(b *testing.B) {
		for b.Loop() {
			var sum float64
			for i, v := range logits {
				w[i] = float32(math.Exp((float64(v) - float64(m)) * 1.25))
				sum += float64(w[i])
			}
			sinkSum = sum
		}
	})
}
