package e2e

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kernels/cuda"
)

// TestGPUMatchesCPU serves the bundled model twice, embedded, with
// --device cpu and --device cuda, and compares greedy completions over a
// fixed prompt set, with full KV and with every sparsity policy: the token
// agreement rate (positions that agree before the first divergence, over
// all positions) and the largest logprob difference where they agree. It
// skips without a GPU. KVD_GPU_REPORT names a file for the table.
func TestGPUMatchesCPU(t *testing.T) {
	dev := gpuOrSkip(t)
	dir, err := filepath.Abs("../models/kvd-go-16m")
	if err != nil {
		t.Fatal(err)
	}
	prompts := gpuPrompts()
	// Every policy over a float32 pool (the kernels against the CPU's),
	// then the two that matter most over the GPU's default bfloat16 pool.
	// The GPU rounds more than the CPU: GEMM inputs to bf16, prompt
	// attention's Q, K, V and P to bf16 (flash_mma), and with auto K and V.
	// Each rounding moves logits by ~1e-2 and flips a seeded draw's
	// near-tie now and then: on an H200 (bench/results/gpu-g.md, run 7)
	// the float32 leg agreed on 0.29-0.46 of seeded tokens and the auto
	// leg on 0.27-0.41 (issue F's run, TF32 prompts and float32 K and V:
	// 0.50-0.75), greedy tokens on 0.86-0.93, the largest logprob
	// difference 0.042; in run 8, with the observation window's rows on
	// bf16 tiles and the norms' new summation order, seeded agreement was
	// 0.20-0.55 (PyramidKV's 0.203), greedy 0.85-0.93 and the logprob
	// difference up to 0.075. Agreement before divergence is geometric
	// and 12 prompts are few, so its bound (0.15) stays well under what
	// kernels that round alike measure; a wrong kernel diverges within a
	// token or two (0.02-0.04 of 48). The fp8 legs run the CPU over an
	// fp8 pool too, so that both quantize K and V alike: the GPU's kernels
	// against the CPU's reference, not fp8 against float32. Their bounds
	// are looser: E4M3 keeps 3 bits of mantissa, so where the GPU's K or V
	// differs from the CPU's by a bf16 GEMM's rounding, a value near a
	// rounding boundary lands a whole fp8 step (6-12%) away. On an H200
	// (bench/results/gpu-g.md, run 10) they agreed on 0.80-0.86 of greedy
	// tokens, 0.12-0.15 of seeded ones, the largest logprob difference
	// 0.39-0.46; every kernel they run is checked against the CPU's on the
	// same pool bytes in kernels' TestGPU* tests.
	policies := []struct {
		name, spec, dtype string
	}{
		{"full", "", "float32"},
		{"window", "2-7=window:sinks=4,window=252", "float32"},
		{"snapkv", "2-7=snapkv:budget=256", "float32"},
		{"pyramid", "2-7=pyramid:budget=256", "float32"},
		{"h2o", "2-7=full/h2o:heavy=224,recent=32", "float32"},
		{"snapkv+h2o", "2-7=snapkv:budget=256/h2o:recent=32", "float32"},
		{"full", "", "auto"},
		{"snapkv+h2o", "2-7=snapkv:budget=256/h2o:recent=32", "auto"},
		{"full", "", "fp8"},
		{"snapkv+h2o", "2-7=snapkv:budget=256/h2o:recent=32", "fp8"},
	}
	var report strings.Builder
	fmt.Fprintf(&report, "| policy | GPU's --kv-cache-dtype (the CPU's: float32, or fp8 with fp8) | prompts | greedy tokens agreeing before divergence | greedy completions identical | largest logprob difference | seeded sampling (T=0.8, top-p 0.95): tokens agreeing before divergence | first sampled token the same |\n|---|---|---|---|---|---|---|---|\n")
	for _, p := range policies {
		var pol []string
		if p.spec != "" {
			pol = []string{"--kv-policy", p.spec}
		}
		cpuArgs := []string{"--device", "cpu"}
		if p.dtype == "fp8" {
			cpuArgs = append(cpuArgs, "--kv-cache-dtype", "fp8")
		}
		cpu := startStack(t, "embedded", options{model: dir, kvMemory: "512MiB", policy: pol, gateway: cpuArgs})
		gpu := startStack(t, "embedded", options{model: dir, kvMemory: "512MiB", policy: pol, gateway: []string{"--device", "cuda", "--kv-cache-dtype", p.dtype}})
		if !strings.Contains(gpu.allLogs(), "backend=cuda") {
			t.Fatalf("the --device cuda gateway did not choose the GPU:\n%s", gpu.allLogs())
		}
		if used, temp := gpu.metric(t, "kvd_gpu_memory_used_bytes"), gpu.metric(t, "kvd_gpu_temperature_celsius"); !(used > 0) || !(temp > 0) {
			t.Errorf("NVML gauges: memory used %v, temperature %v", used, temp)
		}
		agree, total, same := 0, 0, 0
		maxDiff := 0.0
		for i, prompt := range prompts {
			body := map[string]any{"prompt": prompt, "max_tokens": 48, "temperature": 0, "ignore_eos": true, "logprobs": 1, "return_tokens_as_token_ids": true}
			a, b := cpu.complete(t, body), gpu.complete(t, body)
			// Without logprobs the logits stay on the GPU and only the
			// drawn token comes back: the same text.
			plain := map[string]any{"prompt": prompt, "max_tokens": 48, "temperature": 0, "ignore_eos": true}
			if c := gpu.complete(t, plain); c.Choices[0].Text != b.Choices[0].Text {
				t.Errorf("%s: prompt %d: without logprobs the GPU gave %q, with them %q", p.name, i, c.Choices[0].Text, b.Choices[0].Text)
			}
			ta, tb := ids(t, a.Choices[0].Logprobs.Tokens), ids(t, b.Choices[0].Logprobs.Tokens)
			n := 0
			for n < len(ta) && n < len(tb) && ta[n] == tb[n] {
				d := math.Abs(*a.Choices[0].Logprobs.TokenLogprobs[n] - *b.Choices[0].Logprobs.TokenLogprobs[n])
				maxDiff = math.Max(maxDiff, d)
				n++
			}
			agree += n
			total += len(ta)
			if n == len(ta) && len(ta) == len(tb) {
				same++
			} else {
				t.Logf("%s: prompt %d: diverges at token %d of %d", p.name, i, n, len(ta))
			}
		}
		// Seeded sampling draws from the same uniforms on both backends:
		// the same tokens until logits that differ in their last bits put
		// a draw's boundary on either side of its uniform (the chance of
		// that, per token, is the distributions' total variation).
		// Agreement before divergence is geometric, so one seed's 12 runs
		// give a noisy rate: over fp8, where a draw's boundary moves most,
		// one seed measured 0.116 without the bf16 gate and up and 0.076
		// with them (44 tokens of 576: one early divergence moves it by
		// hundredths), three seeds with them 0.163 (run 15). The fp8 legs
		// draw with three seeds, to hold their bound with a third of the
		// variance.
		seeds := []int{1}
		if p.dtype == "fp8" {
			seeds = []int{1, 2, 3}
		}
		firstSame, sAgree, sTotal, runs := 0, 0, 0, 0
		for _, seed := range seeds {
			for _, prompt := range prompts {
				body := map[string]any{"prompt": prompt, "max_tokens": 48, "temperature": 0.8, "top_p": 0.95, "seed": seed, "ignore_eos": true, "logprobs": 0, "return_tokens_as_token_ids": true}
				ta, tb := ids(t, cpu.complete(t, body).Choices[0].Logprobs.Tokens), ids(t, gpu.complete(t, body).Choices[0].Logprobs.Tokens)
				n := samePrefix(ta, tb)
				if n > 0 {
					firstSame++
				}
				sAgree += n
				sTotal += len(ta)
				runs++
			}
		}
		sRate := float64(sAgree) / float64(sTotal)
		rate := float64(agree) / float64(total)
		fmt.Fprintf(&report, "| %s | %s | %d | %.3f (%d of %d) | %d of %d | %.4f | %.3f (%d of %d; %d seeds) | %d of %d |\n", p.name, p.dtype, len(prompts), rate, agree, total, same, len(prompts), maxDiff, sRate, sAgree, sTotal, len(seeds), firstSame, runs)
		// A first draw differs when the two backends' first distributions
		// put a boundary on either side of its uniform: over fp8, whose
		// log-probabilities differ by up to ~0.3-0.5 here, 6 of 36 and 3 of
		// 36 did on an H200 (run 15, call D), so its bound is three
		// quarters of the runs; a wrong kernel's first draws are its own.
		minRate, maxLP, minSampled, minFirst := 0.8, 0.1, 0.15, runs-2*len(seeds)
		if p.dtype == "fp8" {
			minRate, maxLP, minSampled, minFirst = 0.7, 0.6, 0.08, runs*3/4
		}
		if rate < minRate || maxDiff > maxLP || sRate < minSampled || firstSame < minFirst {
			t.Errorf("%s, %s pool: GPU agrees with the CPU on %.3f of greedy tokens, %.3f of sampled ones (the first of %d of %d runs), largest logprob difference %.4f",
				p.name, p.dtype, rate, sRate, firstSame, runs, maxDiff)
		}
		cpu.stop()
		gpu.stop()
	}
	t.Logf("%s\n%s", dev, report.String())
	if path := os.Getenv("KVD_GPU_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte("Card: "+dev+"\n\n"+report.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// gpuOrSkip skips the test without a GPU and names the GPU otherwise.
func gpuOrSkip(t *testing.T) string {
	t.Helper()
	g, err := kernels.NewCUDA(0)
	if errors.Is(err, cuda.ErrNoDriver) {
		t.Skipf("no GPU: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	return g.Device().String()
}

// gpuPrompts is the fixed prompt set: Go code openings, and token-id
// prompts of the lengths the kernels are tested at (the long ones cross
// the sparse layers' budget).
func gpuPrompts() []any {
	out := []any{
		"package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n",
		"// Copy copies from src to dst until EOF.\nfunc Copy(dst io.Writer, src io.Reader) (int64, error) {\n",
		"func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {\n\tif r.Method != http.MethodGet {\n",
		"type Cache struct {\n\tmu    sync.Mutex\n\titems map[string]*entry\n}\n\nfunc (c *Cache) Get(key string) (",
		"func TestParse(t *testing.T) {\n\tfor _, tc := range []struct {\n\t\tin   string\n\t\twant int\n\t}{\n",
		"// Sort sorts data in ascending order as determined by the Less method.\nfunc Sort(data Interface) {\n\tn := data.Len()\n",
	}
	rng := rand.New(rand.NewPCG(42, 42))
	for _, n := range []int{1, 15, 17, 97, 600, 1979} {
		p := make([]int32, n)
		for i := range p {
			p[i] = int32(3 + rng.IntN(8000))
		}
		out = append(out, p)
	}
	return out
}
