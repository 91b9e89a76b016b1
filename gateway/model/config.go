// Package model loads Llama-family models from Hugging Face directories and
// runs their forward pass on a kernels.Backend, reading and writing the KV
// cache through block tables that the caller (the runner, with kvd's
// allocator) supplies.
//
// model must not import the gateway's HTTP, scheduler or kvd's daemon code:
// it is the pure computation of logits from tokens and a cache.
package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
)

// Sentinel errors; each is wrapped with the file or tensor that failed.
var (
	ErrUnsupported = errors.New("unsupported model")
	ErrConfig      = errors.New("invalid config")
	ErrShape       = errors.New("tensor shape mismatch")
)

// Config holds the fields of a Llama-family config.json that the forward
// pass uses, with HF's defaults applied.
type Config struct {
	Architectures         []string `json:"architectures"`
	ModelType             string   `json:"model_type"`
	VocabSize             int      `json:"vocab_size"`
	HiddenSize            int      `json:"hidden_size"`
	IntermediateSize      int      `json:"intermediate_size"`
	NumLayers             int      `json:"num_hidden_layers"`
	NumHeads              int      `json:"num_attention_heads"`
	NumKVHeads            int      `json:"num_key_value_heads"`
	HeadDim               int      `json:"head_dim"`
	RMSNormEps            float64  `json:"rms_norm_eps"`
	RopeTheta             float64  `json:"rope_theta"`
	RopeScaling           *Rope    `json:"rope_scaling"`
	RopeParameters        *Rope    `json:"rope_parameters"` // transformers ≥ 5 writes this instead
	MaxPositionEmbeddings int      `json:"max_position_embeddings"`
	TieWordEmbeddings     bool     `json:"tie_word_embeddings"`
	AttentionBias         bool     `json:"attention_bias"`
	MLPBias               bool     `json:"mlp_bias"`
	HiddenAct             string   `json:"hidden_act"`
	TorchDType            string   `json:"torch_dtype"`
	DType                 string   `json:"dtype"`
	BOSTokenID            *int     `json:"bos_token_id"`
	EOSTokenID            IDs      `json:"eos_token_id"`
}

// Rope is rope_scaling (or transformers 5's rope_parameters).
type Rope struct {
	RopeType                      string  `json:"rope_type"`
	Type                          string  `json:"type"` // older spelling of rope_type
	RopeTheta                     float64 `json:"rope_theta"`
	Factor                        float64 `json:"factor"`
	LowFreqFactor                 float64 `json:"low_freq_factor"`
	HighFreqFactor                float64 `json:"high_freq_factor"`
	OriginalMaxPositionEmbeddings int     `json:"original_max_position_embeddings"`
}

// IDs accepts a token id or a list of them (eos_token_id is either).
type IDs []int

func (ids *IDs) UnmarshalJSON(b []byte) error {
	var one int
	if err := json.Unmarshal(b, &one); err == nil {
		*ids = IDs{one}
		return nil
	}
	var many []int
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("token ids: want an integer or a list of integers, got %s", b)
	}
	*ids = many
	return nil
}

var supportedArchitectures = []string{"LlamaForCausalLM"}

