package model

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync"

	"github.com/kvd-project/kvd/gateway/model/safetensors"
	"github.com/kvd-project/kvd/kernels"
)

// Load formats, as vLLM names them.
const (
	LoadAuto  = "auto"  // safetensors from the model directory
	LoadDummy = "dummy" // random weights of the config's shapes, for benchmarks
)

// LoadOptions control Load.
type LoadOptions struct {
	Format string // LoadAuto (default) or LoadDummy
	Seed   uint64 // for LoadDummy
	// Progress receives a bar (when it is a terminal) or log lines while
	// weights are read; nil means os.Stderr. Small checkpoints show none.
	Progress io.Writer
	Logger   *slog.Logger
}

// layer holds one decoder layer's weights. Q, K and V are fused into one
// matrix and gate and up into another, so each is one GEMM.
type layer struct {
	attnNorm, qkv, o *kernels.Tensor
	mlpNorm, gateUp  *kernels.Tensor
	down             *kernels.Tensor
}

type weights struct {
	embed, norm, lmHead *kernels.Tensor
	layers              []layer
}

// source yields a named tensor's values as float32 after checking its shape.
type source interface {
	// read returns the number of checkpoint bytes it consumed.
	read(name string, shape []int, dst []float32) (int64, error)
}

// Load reads config.json and the weights of the model in dir onto b.
func Load(ctx context.Context, dir string, b kernels.Backend, opts LoadOptions) (*Model, error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	var src source
	var total int64
	switch opts.Format {
	case "", LoadAuto:
		ck, err := safetensors.Open(dir)
		if err != nil {
			return nil, err
		}
		defer ck.Close()
		src = checkpointSource{ck}
		total = ck.TotalBytes()
	case LoadDummy:
		src = &dummySource{seed: opts.Seed}
		total = 2 * cfg.Params() // as bf16, for the progress shown
	default:
		return nil, fmt.Errorf("%w: load format %q (want %s or %s)", ErrConfig, opts.Format, LoadAuto, LoadDummy)
	}
	out := opts.Progress
	if out == nil {
		out = os.Stderr
	}
	what := "loading weights"
	if opts.Format == LoadDummy {
		what = "making dummy weights"
	}
	p := newProgress(out, log, what, total)
	w, err := loadWeights(ctx, cfg, b, src, p)
	p.done()
	if err != nil {
		return nil, err
	}
	return newModel(cfg, b, w), nil
}

func loadWeights(ctx context.Context, c *Config, b kernels.Backend, src source, p *progress) (*weights, error) {
	d, f := c.HiddenSize, c.IntermediateSize
	qd, kvd := c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim
	// get reads tensors into consecutive row bands of one host buffer, so
	// fused matrices need no extra copy.
	get := func(shape []int, parts ...string) (*kernels.Tensor, error) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := 1
		for _, s := range shape[1:] {
			n *= s
		}
		buf := make([]float32, shape[0]*n)
		off := 0
		for _, name := range parts {
			ps := partShape(c, name, shape)
			m := ps[0] * n
			nb, err := src.read(name, ps, buf[off:off+m])
			if err != nil {
				return nil, err
			}
			off += m
			p.add(nb)
		}
		return b.Weight(buf, shape...), nil
	}
	var w weights
	var err error
	if w.embed, err = get([]int{c.VocabSize, d}, "model.embed_tokens.weight"); err != nil {
		return nil, err
	}
	if w.norm, err = get([]int{d}, "model.norm.weight"); err != nil {
		return nil, err
	}
	if c.TieWordEmbeddings {
		w.lmHead = w.embed
	} else if w.lmHead, err = get([]int{c.VocabSize, d}, "lm_head.weight"); err != nil {
		return nil, err
	}
	w.layers = make([]layer, c.NumLayers)
	for i := range w.layers {
		pre := fmt.Sprintf("model.layers.%d.", i)
		l := &w.layers[i]
		for _, t := range []struct {
			dst   **kernels.Tensor
			shape []int
			names []string
		}{
			{&l.attnNorm, []int{d}, []string{"input_layernorm.weight"}},
			{&l.qkv, []int{qd + 2*kvd, d}, []string{"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"}},
			{&l.o, []int{d, qd}, []string{"self_attn.o_proj.weight"}},
			{&l.mlpNorm, []int{d}, []string{"post_attention_layernorm.weight"}},
			{&l.gateUp, []int{2 * f, d}, []string{"mlp.gate_proj.weight", "mlp.up_proj.weight"}},
			{&l.down, []int{d, f}, []string{"mlp.down_proj.weight"}},
		} {
			names := make([]string, len(t.names))
			for j, n := range t.names {
				names[j] = pre + n
			}
			if *t.dst, err = get(t.shape, names...); err != nil {
				return nil, err
			}
		}
	}
	return &w, nil
}

// partShape is the HF shape of one tensor that may be a band of a fused one.
func partShape(c *Config, name string, fused []int) []int {
	kvd := c.NumKVHeads * c.HeadDim
	switch {
	case hasSuffix(name, "q_proj.weight"):
		return []int{c.NumHeads * c.HeadDim, c.HiddenSize}
	case hasSuffix(name, "k_proj.weight"), hasSuffix(name, "v_proj.weight"):
		return []int{kvd, c.HiddenSize}
	case hasSuffix(name, "gate_proj.weight"), hasSuffix(name, "up_proj.weight"):
		return []int{c.IntermediateSize, c.HiddenSize}
	}
	return fused
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }

type checkpointSource struct{ ck *safetensors.Checkpoint }

func (s checkpointSource) read(name string, shape []int, dst []float32) (int64, error) {
	t, err := s.ck.Get(name)
	if err != nil {
		return 0, err
	}
	if !slices.Equal(t.Shape, shape) {
		return 0, fmt.Errorf("%s: tensor %q has shape %v, config.json implies %v: %w", t.File, name, t.Shape, shape, ErrShape)
	}
	return int64(len(t.Data)), t.Float32(dst)
}

// dummySource makes weights like vLLM's dummy loader: small uniform values,
// with norm weights of one so activations keep a sane scale. Values are
// drawn in parallel chunks, each from its own seeded stream, so an 8B
// model's worth takes seconds and the same seed gives the same weights.
type dummySource struct {
	seed    uint64
	tensors uint64 // tensors read so far: each gets its own streams
}

func (s *dummySource) read(name string, shape []int, dst []float32) (int64, error) {
	if len(shape) == 1 {
		for i := range dst {
			dst[i] = 1
		}
		return 2 * int64(len(dst)), nil
	}
	s.tensors++
	scale := float32(1 / math.Sqrt(float64(shape[len(shape)-1])))
	const chunk = 1 << 20
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for c := 0; c*chunk < len(dst); c++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			rng := rand.New(rand.NewPCG(s.seed, s.tensors<<32|uint64(c)))
			for i := range dst[c*chunk : min((c+1)*chunk, len(dst))] {
				dst[c*chunk+i] = (2*rng.Float32() - 1) * scale
			}
		}()
	}
	wg.Wait()
	return 2 * int64(len(dst)), nil
}
