package main

import (
	"context"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/internal/proctest"
)

// TestServeAgainstGateway runs the load generator against a real gateway
// serving the tiny model, in both arrival modes and the search.
func TestServeAgainstGateway(t *testing.T) {
	bin := proctest.Build(t, "github.com/kvd-project/kvd/gateway")
	modelDir := filepath.Join(t.TempDir(), "tiny")
	if err := tinymodel.Write(modelDir, tinymodel.Options{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	base := proctest.StartServer(t, bin, io.Discard, "--model", modelDir, "--embedded", "--kv-memory", "64MiB")
	ctx := context.Background()
	o := options{Base: base, InputLen: 32, OutputLen: 16, Vocab: 400, NumPrompts: 8, Warmup: 1, Concurrency: 4}
	if err := o.check(); err != nil {
		t.Fatal(err)
	}
	c := newClient(o)
	if err := c.resolveModel(ctx); err != nil || c.o.Model == "" {
		t.Fatalf("model %q: %v", c.o.Model, err)
	}
	for _, mode := range []struct {
		name string
		rate float64
	}{{"closed loop", 0}, {"poisson", 40}} {
		o.Rate = mode.rate
		r, err := run(ctx, c, o)
		if err != nil {
			t.Fatal(err)
		}
		if r.Completed != 8 || r.Failed != 0 {
			t.Fatalf("%s: %d completed, %d failed (%s)", mode.name, r.Completed, r.Failed, r.FirstError)
		}
		// ignore_eos: every request made exactly its 16 tokens.
		if got := r.OutputTokensPerSec * r.Seconds; math.Abs(got-8*16) > 1e-6 {
			t.Errorf("%s: %v output tokens, want 128", mode.name, got)
		}
		if !(r.TTFT.P50 > 0 && r.TTFT.P99 >= r.TTFT.P50 && r.TPOT.P50 > 0 && r.E2E.P50 >= r.TTFT.P50 && r.ITL.P50 > 0) {
			t.Errorf("%s: timings %+v %+v %+v", mode.name, r.TTFT, r.TPOT, r.E2E)
		}
		if !strings.Contains(r.String(), "Output token throughput (tok/s)") {
			t.Errorf("report:\n%s", r)
		}
	}
	o.Rate = 0
	best, all, err := searchConcurrency(ctx, c, o, time.Hour, 4, func(*report) {})
	if err != nil || best == nil || len(all) != 3 || all[2].Concurrency != 4 || all[2].Completed != 8 {
		t.Fatalf("search: best %v, %d levels, %v", best, len(all), err)
	}
	// A bound nothing meets.
	if best, _, err := searchConcurrency(ctx, c, o, time.Nanosecond, 4, func(*report) {}); err != nil || best != nil {
		t.Errorf("search under 1ns: best %v, %v", best, err)
	}
	// Token ids past the vocabulary: every request fails, with the reason.
	o.Vocab, o.Warmup = 100000, 0
	r, err := run(ctx, c, o)
	if err != nil || r.Failed != 8 || !strings.Contains(r.FirstError, "400") {
		t.Errorf("bad prompts: %+v, %v", r, err)
	}
}

func TestServeErrors(t *testing.T) {
	for _, o := range []options{
		{InputLen: 0, OutputLen: 1, Vocab: 1000, NumPrompts: 1, Concurrency: 1},
		{InputLen: 1, OutputLen: 1, Vocab: 50, NumPrompts: 1, Concurrency: 1},
		{InputLen: 1, OutputLen: 1, Vocab: 1000, NumPrompts: 1, Concurrency: 0},
		{InputLen: 1, OutputLen: 1, Vocab: 1000, NumPrompts: 1, Concurrency: 1, Rate: -1},
	} {
		if err := o.check(); err == nil {
			t.Errorf("%+v was taken", o)
		}
	}
	c := newClient(options{Base: "http://127.0.0.1:1"})
	if err := c.resolveModel(context.Background()); err == nil || !strings.Contains(err.Error(), "cannot reach") {
		t.Errorf("unreachable server: %v", err)
	}
}

func TestPercentile(t *testing.T) {
	xs := []float64{1, 2, 3, 4, 5}
	for _, c := range []struct{ p, want float64 }{{0, 1}, {50, 3}, {90, 4.6}, {99, 4.96}, {100, 5}} {
		if got := percentile(xs, c.p); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
}

// TestTables renders bench.sh's result files as the seed's tables: rows
// ordered by sparse layers then window (largest first), ratios to full KV.
func TestTables(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, tokS, ttft50 float64) {
		b, _ := json.Marshal([]*report{{InputLen: 5000, OutputLen: 500, Concurrency: 32, Completed: 32, OutputTokensPerSec: tokS, TTFT: dist{P50: ttft50, P99: 2 * ttft50}}})
		if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("full-sidecar", 400, 4000)
	write("grid-26-1024", 600, 3000)
	write("grid-22-1536", 500, 3500)
	write("grid-22-1024", 520, 3400)
	var out strings.Builder
	if err := tables(&out, dir); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"| full KV | 400.0 | 1.00 | 4.00 s | 8.00 s |",
		"| 26 sparse layers, window 1024 | 600.0 | 1.50 | 3.00 s | 6.00 s |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	if a, b, c := strings.Index(got, "22 sparse layers, window 1536"), strings.Index(got, "22 sparse layers, window 1024"), strings.Index(got, "26 sparse"); !(a < b && b < c) {
		t.Errorf("rows out of order:\n%s", got)
	}
	if strings.Contains(got, "24 GiB") {
		t.Errorf("a capped table without capped results:\n%s", got)
	}
	if err := tables(&out, t.TempDir()); err == nil {
		t.Error("an empty directory rendered")
	}
}
