package cli

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/metric"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kernels/cuda"
	"github.com/kvd-project/kvd/kvd/pool"
	"github.com/kvd-project/kvd/observability"
)

// selectDevice opens the backend --device asks for, for the embedded
// mode, and logs which one and why.
func selectDevice(device string, log *slog.Logger) (kernels.Backend, error) {
	if err := checkDevice(device); err != nil {
		return nil, err
	}
	b, why, err := kernels.Select(device)
	if err != nil {
		return nil, err
	}
	log.Info("backend chosen", "backend", b.Name(), "why", why)
	return b, nil
}

func checkDevice(device string) error {
	switch device {
	case kernels.DeviceAuto, kernels.DeviceCPU, kernels.DeviceCUDA:
		return nil
	}
	return fmt.Errorf("%w: --device %q: want auto, cpu or cuda", ErrUsage, device)
}

// dialKVD connects to kvd and opens the backend that can address its pool:
// the GPU for a pool kvd holds there (shared over CUDA IPC), the CPU for a
// host pool. --device must agree, or be auto.
func dialKVD(ctx context.Context, socket string, opts ipc.Options, device string, log *slog.Logger) (*ipc.Client, kernels.Backend, error) {
	if err := checkDevice(device); err != nil {
		return nil, nil, err
	}
	cl, err := ipc.Dial(ctx, socket, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("%w; or run with --embedded", err)
	}
	h := cl.Hello()
	onGPU := h.GPU != ""
	switch {
	case onGPU && device == kernels.DeviceCPU:
		cl.Shutdown()
		return nil, nil, fmt.Errorf("%w: --device cpu: kvd's pool is in GPU memory (%s); run the gateway with --device cuda or auto, or kvd with --device cpu", ErrUsage, h.GPU)
	case !onGPU && device == kernels.DeviceCUDA:
		cl.Shutdown()
		return nil, nil, fmt.Errorf("%w: --device cuda: kvd's pool is host memory (%s); start kvd with --device cuda, or run the gateway with --embedded --device cuda", ErrUsage, h.PoolKind)
	case !onGPU:
		log.Info("backend chosen", "backend", "cpu", "why", "kvd's pool is host memory ("+h.PoolKind+")")
		return cl, kernels.NewCPU(), nil
	}
	b, why, err := kernels.Select(kernels.DeviceCUDA)
	if err != nil {
		cl.Shutdown()
		return nil, nil, fmt.Errorf("kvd's pool is in GPU memory (%s): %w", h.GPU, err)
	}
	if g, ok := b.(*kernels.CUDA); ok && g.Device().String() != h.GPU {
		log.Warn("kvd's pool is on another GPU than the gateway's: CUDA IPC maps it over peer access, which is slow", "kvd", h.GPU, "gateway", g.Device().String())
	}
	log.Info("backend chosen", "backend", b.Name(), "why", why+"; kvd's pool is in its memory (CUDA IPC)")
	return cl, b, nil
}

// freeMemory is what a --kv-memory fraction is taken of: free GPU memory
// (after the weights) less what a step's activations will take, for the
// CUDA backend; available host memory else.
func freeMemory(b kernels.Backend, c *model.Config, step stepShape) func() (int64, error) {
	if g, ok := b.(*kernels.CUDA); ok {
		return func() (int64, error) {
			free, _, err := g.MemInfo()
			if err != nil {
				return 0, err
			}
			need := activationBytes(c, step)
			if left := int64(free) - need; left > 0 {
				return left, nil
			}
			return 0, fmt.Errorf("%d MiB of GPU memory free after the weights, and %s needs about %d MiB of activations", free>>20, step, need>>20)
		}
	}
	return pool.AvailableMemory
}

// checkActivations fails when the GPU has too little memory left (after
// the weights and, in sidecar mode, kvd's pool) for the largest step.
func checkActivations(b kernels.Backend, c *model.Config, step stepShape) error {
	g, ok := b.(*kernels.CUDA)
	if !ok {
		return nil
	}
	free, _, err := g.MemInfo()
	if err != nil {
		return err
	}
	if need := activationBytes(c, step); int64(free) < need {
		return fmt.Errorf("%d MiB of GPU memory free after the weights and kvd's pool, and %s needs about %d MiB of activations: give kvd a smaller --kv-memory, or lower --max-model-len", free>>20, step, need>>20)
	}
	return nil
}

// stepDefaults are --max-num-batched-tokens and --max-num-seqs when they
// are not given, as vLLM sets them for its OpenAI server: 8192 tokens a
// step and 1024 sequences on a GPU of 70 GiB or more (an H100 or H200; not
// an A100, where vLLM measured the larger steps slower), 2048 and 256 on
// smaller ones and the CPU. At 5000-token prompts and 256 running
// requests on an H200, 2048 a step could not prefill new prompts as fast
// as requests finished, so fewer than 256 decoded at once
// (bench/results/gpu-g.md, run 16). A sequence is admitted when kvd's
// pool has room for its prompt; past that, places only raise the
// activation budget's logit rows (checkActivations).
func stepDefaults(b kernels.Backend) (tokens, seqs int) {
	if g, ok := b.(*kernels.CUDA); ok {
		return stepDefaultsOn(g.Device())
	}
	return 2048, 256
}

