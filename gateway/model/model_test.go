package model_test

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kvd/blocks"
	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/shm"
)

func loadTiny(t testing.TB, o tinymodel.Options) *model.Model {
	t.Helper()
	dir := t.TempDir()
	if err := tinymodel.Write(dir, o); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(context.Background(), dir, kernels.NewCPU(), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// pagedSeqs runs sequences through the cached, paged path in the given chunk
// sizes (all sequences advance together, one step per chunk round) and
// returns every token's logits per sequence.
func pagedSeqs(t *testing.T, m *model.Model, blockSize int, seqs [][]int32, chunk func(seq, done int) int) [][]float32 {
	t.Helper()
	c := m.Config
	l := shm.Layout{NumBlocks: 4096, BlockSize: blockSize, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim}
	a, err := blocks.New(l, policy.AllFull(c.NumLayers))
	if err != nil {
		t.Fatal(err)
	}
	cache := &model.Cache{Pool: m.Backend().Alloc(l.PoolElems()), Layout: l}
	done := make([]int, len(seqs))
	out := make([][]float32, len(seqs))
	for i := range seqs {
		if err := a.Open(blocks.SeqID(i)); err != nil {
			t.Fatal(err)
		}
	}
	for {
		bt := &model.Batch{}
		var apps []blocks.Append
		var owners []int
		row := int32(0)
		for i, s := range seqs {
			if done[i] == len(s) {
				continue
			}
			n := min(chunk(i, done[i]), len(s)-done[i])
			bt.Seqs = append(bt.Seqs, model.Seq{Tokens: s[done[i] : done[i]+n], Pos: done[i]})
			apps = append(apps, blocks.Append{Seq: blocks.SeqID(i), N: n})
			for j := range n {
				bt.LogitRows = append(bt.LogitRows, row+int32(j))
				owners = append(owners, i)
			}
			row += int32(n)
			done[i] += n
		}
		if len(apps) == 0 {
			return out
		}
		if _, err := a.Reserve(apps); err != nil {
			t.Fatal(err)
		}
		plans, err := a.Plan(apps)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range plans {
			bt.Layers = append(bt.Layers, model.LayerKV{Slots: p.Slots, Attn: kernels.AttnBatch{KVLen: p.KVLen, BlockIndptr: p.BlockIndptr, Blocks: p.Blocks}})
		}
		lg, err := m.Forward(context.Background(), bt, cache)
		if err != nil {
			t.Fatal(err)
		}
		v := c.VocabSize
		for r, i := range owners {
			out[i] = append(out[i], lg[r*v:(r+1)*v]...)
		}
	}
}

// relErr is max|a-b| / max|b|.
func relErr(a, b []float32) float64 {
	var d, m float64
	for i := range b {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
		m = math.Max(m, math.Abs(float64(b[i])))
	}
	return d / m
}

func randomTokens(rng *rand.Rand, n, vocab int) []int32 {
	t := make([]int32, n)
	for i := range t {
		t[i] = int32(rng.IntN(vocab))
	}
	return t
}

func TestCachedMatchesReference(t *testing.T) {
	cases := []struct {
		name      string
		opts      tinymodel.Options
		blockSize int
		lens      []int
		chunk     func(seq, done int) int
	}{
		{"prefill then decode, GQA 2", tinymodel.Options{Seed: 1}, 16, []int{37}, func(_, done int) int {
			if done == 0 {
				return 20
			}
			return 1
		}},
		{"token by token, block 1", tinymodel.Options{Seed: 2}, 1, []int{19}, func(int, int) int { return 1 }},
		{"odd chunks, MQA, block 3", tinymodel.Options{Seed: 3, KVHeads: 1, Heads: 3, HeadDim: 8, Hidden: 24}, 3, []int{41}, func(_, done int) int { return 1 + done%5 }},
		{"batch of 3 at different positions, MHA untied f32", tinymodel.Options{Seed: 4, KVHeads: 4, TiedEmbed: new(bool), DType: "F32"}, 16, []int{5, 33, 17},
			func(seq, done int) int { return []int{2, 7, 1}[seq] + done%3 }},
		{"batch of 17, block 32", tinymodel.Options{Seed: 5, Layers: 2}, 32, []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 97},
			func(seq, done int) int { return 1 + (seq+done)%4 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := loadTiny(t, tc.opts)
			seed := uint64(len(tc.name))
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 7))
			seqs := make([][]int32, len(tc.lens))
			for i, n := range tc.lens {
				seqs[i] = randomTokens(rng, n, m.Config.VocabSize)
			}
			got := pagedSeqs(t, m, tc.blockSize, seqs, tc.chunk)
			for i, s := range seqs {
				want, err := m.Reference(context.Background(), s)
				if err != nil {
					t.Fatal(err)
				}
				v := m.Config.VocabSize
				for j := range s {
					if e := relErr(got[i][j*v:(j+1)*v], want[j*v:(j+1)*v]); e > 1e-5 {
						t.Fatalf("sequence %d token %d: relative error %.2e against the no-cache reference", i, j, e)
					}
				}
			}
		})
	}
}

