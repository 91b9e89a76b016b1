package sched

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/gateway/runner"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kvd/policy"
)

// served is one request's outcome.
type served struct {
	tokens []int32
	finish string
	err    error
}

// tinyModel is a small random Llama on the CPU.
func tinyModel(t *testing.T) *model.Model {
	t.Helper()
	dir := t.TempDir()
	if err := tinymodel.Write(dir, tinymodel.Options{Seed: 5}); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(context.Background(), dir, kernels.NewCPU(), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// serveAll runs reqs at once through a scheduler over an embedded pool of
// numBlocks on the CPU, its layers following spec (nil: all full), and
// returns each request's tokens and finish; it checks that every block is
// back in the pool at the end.
func serveAll(t *testing.T, m *model.Model, spec policy.Spec, cfg Config, numBlocks int, reqs []*Request, cancelAfter []int, cancels []context.CancelFunc) ([]served, *Scheduler) {
	t.Helper()
	r, err := runner.NewEmbedded(m, numBlocks, 16, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Shutdown()
	s, err := New(r, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	out := make([]served, len(reqs))
	var wg sync.WaitGroup
	for i, req := range reqs {
		if err := s.Submit(req); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for {
				ev, ok := req.Next()
				if !ok {
					return
				}
				if ev.Token != nil {
					out[i].tokens = append(out[i].tokens, ev.Token.ID)
					if cancelAfter[i] > 0 && len(out[i].tokens) == cancelAfter[i] {
						cancels[i]() // the client leaves
					}
				}
				if ev.Finish != "" || ev.Err != nil {
					out[i].finish, out[i].err = ev.Finish, ev.Err
				}
			}
		})
	}
	wg.Wait()
	// The pool must be whole again: every sequence closed, ghosts of the
	// steps prepared ahead included (the scheduler closes them after
	// their step; give it the loop's next turn).
	deadline := time.Now().Add(5 * time.Second)
	for r.FreeBlocks() != r.TotalBlocks() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if free, total := r.FreeBlocks(), r.TotalBlocks(); free != total {
		t.Errorf("%d of %d blocks free after every request ended", free, total)
	}
	stop()
	<-done
	return out, s
}

// TestAsyncScheduling serves the same requests with the next step
// prepared while the last one runs (AsyncScheduling) and without, on the
// CPU, whose kernels give each row the same bits whatever the batch: every
// request's tokens and finish must be the same, including requests that
// stop on a token (a step prepared ahead already holds them: their extra
// row's output must be dropped and their sequence closed after it),
// requests cancelled mid-generation, seeded sampling, prompts chunked over
// steps next to decodes, and a pool small enough to preempt.
func TestAsyncScheduling(t *testing.T) {
	m := tinyModel(t)
	rng := rand.New(rand.NewPCG(3, 4))
	v := m.Config.VocabSize
	prompt := func(n int) []int32 {
		p := make([]int32, n)
		for i := range p {
			p[i] = int32(3 + rng.IntN(v-10))
		}
		return p
	}
	// Greedy continuations, to pick stop tokens that do occur.
	type spec struct {
		prompt    []int32
		max       int
		stopAt    int // stop on the token greedy makes at this index (-1: none)
		temp      float32
		seed      uint64
		cancelAt  int // cancel after this many tokens (0: never)
		logprobs  int
		minTokens int
	}
	greedy := func(p []int32, n int) []int32 {
		seq := slices.Clone(p)
		for range n {
			lg, err := m.Reference(context.Background(), seq)
			if err != nil {
				t.Fatal(err)
			}
			last := lg[(len(seq)-1)*v:]
			seq = append(seq, int32(slices.Index(last, slices.Max(last))))
		}
		return seq[len(p):]
	}
	// grow: short prompts and long generations, so that a small pool
	// runs out as they grow and preempts (as e2e's TestPreemption).
	build := func(grow bool) []spec {
		var specs []spec
		for i := range 14 {
			sp := spec{prompt: prompt(2 + i*7), max: 6 + i%4*5, stopAt: -1, logprobs: -1}
			if grow {
				sp.prompt, sp.max = prompt(3+i), 40+i
			}
			switch i % 5 {
			case 1:
				sp.stopAt = 1 + i%3
			case 2:
				sp.temp, sp.seed = 0.9, uint64(100+i)
			case 3:
				sp.cancelAt = 3
			case 4:
				sp.logprobs, sp.stopAt, sp.minTokens = 2, 0, 2 // the stop token suppressed until 2 tokens
			}
			specs = append(specs, sp)
		}
		// Each stopping request stops on the token greedy makes at index
		// stopAt (a request with min_tokens on its own first token, which
		// is suppressed until then: both runs must agree either way).
		for i := range specs {
			if specs[i].stopAt >= 0 {
				specs[i].stopAt = int(greedy(specs[i].prompt, specs[i].stopAt+1)[specs[i].stopAt])
			}
		}
		return specs
	}
	mk := func(specs []spec) ([]*Request, []int, []context.CancelFunc) {
		var reqs []*Request
		cancelAfter := make([]int, len(specs))
		cancels := make([]context.CancelFunc, len(specs))
		for i, sp := range specs {
			ctx, cancel := context.WithCancel(context.Background())
			cancels[i], cancelAfter[i] = cancel, sp.cancelAt
			p := Params{MaxTokens: sp.max, IgnoreEOS: sp.stopAt < 0, Logprobs: sp.logprobs, MinTokens: sp.minTokens}
			if sp.stopAt >= 0 {
				p.StopTokens = []int32{int32(sp.stopAt)}
			}
			p.Sampling.Temperature = sp.temp
			if sp.temp > 0 {
				seed := sp.seed
				p.Sampling.Seed = &seed
			}
			reqs = append(reqs, &Request{Prompt: sp.prompt, Params: p, Ctx: ctx})
		}
		return reqs, cancelAfter, cancels
	}
	for _, tc := range []struct {
		name   string
		blocks int
		chunk  int
		grow   bool
	}{
		{"roomy pool", 4096, 64, false},
		{"chunked prompts", 4096, 24, false},
		{"preempting pool", 39, 64, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			specs := build(tc.grow)
			var runs [2][]served
			for k, async := range []bool{false, true} {
				reqs, cancelAfter, cancels := mk(specs)
				cfg := Config{MaxNumSeqs: 8, MaxBatchTokens: tc.chunk, ChunkedPrefill: true, MaxModelLen: 512, MaxQueue: 64, AsyncScheduling: async}
				var s *Scheduler
				runs[k], s = serveAll(t, m, nil, cfg, tc.blocks, reqs, cancelAfter, cancels)
				t.Logf("async %v: %d steps run as prepared ahead, %d rows of finished requests dropped, %d preemptions", async, s.ranAhead, s.ghosts, s.preempted)
				if async && (s.ranAhead == 0 || s.ghosts == 0) || !async && s.ranAhead+s.ghosts > 0 {
					t.Errorf("async %v: %d steps run as prepared ahead, %d dropped rows", async, s.ranAhead, s.ghosts)
				}
				if tc.blocks < 100 && s.preempted == 0 {
					t.Errorf("async %v: the small pool preempted nothing", async)
				}
				for _, c := range cancels {
					c()
				}
			}
			for i, sp := range specs {
				a, b := runs[0][i], runs[1][i]
				if sp.cancelAt > 0 {
					// Where a cancel lands is timing; both must end aborted
					// and agree on what they made.
					n := min(len(a.tokens), len(b.tokens))
					if !slices.Equal(a.tokens[:n], b.tokens[:n]) || a.finish != FinishAbort || b.finish != FinishAbort {
						t.Errorf("request %d (cancelled): sync %v (%q), async %v (%q)", i, a.tokens, a.finish, b.tokens, b.finish)
					}
					continue
				}
				if !slices.Equal(a.tokens, b.tokens) || a.finish != b.finish || fmt.Sprint(a.err) != fmt.Sprint(b.err) {
					t.Errorf("request %d: sync %v (%q, %v), async %v (%q, %v)", i, a.tokens, a.finish, a.err, b.tokens, b.finish, b.err)
				}
				if sp.stopAt >= 0 && sp.minTokens == 0 && (b.finish != FinishStop || b.tokens[len(b.tokens)-1] != int32(sp.stopAt)) {
					t.Errorf("request %d: should stop on token %d, got %v (%q)", i, sp.stopAt, b.tokens, b.finish)
				}
			}
		})
	}
}

// TestAsyncOffWhereEvicting: over a model whose layers evict between steps
// (the seed's sparse preset) async scheduling cannot run: the requests
// still complete, and the scheduler says once why it is off, at info level
// where it is the default and as a warning where it was asked for.
func TestAsyncOffWhereEvicting(t *testing.T) {
	m := tinyModel(t)
	spec, err := policy.FromFlags("", 1, 48, m.Config.NumLayers)
	if err != nil {
		t.Fatal(err)
	}
	for _, defaulted := range []bool{true, false} {
		var logs bytes.Buffer // slog's handler serializes the writes; read once the scheduler has stopped
		cfg := Config{MaxNumSeqs: 4, MaxBatchTokens: 64, MaxModelLen: 512, MaxQueue: 8, AsyncScheduling: true, AsyncDefault: defaulted,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))}
		var reqs []*Request
		for i := range 2 {
			reqs = append(reqs, &Request{Prompt: []int32{5, 17, int32(99 + i), 3, 250, 7, 8, 9}, Params: Params{MaxTokens: 40, IgnoreEOS: true}, Ctx: context.Background()})
		}
		out, s := serveAll(t, m, spec, cfg, 1024, reqs, make([]int, len(reqs)), make([]context.CancelFunc, len(reqs)))
		for i, o := range out {
			if o.err != nil || len(o.tokens) != 40 || o.finish != "length" {
				t.Errorf("request %d: %d tokens, finish %q, error %v; want 40, length", i, len(o.tokens), o.finish, o.err)
			}
		}
		if s.ranAhead != 0 {
			t.Errorf("defaulted %v: %d steps ran ahead over the sparse preset %v", defaulted, s.ranAhead, spec)
		}
		want := "level=WARN"
		if defaulted {
			want = "level=INFO"
		}
		if n := strings.Count(logs.String(), "async scheduling is off"); n != 1 || !strings.Contains(logs.String(), want+` msg="async scheduling is off`) {
			t.Errorf("defaulted %v: want the reason logged once at %s, got:\n%s", defaulted, want, logs.String())
		}
	}
}
