package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSparseLayers serves a prompt longer than the sparse layers' budget,
// with every layer full and with the seed's preset on the last 3 of the
// tiny model's 4 layers (64-token window), and checks while the request
// runs that each sparse layer holds at most its budget plus a block, that
// the pool holds fewer blocks than with full KV, and that the completion
// is whole.
func TestSparseLayers(t *testing.T) {
	const window, blockSize, promptLen, newTokens = 64, 16, 400, 120
	prompt := randomPrompt(rand.New(rand.NewPCG(11, 11)), promptLen)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			usage, scores := map[string]float64{}, map[string]float64{}
			for _, preset := range []string{"full", "sparse"} {
				o := options{kvMemory: "16MiB"}
				if preset == "sparse" {
					o.policy = []string{"--sparse-layers", "3", "--window", fmt.Sprint(window)}
				}
				s := startStack(t, mode, o)
				b, _ := json.Marshal(map[string]any{"prompt": prompt, "max_tokens": newTokens, "ignore_eos": true, "stream": true, "temperature": 0})
				resp, err := http.Post(s.base+"/v1/completions", "application/json", bytes.NewReader(b))
				if err != nil {
					t.Fatal(err)
				}
				stream := bufio.NewReader(resp.Body)
				for range 60 { // well into decoding, so eviction has run
					if line, err := stream.ReadString('\n'); err != nil || (line != "\n" && !strings.HasPrefix(line, "data: ")) {
						t.Fatalf("%q: %v", line, err)
					}
				}
				usage[preset] = s.metric(t, "kvd_kv_blocks_used")
				layers := layerTokens(t, s)
				if mode == "sidecar" {
					out, err := exec.Command(filepath.Join(binDir, "kvd"), "status", "--socket", s.sock, "--json").Output()
					if err != nil {
						t.Fatal(err)
					}
					var st struct {
						Layers []struct {
							Index          int    `json:"index"`
							Policy         string `json:"policy"`
							TokensRetained int    `json:"tokens_retained"`
						} `json:"layers"`
					}
					json.Unmarshal(out, &st)
					// Generation goes on between the two reads, so check
					// kvd's own numbers against the same bounds.
					for _, l := range st.Layers {
						if preset == "sparse" && l.Index >= 1 && (l.TokensRetained > window+blockSize || !strings.HasPrefix(l.Policy, "snapkv")) {
							t.Errorf("kvd status: layer %d (%s) holds %d tokens", l.Index, l.Policy, l.TokensRetained)
						}
					}
					t.Logf("%s: kvd status layers %+v", preset, st.Layers)
				}
				for l, n := range layers {
					switch {
					case preset == "sparse" && l >= 1 && n > window+blockSize:
						// A layer reaches budget + a block between a step's
						// reservation and the eviction its done report starts.
						t.Errorf("sparse layer %d holds %v tokens, over budget %d + a block", l, n, window)
					case (preset == "full" || l == 0) && n < promptLen:
						t.Errorf("%s layer %d holds %v tokens, fewer than the prompt's %d", preset, l, n, promptLen)
					}
				}
				events := sseEvents(t, stream)
				resp.Body.Close()
				var text string
				var finish any
				for _, e := range events {
					for _, ch := range e["choices"].([]any) {
						c := ch.(map[string]any)
						text += c["text"].(string)
						if f := c["finish_reason"]; f != nil {
							finish = f
						}
					}
				}
				if finish != "length" || text == "" {
					t.Errorf("%s: the completion ended with %v after %q", preset, finish, text)
				}
				// Scoring a continuation through the compressed cache.
				code, b, _ := s.post(t, "/v1/kvd/score", map[string]any{"prompt": prompt, "continuation": prompt[:48]})
				var sc struct {
					Sum float64 `json:"sum_logprob"`
				}
				if code != 200 || json.Unmarshal(b, &sc) != nil || math.IsNaN(sc.Sum) || sc.Sum >= 0 {
					t.Fatalf("%s: score %d %s", preset, code, b)
				}
				scores[preset] = sc.Sum
			}
			if scores["full"] == scores["sparse"] {
				t.Errorf("scoring through the compressed cache gave the full cache's log-likelihood %v", scores["full"])
			}
			t.Logf("%s: continuation log-likelihood, full %.3f, sparse %.3f", mode, scores["full"], scores["sparse"])
			ratio := usage["full"] / usage["sparse"]
			// Layer 0 keeps ~460 tokens (29 blocks) either way; layers 1-3
			// go from 29 blocks to at most 5 each.
			t.Logf("%s: KV blocks in use mid-generation: full %v, sparse %v: %.2fx less", mode, usage["full"], usage["sparse"], ratio)
			if ratio < 2 {
				t.Errorf("the sparse layers saved only %.2fx", ratio)
			}
		})
	}
}

// layerTokens reads each layer's retained tokens from /metrics.
func layerTokens(t *testing.T, s *stack) map[int]float64 {
	t.Helper()
	resp, err := http.Get(s.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[int]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "kvd_kv_layer_tokens{") {
			continue
		}
		var layer int
		var v float64
		i := strings.Index(line, `layer="`)
		fmt.Sscanf(line[i+len(`layer="`):], "%d", &layer)
		f := strings.Fields(line)
		fmt.Sscanf(f[len(f)-1], "%g", &v)
		out[layer] = v
	}
	if len(out) != ref.Config.NumLayers {
		t.Fatalf("per-layer tokens for %d layers in /metrics", len(out))
	}
	return out
}
