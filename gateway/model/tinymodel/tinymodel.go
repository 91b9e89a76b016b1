// Package tinymodel writes a small, deterministic Llama-3-style model as a
// Hugging Face directory: config.json, bf16 weights in two safetensors
// shards with an index, and a byte-level BPE tokenizer trained on an
// embedded corpus. Tests use it as a real model directory, and `make run`
// serves it until a trained model is bundled.
package tinymodel

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/kvd-project/kvd/gateway/model/safetensors"
	"github.com/kvd-project/kvd/gateway/tokenizer"
)

//go:embed corpus.txt
var corpus string

// Specials are the tokenizer's special tokens, Llama 3's names.
var Specials = []string{
	"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
	"<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
}

// Options sets the model's shape. The zero value of a field takes the
// default below; the defaults exercise GQA, llama3 RoPE scaling and tied
// embeddings.
type Options struct {
	Seed         uint64
	VocabSize    int // tokenizer vocabulary, specials included (default 512)
	Hidden       int // default 64
	Layers       int // default 4
	Heads        int // default 4
	KVHeads      int // default 2
	HeadDim      int // default 16
	Intermediate int // default 176
	DType        safetensors.DType
	Shards       int // default 2
	TiedEmbed    *bool
}

func (o *Options) defaults() {
	set := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	set(&o.VocabSize, 512)
	set(&o.Hidden, 64)
	set(&o.Layers, 4)
	set(&o.Heads, 4)
	set(&o.KVHeads, 2)
	set(&o.HeadDim, 16)
	set(&o.Intermediate, 176)
	set(&o.Shards, 2)
	if o.DType == "" {
		o.DType = safetensors.BF16
	}
	if o.TiedEmbed == nil {
		t := true
		o.TiedEmbed = &t
	}
}

// Write creates the model directory dir (it may exist) and fills it.
func Write(dir string, o Options) error {
	o.defaults()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tok, err := tokenizer.TrainByteLevel(corpus, o.VocabSize, Specials)
	if err != nil {
		return fmt.Errorf("tinymodel: training tokenizer: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), tok, 0o644); err != nil {
		return err
	}
	tcfg, err := tokenizer.TokenizerConfig("llama3", Specials)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), tcfg, 0o644); err != nil {
		return err
	}
	vocab := o.VocabSize
	eos := []int{vocab - len(Specials) + 1, vocab - len(Specials) + 4} // <|end_of_text|>, <|eot_id|>
	cfg := map[string]any{
		"architectures":           []string{"LlamaForCausalLM"},
		"model_type":              "llama",
		"vocab_size":              vocab,
		"hidden_size":             o.Hidden,
		"intermediate_size":       o.Intermediate,
		"num_hidden_layers":       o.Layers,
		"num_attention_heads":     o.Heads,
		"num_key_value_heads":     o.KVHeads,
		"head_dim":                o.HeadDim,
		"hidden_act":              "silu",
		"max_position_embeddings": 4096,
		"rms_norm_eps":            1e-5,
		"rope_theta":              500000.0,
		"rope_scaling": map[string]any{
			"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
			"original_max_position_embeddings": 1024,
		},
		"tie_word_embeddings": *o.TiedEmbed,
		"attention_bias":      false,
		"mlp_bias":            false,
		"bos_token_id":        vocab - len(Specials),
		"eos_token_id":        eos,
		"torch_dtype":         dtypeName(o.DType),
	}
	if err := writeJSON(filepath.Join(dir, "config.json"), cfg); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(dir, "generation_config.json"), map[string]any{
		"bos_token_id": vocab - len(Specials), "eos_token_id": eos, "do_sample": false,
	}); err != nil {
		return err
	}
	ts := tensors(o)
	return safetensors.Write(dir, ts, o.DType, shardLimit(ts, o.DType, o.Shards), nil)
}

// shardLimit is the smallest shard size for which the writer's in-order
// packing makes at most n shards (0, one file, for n <= 1).
func shardLimit(ts []safetensors.WriteTensor, d safetensors.DType, n int) int64 {
	if n <= 1 {
		return 0
	}
	sizes := make([]int64, len(ts))
	var lo, hi int64
	for i, t := range ts {
		sizes[i] = int64(len(t.Data)) * int64(d.Bits()/8)
		lo, hi = max(lo, sizes[i]), hi+sizes[i]
	}
	shards := func(limit int64) int {
		count, cur := 1, int64(0)
		for _, s := range sizes {
			if cur+s > limit {
				count, cur = count+1, 0
			}
			cur += s
		}
		return count
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if shards(mid) <= n {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

func dtypeName(d safetensors.DType) string {
	switch d {
	case safetensors.BF16:
		return "bfloat16"
	case safetensors.F16:
		return "float16"
	}
	return "float32"
}

// tensors draws every weight. Linear weights are uniform with the variance
// of a standard initialisation; norm weights scatter around one so that a
// wrong norm shows in the logits.
func tensors(o Options) []safetensors.WriteTensor {
	rng := rand.New(rand.NewPCG(o.Seed, 0x74696e79))
	mat := func(name string, rows, cols int) safetensors.WriteTensor {
		d := make([]float32, rows*cols)
		s := float32(math.Sqrt(3 / float64(cols)))
		for i := range d {
			d[i] = (2*rng.Float32() - 1) * s
		}
		return safetensors.WriteTensor{Name: name, Shape: []int{rows, cols}, Data: d}
	}
	vec := func(name string, n int) safetensors.WriteTensor {
		d := make([]float32, n)
		for i := range d {
			d[i] = 0.75 + 0.5*rng.Float32()
		}
		return safetensors.WriteTensor{Name: name, Shape: []int{n}, Data: d}
	}
	qd, kvd := o.Heads*o.HeadDim, o.KVHeads*o.HeadDim
	ts := []safetensors.WriteTensor{mat("model.embed_tokens.weight", o.VocabSize, o.Hidden)}
	for i := range o.Layers {
		p := fmt.Sprintf("model.layers.%d.", i)
		ts = append(ts,
			vec(p+"input_layernorm.weight", o.Hidden),
			mat(p+"self_attn.q_proj.weight", qd, o.Hidden),
			mat(p+"self_attn.k_proj.weight", kvd, o.Hidden),
			mat(p+"self_attn.v_proj.weight", kvd, o.Hidden),
			mat(p+"self_attn.o_proj.weight", o.Hidden, qd),
			vec(p+"post_attention_layernorm.weight", o.Hidden),
			mat(p+"mlp.gate_proj.weight", o.Intermediate, o.Hidden),
			mat(p+"mlp.up_proj.weight", o.Intermediate, o.Hidden),
			mat(p+"mlp.down_proj.weight", o.Hidden, o.Intermediate),
		)
	}
	ts = append(ts, vec("model.norm.weight", o.Hidden))
	if !*o.TiedEmbed {
		ts = append(ts, mat("lm_head.weight", o.VocabSize, o.Hidden))
	}
	return ts
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
