package model_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/model/safetensors"
	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/kernels"
)

func editJSON(t *testing.T, path string, edit func(map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadErrors(t *testing.T) {
	cfg := func(edit func(map[string]any)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) { editJSON(t, filepath.Join(dir, "config.json"), edit) }
	}
	cases := []struct {
		name     string
		breakDir func(t *testing.T, dir string)
		sentinel error
		mention  []string // the message must name these
	}{
		{"unsupported architecture", cfg(func(m map[string]any) { m["architectures"] = []string{"GPT2LMHeadModel"} }),
			model.ErrUnsupported, []string{"config.json", "GPT2LMHeadModel"}},
		{"heads not a multiple of KV heads", cfg(func(m map[string]any) { m["num_key_value_heads"] = 3 }),
			model.ErrConfig, []string{"num_key_value_heads"}},
		{"unsupported rope", cfg(func(m map[string]any) { m["rope_scaling"] = map[string]any{"rope_type": "yarn", "factor": 4} }),
			model.ErrUnsupported, []string{"yarn"}},
		{"attention bias", cfg(func(m map[string]any) { m["attention_bias"] = true }), model.ErrUnsupported, []string{"attention_bias"}},
		{"bad json", func(t *testing.T, dir string) { os.WriteFile(filepath.Join(dir, "config.json"), []byte("{"), 0o644) },
			model.ErrConfig, []string{"config.json"}},
		{"no config", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "config.json")) },
			os.ErrNotExist, []string{"config.json"}},
		{"shape mismatch", cfg(func(m map[string]any) { m["intermediate_size"] = 100 }),
			model.ErrShape, []string{"mlp.gate_proj.weight", ".safetensors"}},
		{"missing tensor", func(t *testing.T, dir string) {
			editJSON(t, filepath.Join(dir, "model.safetensors.index.json"), func(m map[string]any) {
				delete(m["weight_map"].(map[string]any), "model.layers.1.self_attn.k_proj.weight")
			})
		}, safetensors.ErrMissingTensor, []string{"model.layers.1.self_attn.k_proj.weight"}},
		{"truncated shard", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "model-00002-of-00002.safetensors")
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			os.Truncate(p, st.Size()-100)
		}, safetensors.ErrTruncated, []string{"model-00002-of-00002.safetensors"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := tinymodel.Write(dir, tinymodel.Options{Seed: 1}); err != nil {
				t.Fatal(err)
			}
			tc.breakDir(t, dir)
			_, err := model.Load(context.Background(), dir, kernels.NewCPU(), model.LoadOptions{})
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("got %v, want %v", err, tc.sentinel)
			}
			for _, s := range tc.mention {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

// TestRopeParameters checks that transformers 5's rope_parameters spelling
// gives the same frequencies as rope_theta + rope_scaling, and that llama3
// scaling leaves high frequencies alone and divides low ones by the factor.
func TestRopeParameters(t *testing.T) {
	dir := t.TempDir()
	if err := tinymodel.Write(dir, tinymodel.Options{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	old, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	editJSON(t, filepath.Join(dir, "config.json"), func(m map[string]any) {
		rp := m["rope_scaling"].(map[string]any)
		rp["rope_theta"] = m["rope_theta"]
		m["rope_parameters"] = rp
		delete(m, "rope_scaling")
		delete(m, "rope_theta")
	})
	v5, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, b := old.InvFreq(), v5.InvFreq()
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("inv_freq[%d]: %g vs %g", i, a[i], b[i])
		}
	}
	r := old.RopeScaling
	for i, f := range a {
		base := 1 / math.Pow(old.RopeTheta, float64(2*i)/float64(old.HeadDim))
		wavelen := 2 * math.Pi / base
		switch {
		case wavelen < float64(r.OriginalMaxPositionEmbeddings)/r.HighFreqFactor:
			if math.Abs(float64(f)/base-1) > 1e-6 {
				t.Errorf("high frequency %d scaled: %g vs %g", i, f, base)
			}
		case wavelen > float64(r.OriginalMaxPositionEmbeddings)/r.LowFreqFactor:
			if math.Abs(float64(f)*r.Factor/base-1) > 1e-6 {
				t.Errorf("low frequency %d not divided by %g: %g vs %g", i, r.Factor, f, base)
			}
		}
	}
}

// TestLlama31Config reads the published Llama-3.1-8B shapes that the GPU
// benchmarks serve with --load-format dummy.
func TestLlama31Config(t *testing.T) {
	c, err := model.LoadConfig("../../bench/models/llama-3.1-8b")
	if err != nil {
		t.Fatal(err)
	}
	if c.NumLayers != 32 || c.NumHeads != 32 || c.NumKVHeads != 8 || c.HeadDim != 128 || c.VocabSize != 128256 ||
		c.IntermediateSize != 14336 || c.TieWordEmbeddings || len(c.EOSTokenID) != 3 {
		t.Errorf("config: %+v", c)
	}
	// llama3 scaling stretches the longest wavelengths by the factor and
	// leaves the shortest alone.
	f := c.InvFreq()
	if len(f) != 64 || math.Abs(float64(f[0])-1) > 1e-6 || math.Abs(float64(f[63])-math.Pow(500000, -126.0/128)/8) > 1e-12 {
		t.Errorf("inverse frequencies: first %v, last %v", f[0], f[63])
	}
}

// TestParamsCountsTheCheckpoint: Config.Params equals the weights a real
// checkpoint holds (the bundled model's safetensors, bf16).
func TestParamsCountsTheCheckpoint(t *testing.T) {
	dir := "../../models/kvd-go-16m"
	c, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := safetensors.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if got, want := 2*c.Params(), ck.TotalBytes(); got != want {
		t.Errorf("2 bytes × %d params = %d, the checkpoint holds %d bytes", c.Params(), got, want)
	}
}
