package model_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/gateway/runner"
)

// BenchmarkCPU reports prefill and decode tokens/s on the CPU backend for the
// tiny test model and for a wider one (run: make bench).
func BenchmarkCPU(b *testing.B) {
	sizes := []struct {
		name string
		opts tinymodel.Options
	}{
		{"tiny", tinymodel.Options{Seed: 1}},
		{"h512-l8", tinymodel.Options{Seed: 1, Hidden: 512, Layers: 8, Heads: 8, KVHeads: 2, HeadDim: 64, Intermediate: 1408, VocabSize: 512}},
	}
	const prompt, decode, batch = 256, 32, 4
	for _, s := range sizes {
		m := loadTiny(b, s.opts)
		rng := rand.New(rand.NewPCG(1, 2))
		ctx := context.Background()
		b.Run(fmt.Sprintf("%s/prefill-%d", s.name, prompt), func(b *testing.B) {
			r, err := runner.NewEmbedded(m, runner.BlocksFor(m.Config, prompt, 16), 16, nil)
			if err != nil {
				b.Fatal(err)
			}
			toks := randomTokens(rng, prompt, m.Config.VocabSize)
			b.ResetTimer()
			for range b.N {
				r.Open(ctx, 1)
				if _, err := r.Step(ctx, []runner.Work{{Seq: 1, Tokens: toks}}); err != nil {
					b.Fatal(err)
				}
				r.Close(ctx, 1)
			}
			b.ReportMetric(float64(prompt*b.N)/b.Elapsed().Seconds(), "tok/s")
		})
		b.Run(fmt.Sprintf("%s/decode-batch%d-ctx%d", s.name, batch, prompt), func(b *testing.B) {
			r, err := runner.NewEmbedded(m, batch*runner.BlocksFor(m.Config, prompt+decode*b.N, 16), 16, nil)
			if err != nil {
				b.Fatal(err)
			}
			work := make([]runner.Work, batch)
			for i := range work {
				r.Open(ctx, uint64(i))
				work[i] = runner.Work{Seq: uint64(i), Tokens: randomTokens(rng, prompt, m.Config.VocabSize)}
			}
			if _, err := r.Step(ctx, work); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				for range decode {
					for i := range work {
						work[i].Tokens = work[i].Tokens[:1]
					}
					if _, err := r.Step(ctx, work); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(batch*decode*b.N)/b.Elapsed().Seconds(), "tok/s")
		})
	}
}