func TestForwardRejectsBadBatches(t *testing.T) {
	m := loadTiny(t, tinymodel.Options{Seed: 9, Layers: 1})
	c := m.Config
	l := shm.Layout{NumBlocks: 8, BlockSize: 4, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim}
	cache := &model.Cache{Pool: m.Backend().Alloc(l.PoolElems()), Layout: l}
	good := func() *model.Batch {
		return &model.Batch{
			Seqs:      []model.Seq{{Tokens: []int32{1, 2}}},
			Layers:    []model.LayerKV{{Slots: []int32{4, 5}, Attn: kernels.AttnBatch{KVLen: []int32{2}, BlockIndptr: []int32{0, 1}, Blocks: []int32{1}}}},
			LogitRows: []int32{1},
		}
	}
	if _, err := m.Forward(context.Background(), good(), cache); err != nil {
		t.Fatalf("good batch: %v", err)
	}
	cases := []struct {
		name   string
		break_ func(b *model.Batch)
	}{
		{"token outside vocabulary", func(b *model.Batch) { b.Seqs[0].Tokens[0] = int32(c.VocabSize) }},
		{"negative token", func(b *model.Batch) { b.Seqs[0].Tokens[0] = -1 }},
		{"empty", func(b *model.Batch) { b.Seqs = nil }},
		{"too few slots", func(b *model.Batch) { b.Layers[0].Slots = b.Layers[0].Slots[:1] }},
		{"null block", func(b *model.Batch) { b.Layers[0].Attn.Blocks[0] = 0 }},
		{"block outside pool", func(b *model.Batch) { b.Layers[0].Attn.Blocks[0] = 8 }},
		{"more cached than blocks hold", func(b *model.Batch) { b.Layers[0].Attn.KVLen[0] = 5 }},
		{"logit row outside step", func(b *model.Batch) { b.LogitRows[0] = 2 }},
		{"missing layer plan", func(b *model.Batch) { b.Layers = nil }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := good()
			tc.break_(b)
			if _, err := m.Forward(context.Background(), b, cache); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

func TestDummyLoad(t *testing.T) {
	dir := t.TempDir()
	if err := tinymodel.Write(dir, tinymodel.Options{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	load := func(seed uint64) []float32 {
		m, err := model.Load(context.Background(), dir, kernels.NewCPU(), model.LoadOptions{Format: model.LoadDummy, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		lg, err := m.Reference(context.Background(), []int32{1, 2, 3})
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range lg {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatal("dummy weights give non-finite logits")
			}
		}
		return lg
	}
	a, b, c := load(1), load(1), load(2)
	if relErr(a, b) != 0 {
		t.Error("same seed gave different dummy weights")
	}
	if relErr(a, c) == 0 {
		t.Error("different seeds gave the same dummy weights")
	}
	if _, err := model.Load(context.Background(), dir, kernels.NewCPU(), model.LoadOptions{Format: "pt"}); err == nil {
		t.Error("unknown load format accepted")
	}
}

// fusedCPU is the CPU backend saying FusedResidual, as CUDA does by
// default: the forward pass then adds the o and down projections
// with LinearAdd and normalizes with RMSNorm, which on the CPU are Linear,
// Add and RMSNorm, as AddRMSNorm is.
type fusedCPU struct{ *kernels.CPU }

func (fusedCPU) FusedResidual() bool { return true }

// TestFusedResidualPath runs the forward pass's fused residual path (the
// one CUDA takes by default) on the CPU, where it must give the
// unfused path's logits bit for bit, in prefill and decode steps.
func TestFusedResidualPath(t *testing.T) {
	dir := t.TempDir()
	if err := tinymodel.Write(dir, tinymodel.Options{Seed: 11}); err != nil {
		t.Fatal(err)
	}
	var got [2][][]float32
	rng := rand.New(rand.NewPCG(11, 12))
	seqs := [][]int32{randomTokens(rng, 23, 256), randomTokens(rng, 9, 256)}
	for i, b := range []kernels.Backend{kernels.NewCPU(), fusedCPU{kernels.NewCPU()}} {
		m, err := model.Load(context.Background(), dir, b, model.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got[i] = pagedSeqs(t, m, 16, seqs, func(_, done int) int {
			if done == 0 {
				return 7
			}
			return 1
		})
	}
	for s := range seqs {
		if len(got[0][s]) == 0 || len(got[0][s]) != len(got[1][s]) {
			t.Fatalf("sequence %d: %d and %d logits", s, len(got[0][s]), len(got[1][s]))
		}
		for i, v := range got[0][s] {
			if math.Float32bits(v) != math.Float32bits(got[1][s][i]) {
				t.Fatalf("sequence %d, logit %d: %v unfused, %v fused", s, i, v, got[1][s][i])
			}
		}
	}
}
