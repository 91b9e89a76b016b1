package model_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/gateway/runner"
	"github.com/kvd-project/kvd/gateway/tokenizer"
	"github.com/kvd-project/kvd/kernels"
)

var update = flag.Bool("update", false, "rewrite testdata/tiny-llama3 (then remake the HF goldens on the GPU machine)")

const (
	tinyDir   = "testdata/tiny-llama3"
	goldenDir = "testdata/golden"
)

// TestWriteTinyModel keeps the committed test model equal to what tinymodel
// writes, so the goldens made from it stay reproducible.
func TestWriteTinyModel(t *testing.T) {
	if *update {
		if err := os.RemoveAll(tinyDir); err != nil {
			t.Fatal(err)
		}
		if err := tinymodel.Write(tinyDir, tinymodel.Options{Seed: 1}); err != nil {
			t.Fatal(err)
		}
	}
	fresh := t.TempDir()
	if err := tinymodel.Write(fresh, tinymodel.Options{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	names, err := filepath.Glob(filepath.Join(fresh, "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range names {
		want, _ := os.ReadFile(p)
		got, err := os.ReadFile(filepath.Join(tinyDir, filepath.Base(p)))
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s differs from what tinymodel writes now (err %v); rerun with -update and remake the goldens", filepath.Base(p), err)
		}
	}
}

type goldenCase struct {
	IDs        []int32 `json:"ids"`
	LogitsFrom int     `json:"logits_from"` // the first position whose logits are stored
	Text       *string `json:"text"`
	Logits     string  `json:"logits"`
	Greedy     []int32 `json:"greedy"`
}

type golden struct {
	Transformers string       `json:"transformers"`
	VocabSize    int          `json:"vocab_size"`
	Cases        []goldenCase `json:"cases"`
}

func readF32(t *testing.T, path string) []float32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// TestHFGoldens compares our logits, cached and not, and greedy tokens with
// HF transformers' float32 runs of the same checkpoints, made by
// tools/goldens/model_goldens.py: the tiny test model (bf16 weights in two
// shards, GQA, llama3 RoPE scaling, tied embeddings) and the bundled trained
// model (four shards, transformers 5's rope_parameters, its own tokenizer).
func TestHFGoldens(t *testing.T) {
	for _, c := range []struct{ model, golden string }{
		{tinyDir, goldenDir},
		{"../../models/kvd-go-16m", "testdata/golden-kvd-go-16m"},
	} {
		t.Run(filepath.Base(c.model), func(t *testing.T) { checkGoldens(t, c.model, c.golden) })
	}
}

func checkGoldens(t *testing.T, modelDir, goldenDir string) {
	b, err := os.ReadFile(filepath.Join(goldenDir, "golden.json"))
	if err != nil {
		t.Fatalf("%v: make the goldens with tools/goldens/model_goldens.py on the GPU machine", err)
	}
	var g golden
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m, err := model.Load(ctx, modelDir, kernels.NewCPU(), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	v := m.Config.VocabSize
	if g.VocabSize != v {
		t.Fatalf("golden vocab %d, model %d", g.VocabSize, v)
	}
	t.Logf("goldens from transformers %s", g.Transformers)
	for i, c := range g.Cases {
		want := readF32(t, filepath.Join(goldenDir, c.Logits))
		if c.Text != nil {
			ids, err := tok.Encode(*c.Text, true)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(toInt32(ids), c.IDs) {
				t.Errorf("case %d: tokenizer gives %v, HF %v", i, ids, c.IDs)
			}
		}
		ref, err := m.Reference(ctx, c.IDs)
		if err != nil {
			t.Fatal(err)
		}
		r, err := runner.NewEmbedded(m, runner.BlocksFor(m.Config, len(c.IDs)+len(c.Greedy), 16), 16, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Open(ctx, 1); err != nil {
			t.Fatal(err)
		}
		cached, err := r.Step(ctx, []runner.Work{{Seq: 1, Tokens: c.IDs, AllLogits: true}})
		if err != nil {
			t.Fatal(err)
		}
		worst, worstCached := 0.0, 0.0
		if len(want) != (len(c.IDs)-c.LogitsFrom)*v {
			t.Fatalf("case %d: %d golden logits for positions %d.. of %d", i, len(want), c.LogitsFrom, len(c.IDs))
		}
		for j := c.LogitsFrom; j < len(c.IDs); j++ {
			row := want[(j-c.LogitsFrom)*v : (j-c.LogitsFrom+1)*v]
			worst = math.Max(worst, relErr(ref[j*v:(j+1)*v], row))
			worstCached = math.Max(worstCached, relErr(cached[0][j*v:(j+1)*v], row))
		}
		t.Logf("case %d (%d tokens): max relative error %.2e reference, %.2e cached", i, len(c.IDs), worst, worstCached)
		if worst > 1e-3 || worstCached > 1e-3 {
			t.Errorf("case %d: relative error %.2e / %.2e against HF, want < 1e-3", i, worst, worstCached)
		}
		r.Close(ctx, 1)
		got, err := r.Greedy(ctx, 2, c.IDs, len(c.Greedy), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, c.Greedy) {
			t.Errorf("case %d: greedy %v, HF %v", i, got, c.Greedy)
		}
	}
}

func toInt32(ids []int) []int32 {
	out := make([]int32, len(ids))
	for i, id := range ids {
		out[i] = int32(id)
	}
	return out
}
