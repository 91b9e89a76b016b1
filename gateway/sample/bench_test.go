package sample

import (
	"math/rand/v2"
	"testing"
)

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
