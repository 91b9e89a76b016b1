// Command forward times the forward pass alone, in process: prefill and
// decode tokens/s at several batch sizes, for a model directory (real or
// --load-format dummy) on a chosen --device. It is for orientation; the
// serving numbers come from bench/serve against a running gateway.
//
//	go run ./bench/forward --model bench/models/llama-3.1-8b --load-format dummy --device cuda --runs 1x512,32x512
//
// --kernel-profile N (CUDA) also prints, per run, where the device's time
// went kernel by kernel: over the whole prefill (whose printed rate then
// includes the profile's events, ~2%), and over N decode steps after the
// timed ones.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/runner"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kvd/engine"
	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/shm"
)

func main() {
	dir := flag.String("model", "", "Hugging Face model directory (required)")
	format := flag.String("load-format", model.LoadAuto, "auto or dummy")
	device := flag.String("device", kernels.DeviceAuto, "auto, cpu or cuda")
	runs := flag.String("runs", "1x512,32x512", "comma-separated BATCHxPROMPT runs: sequences, and prompt tokens each")
	decode := flag.Int("decode", 64, "decode steps")
	chunk := flag.Int("max-num-batched-tokens", 8192, "prefill tokens per step")
	profile := flag.String("cpuprofile", "", "write a CPU profile of the decode steps here")
	dtype := flag.String("kv-cache-dtype", "auto", "the pool's K and V: auto (bfloat16 on a GPU), float32, bfloat16 or fp8 (E4M3)")
	sparseLayers := flag.Int("sparse-layers", 0, "the last N layers sparse (SnapKV prompt selection, H2O decode), as the gateway's flag")
	window := flag.Int("window", 1024, "tokens a sparse layer keeps, with --sparse-layers")
	flag.IntVar(&kernelProfile, "kernel-profile", 0, "on CUDA, profile the prefill and this many more decode steps kernel by kernel")
	flag.Parse()
	cpuProfile = *profile
	if err := run(*dir, *format, *device, *runs, *decode, *chunk, *dtype, *sparseLayers, *window); err != nil {
		fmt.Fprintln(os.Stderr, "forward:", err)
		os.Exit(1)
	}
}

var (
	cpuProfile    string
	kernelProfile int
)