// LoadConfig reads and validates dir/config.json.
func LoadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model config: %w", err)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrConfig, err)
	}
	if err := c.normalize(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// normalize applies HF's defaults and rejects what the forward pass cannot run.
func (c *Config) normalize() error {
	if len(c.Architectures) == 0 && c.ModelType == "llama" {
		c.Architectures = []string{"LlamaForCausalLM"}
	}
	if len(c.Architectures) != 1 || !slices.Contains(supportedArchitectures, c.Architectures[0]) {
		return fmt.Errorf("%w: architectures %v (supported: %v)", ErrUnsupported, c.Architectures, supportedArchitectures)
	}
	if c.NumKVHeads == 0 {
		c.NumKVHeads = c.NumHeads
	}
	if c.HeadDim == 0 && c.NumHeads > 0 {
		c.HeadDim = c.HiddenSize / c.NumHeads
	}
	if c.RMSNormEps == 0 {
		c.RMSNormEps = 1e-6
	}
	if c.HiddenAct == "" {
		c.HiddenAct = "silu"
	}
	if c.RopeParameters != nil {
		if c.RopeParameters.RopeTheta != 0 {
			c.RopeTheta = c.RopeParameters.RopeTheta
		}
		if c.RopeScaling == nil {
			c.RopeScaling = c.RopeParameters
		}
	}
	if c.RopeTheta == 0 {
		c.RopeTheta = 10000
	}
	if c.MaxPositionEmbeddings == 0 {
		c.MaxPositionEmbeddings = 2048
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"vocab_size", c.VocabSize}, {"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumLayers}, {"num_attention_heads", c.NumHeads}, {"num_key_value_heads", c.NumKVHeads},
		{"head_dim", c.HeadDim},
	} {
		if f.v <= 0 {
			return fmt.Errorf("%w: %s must be positive, got %d", ErrConfig, f.name, f.v)
		}
	}
	switch {
	case c.NumHeads%c.NumKVHeads != 0:
		return fmt.Errorf("%w: num_attention_heads %d is not a multiple of num_key_value_heads %d", ErrConfig, c.NumHeads, c.NumKVHeads)
	case c.HeadDim%2 != 0:
		return fmt.Errorf("%w: head_dim %d is odd; RoPE needs pairs", ErrConfig, c.HeadDim)
	case c.AttentionBias || c.MLPBias:
		return fmt.Errorf("%w: attention_bias/mlp_bias are not supported", ErrUnsupported)
	case c.HiddenAct != "silu":
		return fmt.Errorf("%w: hidden_act %q (only silu)", ErrUnsupported, c.HiddenAct)
	}
	if r := c.RopeScaling; r != nil {
		if r.RopeType == "" {
			r.RopeType = r.Type
		}
		switch r.RopeType {
		case "", "default":
		case "linear":
			if r.Factor <= 0 {
				return fmt.Errorf("%w: linear rope_scaling needs a positive factor", ErrConfig)
			}
		case "llama3":
			if r.Factor <= 0 || r.LowFreqFactor <= 0 || r.HighFreqFactor <= r.LowFreqFactor || r.OriginalMaxPositionEmbeddings <= 0 {
				return fmt.Errorf("%w: llama3 rope_scaling needs factor, low_freq_factor < high_freq_factor and original_max_position_embeddings", ErrConfig)
			}
		default:
			return fmt.Errorf("%w: rope type %q (supported: default, linear, llama3)", ErrUnsupported, r.RopeType)
		}
	}
	return nil
}

// Params is the number of weights the model has.
func (c *Config) Params() int64 {
	d, f, v := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.VocabSize)
	qd, kvd := int64(c.NumHeads*c.HeadDim), int64(c.NumKVHeads*c.HeadDim)
	layer := 2*d + d*(qd+2*kvd) + qd*d + 3*d*f
	n := v*d + d + int64(c.NumLayers)*layer
	if !c.TieWordEmbeddings {
		n += v * d
	}
	return n
}

// InvFreq returns RoPE's inverse frequencies, [HeadDim/2], with the config's
// scaling applied (transformers' _compute_llama3_parameters for llama3).
func (c *Config) InvFreq() []float32 {
	half := c.HeadDim / 2
	inv := make([]float32, half)
	for i := range half {
		f := 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(c.HeadDim))
		if r := c.RopeScaling; r != nil {
			switch r.RopeType {
			case "linear":
				f /= r.Factor
			case "llama3":
				f = llama3Freq(f, r)
			}
		}
		inv[i] = float32(f)
	}
	return inv
}

func llama3Freq(f float64, r *Rope) float64 {
	old := float64(r.OriginalMaxPositionEmbeddings)
	lowWavelen := old / r.LowFreqFactor
	highWavelen := old / r.HighFreqFactor
	wavelen := 2 * math.Pi / f
	switch {
	case wavelen < highWavelen:
		return f
	case wavelen > lowWavelen:
		return f / r.Factor
	default:
		smooth := (old/wavelen - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor)
		return (1-smooth)*f/r.Factor + smooth*f
	}
}