func stepDefaultsOn(d cuda.Device) (tokens, seqs int) {
	if d.Memory >= 70<<30 && !strings.Contains(strings.ToLower(d.Name), "a100") {
		return 8192, 1024
	}
	return 2048, 256
}

// stepShape is the largest step the scheduler may run: a prompt of up to
// --max-model-len tokens (one that cannot be chunked, a sparse model's or
// one scoring its prompt, runs whole, past the token budget) or
// --max-num-batched-tokens, whichever is more, and a logit row for each of
// up to --max-num-seqs sequences. A request scoring its prompt needs a
// logit row per prompt token too, which this leaves out.
type stepShape struct{ tokens, seqs int }

func (s stepShape) String() string {
	return fmt.Sprintf("a step of %d tokens (--max-model-len, --max-num-batched-tokens) and %d sequences (--max-num-seqs)", s.tokens, s.seqs)
}

func largestStep(maxBatched, maxLen, maxSeqs int) stepShape {
	return stepShape{tokens: max(maxBatched, maxLen) + maxSeqs, seqs: maxSeqs}
}

// activationBytes bounds the device memory one forward step uses besides
// the weights and the pool: the scratch tensors of every token (three of
// the hidden width, two of q/k/v's, three of the MLP's), a logit row per
// sequence, a sparse layer's prompt scratch (its K and V rounded to bf16,
// the observation window's sums per head, SnapKV's choice's scores and
// order keys per KV head, and the window rows' max and sum per tile, at
// most kernels.ObsStatsMaxBytes), the fused scoring pass's logits and the
// blocks of an fp8 pool's prompt chunks' sequences widened to bf16 (at
// most kernels.WidenMaxBytes, twice: its size class moves with the
// context, and each class stays cached), each twice over where the backend's power-of-two size classes
// hold it (the logits buffer is a power of two already).
func activationBytes(c *model.Config, s stepShape) int64 {
	qd, kvd := c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim
	tensor := func(elems int64) int64 {
		if b := 4 * elems; b >= kernels.ExactAllocBytes {
			return b
		}
		return 2 * 4 * elems
	}
	t := int64(s.tokens)
	return 3*tensor(t*int64(c.HiddenSize)) + 2*tensor(t*int64(qd+2*kvd)) + 3*tensor(t*int64(c.IntermediateSize)) +
		tensor(int64(s.seqs)*int64(c.VocabSize)) +
		2*tensor(t*int64(kvd)/2) + tensor(t*int64(c.NumHeads)) + tensor(6*t*int64(c.NumKVHeads)) +
		kernels.ObsStatsMaxBytes + kernels.FusedScoreMaxBytes + 2*kernels.WidenMaxBytes + kernels.UploadMaxBytes
}

// gpuGauges exports the GPU's NVML readings on /metrics when the model runs
// on one; without NVML it logs why and exports nothing.
func gpuGauges(b kernels.Backend, log *slog.Logger) (func(), error) {
	g, ok := b.(*kernels.CUDA)
	if !ok {
		return func() {}, nil
	}
	nv, err := cuda.OpenNVML(g.Device().Index)
	if err != nil {
		log.Warn("no GPU metrics", "err", err)
		return func() {}, nil
	}
	if s, err := nv.Stats(); err == nil {
		log.Info("gpu", "device", g.Device().String(), "memory_used_bytes", s.MemoryUsed, "temperature_c", s.Temperature)
	}
	meter := observability.Meter("gateway")
	used, err := meter.Int64ObservableGauge("kvd_gpu_memory_used_bytes", metric.WithDescription("GPU memory in use (NVML)."))
	if err != nil {
		return nil, err
	}
	total, err := meter.Int64ObservableGauge("kvd_gpu_memory_total_bytes", metric.WithDescription("GPU memory (NVML)."))
	if err != nil {
		return nil, err
	}
	util, err := meter.Float64ObservableGauge("kvd_gpu_utilization", metric.WithDescription("Fraction of the last sample period with a kernel running (NVML)."))
	if err != nil {
		return nil, err
	}
	temp, err := meter.Int64ObservableGauge("kvd_gpu_temperature_celsius", metric.WithDescription("GPU temperature (NVML)."))
	if err != nil {
		return nil, err
	}
	_, err = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		s, err := nv.Stats()
		if err != nil {
			return nil
		}
		o.ObserveInt64(used, int64(s.MemoryUsed))
		o.ObserveInt64(total, int64(s.MemoryTotal))
		o.ObserveFloat64(util, float64(s.Utilization)/100)
		o.ObserveInt64(temp, int64(s.Temperature))
		return nil
	}, used, total, util, temp)
	return nv.Close, err
}