func run(dir, format, device, runs string, decode, chunk int, dtype string, sparseLayers, window int) error {
	if dir == "" {
		return fmt.Errorf("--model is required")
	}
	type shape struct{ batch, prompt int }
	var shapes []shape
	for _, f := range strings.Split(runs, ",") {
		b, p, ok := strings.Cut(strings.TrimSpace(f), "x")
		nb, err1 := strconv.Atoi(b)
		np, err2 := strconv.Atoi(p)
		if !ok || err1 != nil || err2 != nil || nb < 1 || np < 1 {
			return fmt.Errorf("--runs %q: want BATCHxPROMPT pairs like 1x512,32x512", runs)
		}
		shapes = append(shapes, shape{nb, np})
	}
	b, why, err := kernels.Select(device)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	log.Info("backend chosen", "backend", b.Name(), "why", why)
	card := fmt.Sprintf("cpu, %d threads", runtime.GOMAXPROCS(0))
	if g, ok := b.(*kernels.CUDA); ok {
		card = g.Device().String()
	}
	ctx := context.Background()
	start := time.Now()
	m, err := model.Load(ctx, dir, b, model.LoadOptions{Format: format, Progress: os.Stderr, Logger: log})
	if err != nil {
		return err
	}
	log.Info("model loaded", "seconds", time.Since(start).Seconds())
	g, _ := b.(*kernels.CUDA)
	dt, err := shm.ResolveDType(dtype, g != nil, m.Config.HeadDim)
	if err != nil {
		return err
	}
	spec, err := policy.FromFlags("", sparseLayers, window, m.Config.NumLayers)
	if err != nil {
		return err
	}
	if kernelProfile > 0 && g == nil {
		return fmt.Errorf("--kernel-profile needs --device cuda")
	}
	var profiles []string
	profile := func(what string, steps int) error {
		p, err := g.StopProfile()
		if err != nil {
			return err
		}
		profiles = append(profiles, fmt.Sprintf("### %s\n\n%s", what, p.Markdown(steps)))
		return nil
	}
	fmt.Printf("| model | device | batch | prompt | prefill tok/s | decode steps | decode tok/s | decode step ms |\n|---|---|---|---|---|---|---|---|\n")
	rng := rand.New(rand.NewPCG(1, 2))
	for _, sh := range shapes {
		batch, prompt := sh.batch, sh.prompt
		c := m.Config
		kv, err := engine.NewLocalOn(b, shm.Layout{NumBlocks: batch * runner.BlocksFor(c, prompt+decode+kernelProfile, 16), BlockSize: 16,
			KVHeads: c.NumKVHeads, HeadDim: c.HeadDim, DType: dt}, spec)
		if err != nil {
			return err
		}
		r, err := runner.New(m, kv)
		if err != nil {
			return err
		}
		work := make([]runner.Work, batch)
		for i := range work {
			if err := r.Open(ctx, uint64(i)); err != nil {
				return err
			}
			toks := make([]int32, prompt)
			for j := range toks {
				toks[j] = int32(rng.IntN(m.Config.VocabSize))
			}
			work[i] = runner.Work{Seq: uint64(i), Tokens: toks, Draw: &kernels.SampleParams{}, NoLogits: true} // greedy, drawn on the device as the server does
		}
		// Prefill in steps of at most chunk tokens, whole prompts each.
		if kernelProfile > 0 {
			g.StartProfile()
		}
		t0 := time.Now()
		per := max(1, chunk/prompt)
		for lo := 0; lo < batch; lo += per {
			if _, _, err := r.StepSample(ctx, work[lo:min(lo+per, batch)]); err != nil {
				return err
			}
		}
		pre := time.Since(t0)
		if kernelProfile > 0 {
			if err := profile(fmt.Sprintf("%dx%d %s: prefill (%d tokens, whole)", batch, prompt, dt, batch*prompt), 1); err != nil {
				return err
			}
		}
		for i := range work {
			work[i].Tokens = work[i].Tokens[:1]
		}
		if cpuProfile != "" {
			f, err := os.Create(fmt.Sprintf("%s.%dx%d", cpuProfile, batch, prompt))
			if err != nil {
				return err
			}
			pprof.StartCPUProfile(f)
		}
		t0 = time.Now()
		for range decode {
			if _, _, err := r.StepSample(ctx, work); err != nil {
				return err
			}
		}
		dec := time.Since(t0)
		if cpuProfile != "" {
			pprof.StopCPUProfile()
		}
		fmt.Printf("| %s | %s | %d | %d | %.0f | %d | %.1f | %.2f |\n", m.Config.ModelType, card, batch, prompt,
			float64(batch*prompt)/pre.Seconds(), decode, float64(batch*decode)/dec.Seconds(), dec.Seconds()*1000/float64(decode))
		if kernelProfile > 0 {
			g.StartProfile()
			for range kernelProfile {
				if _, _, err := r.StepSample(ctx, work); err != nil {
					return err
				}
			}
			if err := profile(fmt.Sprintf("%dx%d %s: decode (per step, %d steps)", batch, prompt, dt, kernelProfile), kernelProfile); err != nil {
				return err
			}
		}
		for i := range work {
			r.Close(ctx, uint64(i))
		}
		if err := r.Shutdown(); err != nil {
			return err
		}
	}
	if len(profiles) > 0 {
		fmt.Printf("\n## Kernel profiles (%s, pool %s, %d sparse layers, window %d)\n\n%s", card, dt, sparseLayers, window, strings.Join(profiles, "\n"))
	}
	return nil
}
