package main

import (
	"context"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/gateway/tokenizer"
	"github.com/kvd-project/kvd/internal/proctest"
)

// tinyHeldout writes a tiny model whose split holds out two of Go's
// packages, and returns its directory, tokenizer and held-out sources.
func tinyHeldout(t *testing.T) (string, *tokenizer.Tokenizer, []string) {
	t.Helper()
	modelDir := filepath.Join(t.TempDir(), "tiny")
	if err := tinymodel.Write(modelDir, tinymodel.Options{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(modelDir, "split.json"), []byte(`{"heldout": ["./strings", "./bufio"]}`), 0o644)
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := heldoutSources(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	return modelDir, tok, files
}

// TestHarnessEndToEnd draws a few short samples from real held-out Go
// source, runs them against a real gateway with full KV and with a window
// small enough to matter, and checks the report.
func TestHarnessEndToEnd(t *testing.T) {
	bin := proctest.Build(t, "github.com/kvd-project/kvd/gateway")
	modelDir, tok, files := tinyHeldout(t)
	samples, err := makeSamples(tok, files, []int{192, 320}, 2, 7)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 8 {
		t.Fatalf("%d samples, want 2 of each of 4 tasks", len(samples))
	}
	keys, err := makeKeySamples(tok, files, 192, 2, 7)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		ids := make([]int, len(k.Continuation))
		for i, id := range k.Continuation {
			ids[i] = int(id)
		}
		if got := tok.Decode(ids, false); k.Task != taskKey || got != k.Target+`"` || !strings.HasSuffix(k.Prompt, `const secretKey = "`) {
			t.Fatalf("key sample %q scores %q", k.Target, got)
		}
	}
	samples = append(samples, keys...)
	for _, s := range samples {
		if s.Task == taskRetrieval && (!strings.Contains(s.Prompt, `const secretKey = "`+s.Target+`"`) || len(s.Target) != probeDigits) {
			t.Fatalf("retrieval sample does not define its key: %q", s.Target)
		}
		if s.Task == taskLoglik && len(s.PromptIDs)+len(s.Continuation) != 320 {
			t.Fatalf("loglik sample of %d+%d tokens", len(s.PromptIDs), len(s.Continuation))
		}
	}
	configs := []config{
		{Name: "full", Kind: "full"},
		{Name: "window", Kind: "policy", Policy: "1-3=window:sinks=4,window=60", Layers: 3, Window: 64},
		{Name: "full, bfloat16 KV", Kind: "custom", KVType: "bfloat16"},
	}
	results := map[string]result{}
	for _, c := range configs {
		s, err := startGateway(bin, modelDir, c, "64MiB", "", 0, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		r := result{}
		err = runSamples(context.Background(), s, samples, r, 1, nil)
		if err == nil && c.Name == "full" {
			// Samples run four at once, batched by the gateway, keep
			// their order: each log-likelihood pairs with its sample's.
			batched, calls := result{}, 0
			err = runSamples(context.Background(), s, samples, batched, 4, func() { calls++ })
			if calls != len(samples) {
				t.Errorf("done called %d times for %d samples", calls, len(samples))
			}
			for _, k := range []string{loglikKey, keyKey} {
				if len(batched[k]) != len(r[k]) || len(r[k]) == 0 {
					t.Fatalf("%s: %d scores batched, %d one at a time", k, len(batched[k]), len(r[k]))
				}
				for i := range r[k] {
					if math.Abs(batched[k][i]-r[k][i]) > 1e-3 {
						t.Errorf("%s sample %d: %v batched, %v one at a time", k, i, batched[k][i], r[k][i])
					}
				}
			}
		}
		s.stop()
		if err != nil {
			t.Fatal(err)
		}
		results[c.Name] = r
	}
	// A server without /v1/kvd/score is scored from echoed prompt
	// log-probabilities: with full KV both ways agree.
	s, err := startGateway(bin, modelDir, config{}, "64MiB", "", 0, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	if s.model, err = s.firstModel(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The same gateway behind a proxy that hides the extension, as a
	// vLLM-like server would lack it.
	target, _ := url.Parse(s.base)
	proxy := httputil.NewSingleHostReverseProxy(target)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/kvd/score" {
			http.NotFound(w, r)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer plain.Close()
	other := &server{base: plain.URL, model: s.model}
	for _, smp := range samples {
		if smp.Task != taskLoglik {
			continue
		}
		viaScore, err1 := s.score(context.Background(), smp.PromptIDs, smp.Continuation)
		viaEcho, err2 := other.score(context.Background(), smp.PromptIDs, smp.Continuation)
		if err1 != nil || err2 != nil || !other.echoScore.Load() || math.Abs(viaScore-viaEcho) > 1e-4 {
			t.Errorf("scored %v (%v) through /v1/kvd/score, %v (%v) through echo (used: %v)", viaScore, err1, viaEcho, err2, other.echoScore.Load())
		}
	}
	full, win := summarize(results["full"][loglikKey]), summarize(results["window"][loglikKey])
	if math.IsNaN(full.Mean) || full.Mean >= 0 || full.Mean == win.Mean {
		t.Errorf("log-likelihood: full %v, window %v", full, win)
	}
	// A bfloat16 pool's scores pair with full KV's, a little off each.
	bf := results["full, bfloat16 KV"][loglikKey]
	for i, f := range results["full"][loglikKey] {
		if d := math.Abs(bf[i] - f); d == 0 && i == 0 || d > 0.05 {
			t.Errorf("loglik sample %d: %v over a bfloat16 pool, %v over float32", i, bf[i], f)
		}
	}
	report := render(SampleSet{Seed: 7, Lengths: []int{192, 320}, Samples: samples}, configs, rawRun{CPU: "test", Threads: 1, Results: results}, modelDir, "")
	for _, want := range []string{"## Full KV", "line-192 edit-sim", "retrieval exact", "| window |", loglikKey, keyKey} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	t.Log("\n" + report)
}
