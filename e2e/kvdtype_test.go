package e2e

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBFloat16Pool serves with --kv-cache-dtype bfloat16 and fp8 (kvd's
// flag in sidecar mode, the gateway's embedded) and checks that the pool
// holds K and V in half (a quarter of) the bytes (about twice, or 3.7
// times, the blocks in the same memory), that kvd reports the dtype, and
// that prompt log-probabilities stay within the dtype's rounding of the
// reference's (and are not the float32 pool's to the last bit). A bad
// value is refused with a message.
func TestBFloat16Pool(t *testing.T) {
	prompt := randomPrompt(rand.New(rand.NewPCG(21, 21)), 120)
	want := refPromptLogprobs(t, prompt)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			blocks := map[string]float64{}
			for _, dt := range []string{"float32", "bfloat16", "fp8"} {
				o := options{kvMemory: "8MiB"}
				if mode == "sidecar" {
					o.kvd = []string{"--kv-cache-dtype", dt}
				} else {
					o.gateway = []string{"--kv-cache-dtype", dt}
				}
				s := startStack(t, mode, o)
				blocks[dt] = s.metric(t, "kvd_kv_blocks_total")
				c := s.complete(t, map[string]any{"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1, "return_tokens_as_token_ids": true})
				var worst, sum float64
				for i, w := range want {
					got := c.Choices[0].Logprobs.TokenLogprobs[i+1]
					if got == nil {
						t.Fatalf("%s: prompt token %d has no logprob", dt, i+1)
					}
					d := math.Abs(*got - w)
					worst, sum = math.Max(worst, d), sum+d
				}
				t.Logf("%s pool: prompt logprobs off the reference by %.2e (mean), %.2e (worst)", dt, sum/float64(len(want)), worst)
				if dt == "float32" && worst > 1e-4 {
					t.Errorf("float32 pool: prompt logprobs off by %.2e", worst)
				}
				if dt == "bfloat16" && (worst > 0.05 || worst < 1e-6) {
					t.Errorf("bfloat16 pool: prompt logprobs off by %.2e at worst (want bfloat16's rounding: above 1e-6, below 0.05)", worst)
				}
				if dt == "fp8" && (worst > 0.5 || sum/float64(len(want)) < 1e-4) {
					t.Errorf("fp8 pool: prompt logprobs off by %.2e at worst, %.2e mean (want fp8's rounding: a mean above 1e-4, nothing past 0.5)", worst, sum/float64(len(want)))
				}
				c = s.complete(t, map[string]any{"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": true})
				if c.Usage.CompletionTokens != 8 {
					t.Errorf("%s: %d tokens generated, want 8", dt, c.Usage.CompletionTokens)
				}
				if mode == "sidecar" {
					out, err := exec.Command(filepath.Join(binDir, "kvd"), "status", "--socket", s.sock, "--json").Output()
					var st struct {
						DType string `json:"kv_cache_dtype"`
					}
					if err != nil || json.Unmarshal(out, &st) != nil || !strings.HasPrefix(st.DType, dt) {
						t.Errorf("kvd status does not say the pool is %s: %v\n%s", dt, err, out)
					}
				}
				s.stop()
			}
			// The tiny model's rows are 16 dims: 33 words a token and
			// head as float32 against 17 as bfloat16, K, V and score.
			if r := blocks["bfloat16"] / blocks["float32"]; r < 1.9 || r > 2 {
				t.Errorf("a bfloat16 pool holds %.0f blocks, a float32 one %.0f (ratio %.2f, want about 1.94)", blocks["bfloat16"], blocks["float32"], r)
			}
			// fp8: 9 words (4 of K, 4 of V, the score).
			if r := blocks["fp8"] / blocks["float32"]; r < 3.6 || r > 3.7 {
				t.Errorf("an fp8 pool holds %.0f blocks, a float32 one %.0f (ratio %.2f, want about 3.67)", blocks["fp8"], blocks["float32"], r)
			}
		})
	}
	out, err := exec.Command(filepath.Join(binDir, "kvd"), "serve", "--model", modelDir, "--kv-cache-dtype", "fp16").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--kv-cache-dtype") || !strings.Contains(string(out), "bfloat16") {
		t.Errorf("kvd serve --kv-cache-dtype fp16: %v, %s", err, out)
	}
}
