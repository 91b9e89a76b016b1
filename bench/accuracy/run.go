package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// server is a running OpenAI-compatible server under test.
type server struct {
	base     string
	model    string    // sent as "model" when set (-server: the first of /v1/models)
	cmd      *exec.Cmd // nil for a server the harness did not start
	stopOnce sync.Once
	// echoScore is set once the server has answered /v1/kvd/score with 404
	// (vLLM, ollama, ...): scoring then uses echoed prompt log-probabilities.
	echoScore atomic.Bool
}

// httpError is a non-200 answer.
type httpError struct {
	path   string
	status int
	body   string
}

func (e *httpError) Error() string { return fmt.Sprintf("%s: %d %s", e.path, e.status, e.body) }

// firstModel asks the server which model it serves.
func (s *server) firstModel(ctx context.Context) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", s.base+"/v1/models", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var r struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || len(r.Data) == 0 {
		return "", fmt.Errorf("/v1/models: no model listed (%v)", err)
	}
	return r.Data[0].ID, nil
}

// startGateway runs `gateway --embedded` with c's KV policy and dtype on a
// free port. device, if set, is its --device; threads > 0 sets its
// GOMAXPROCS.
func startGateway(bin, model string, c config, kvMemory, device string, threads int, logs io.Writer) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	args := []string{"--model", model, "--embedded", "--kv-memory", kvMemory, "--listen", addr, "--log-level", "warn"}
	if c.Policy != "" {
		args = append(args, "--kv-policy", c.Policy)
	}
	kvType := c.KVType
	if kvType == "" {
		kvType = "float32" // the tables' reference, whatever the device's auto is
	}
	args = append(args, "--kv-cache-dtype", kvType)
	if device != "" {
		args = append(args, "--device", device)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if threads > 0 {
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(threads))
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{base: "http://" + addr, cmd: cmd}
	started.add(s)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(s.base + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.stop()
	return nil, fmt.Errorf("gateway for %q (policy %q, KV dtype %q) did not come up", c.Name, c.Policy, kvType)
}

// stop interrupts a gateway the harness started and waits for it to exit
// (killing it after stopWait).
func (s *server) stop() {
	if s.cmd == nil {
		return
	}
	s.stopOnce.Do(func() {
		started.remove(s)
		s.cmd.Process.Signal(os.Interrupt)
		exited := make(chan struct{})
		go func() { s.cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(stopWait):
			s.cmd.Process.Kill()
			<-exited
		}
	})
}

const stopWait = 10 * time.Second

// started holds the gateways the harness started and has not stopped, so
// that a harness about to die (a signal, an error) stops them first: a
// signal sent to the harness alone, as timeout sends it, does not reach
// them, and they would go on holding their memory (a GPU's, in a device
// call) after the harness is gone.
var started = &servers{m: map[*server]bool{}}

type servers struct {
	mu sync.Mutex
	m  map[*server]bool
}

func (ss *servers) add(s *server) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.m[s] = true
}

func (ss *servers) remove(s *server) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, s)
}

// stopAll stops every gateway still running.
func (ss *servers) stopAll() {
	ss.mu.Lock()
	all := make([]*server, 0, len(ss.m))
	for s := range ss.m {
		all = append(all, s)
	}
	ss.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Go(s.stop)
	}
	wg.Wait()
}

func (s *server) post(ctx context.Context, path string, body map[string]any, out any) error {
	if s.model != "" {
		body["model"] = s.model
	}
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, "POST", s.base+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return &httpError{path, resp.StatusCode, string(data)}
	}
	return json.Unmarshal(data, out)
}

// complete asks for a greedy completion that stops at the end of a line.
func (s *server) complete(ctx context.Context, prompt string, maxTokens int) (string, error) {
	var r struct {
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
	}
	err := s.post(ctx, "/v1/completions", map[string]any{
		"prompt": prompt, "max_tokens": maxTokens, "temperature": 0, "stop": []string{"\n"},
	}, &r)
	if err != nil || len(r.Choices) == 0 {
		return "", err
	}
	return r.Choices[0].Text, nil
}

// score returns the continuation's mean log-probability per token through
// kvd's /v1/kvd/score extension, or, from a server without it, from echoed
// prompt log-probabilities (exact attention: what such a server's full KV
// gives).
func (s *server) score(ctx context.Context, prompt, cont []int32) (float64, error) {
	if !s.echoScore.Load() {
		var r struct {
			Mean float64 `json:"mean_logprob"`
		}
		err := s.post(ctx, "/v1/kvd/score", map[string]any{"prompt": prompt, "continuation": cont}, &r)
		var he *httpError
		if !errors.As(err, &he) || he.status != http.StatusNotFound {
			return r.Mean, err
		}
		if !s.echoScore.Swap(true) {
			log.Printf("%s has no /v1/kvd/score: scoring with echoed prompt log-probabilities", s.base)
		}
	}
	return s.scoreEcho(ctx, prompt, cont)
}

// scoreEcho scores cont after prompt with one completion request that
// echoes the prompt's log-probabilities (as lm-evaluation-harness does).
func (s *server) scoreEcho(ctx context.Context, prompt, cont []int32) (float64, error) {
	var r struct {
		Choices []struct {
			Logprobs struct {
				TokenLogprobs []*float64 `json:"token_logprobs"`
			} `json:"logprobs"`
		} `json:"choices"`
	}
	all := append(append([]int32(nil), prompt...), cont...)
	err := s.post(ctx, "/v1/completions", map[string]any{
		"prompt": all, "max_tokens": 1, "temperature": 0, "echo": true, "logprobs": 1,
	}, &r)
	if err != nil {
		return 0, err
	}
	if len(r.Choices) == 0 || len(r.Choices[0].Logprobs.TokenLogprobs) < len(all) {
		return 0, fmt.Errorf("/v1/completions with echo: no log-probabilities for the %d prompt tokens", len(all))
	}
	var sum float64
	for i, lp := range r.Choices[0].Logprobs.TokenLogprobs[len(prompt):len(all)] {
		if lp == nil {
			return 0, fmt.Errorf("/v1/completions with echo: no log-probability for continuation token %d", i)
		}
		sum += *lp
	}
	return sum / float64(len(cont)), nil
}

// result is one configuration's per-task scores, one value per sample.
type result map[string][]float64

// metric names.
func esKey(task string) string { return task + " edit-sim" }
func emKey(task string) string { return task + " exact" }

const (
	loglikKey = "loglik mean-logprob"
	keyKey    = "retrieval-key mean-logprob"
)

// runSamples runs samples against s, up to concurrency of them at once
// (the server batches them, as it would its users' requests), adding their
// scores to r in sample order per metric, so that configurations pair
// sample by sample, and calling done after each in that order.
func runSamples(ctx context.Context, s *server, samples []Sample, r result, concurrency int, done func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	outs := make([]chan scored, len(samples))
	for i := range outs {
		outs[i] = make(chan scored, 1) // a sample's goroutine never blocks
	}
	go func() {
		sem := make(chan struct{}, max(1, concurrency))
		for i, smp := range samples {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			go func() {
				defer func() { <-sem }()
				outs[i] <- runSample(ctx, s, smp)
			}()
		}
	}()
	for i := range samples {
		var sc scored
		select {
		case sc = <-outs[i]:
		case <-ctx.Done():
			return ctx.Err()
		}
		if sc.err != nil {
			return sc.err
		}
		for j, k := range sc.keys {
			r[k] = append(r[k], sc.vals[j])
		}
		if done != nil {
			done()
		}
	}
	return nil
}

// scored is one sample's scores, metric by metric.
type scored struct {
	keys []string
	vals []float64
	err  error
}

func (sc *scored) add(k string, v float64) {
	sc.keys, sc.vals = append(sc.keys, k), append(sc.vals, v)
}

func runSample(ctx context.Context, s *server, smp Sample) (sc scored) {
	switch {
	case strings.HasPrefix(smp.Task, taskLine):
		got, err := s.complete(ctx, smp.Prompt, genRoom)
		if err != nil {
			return scored{err: err}
		}
		sc.add(esKey(smp.Task), editSimilarity(got, smp.Target))
		sc.add(emKey(smp.Task), b2f(strings.TrimSpace(got) == smp.Target))
	case smp.Task == taskRetrieval:
		got, err := s.complete(ctx, smp.Prompt, 8)
		if err != nil {
			return scored{err: err}
		}
		sc.add(emKey(smp.Task), b2f(strings.HasPrefix(got, smp.Target)))
	case smp.Task == taskLoglik || smp.Task == taskKey:
		m, err := s.score(ctx, smp.PromptIDs, smp.Continuation)
		if err != nil {
			return scored{err: err}
		}
		k := loglikKey
		if smp.Task == taskKey {
			k = keyKey
		}
		sc.add(k, m)
	}
	return sc
}

// clone deep-copies r.
func (r result) clone() result {
	c := make(result, len(r))
	for k, v := range r {
		c[k] = append([]float64(nil), v...)
	}
	return c
}

func b2f(b bool) float64 {
	if b {
		return 100
	}
	return 0
}

// relative is a configuration's score on a metric relative to full KV's,
// with a 95% confidence half-width from the per-sample paired differences
// (both ran the same samples, so what varies between samples cancels): a
// ratio of means, and for log-likelihoods the ratio of perplexities (full's
// over the configuration's), so 1 is "as good as full" everywhere.
func relative(metric string, cfg, full []float64) (rel, ci float64) {
	// Samples run in the same order everywhere, so a configuration cut off
	// part-way pairs with full KV's first samples.
	n := min(len(cfg), len(full))
	if n == 0 {
		return math.NaN(), math.NaN()
	}
	cfg, full = cfg[:n], full[:n]
	d := make([]float64, len(cfg))
	for i := range cfg {
		d[i] = cfg[i] - full[i]
	}
	diff := summarize(d)
	if strings.HasSuffix(metric, "logprob") {
		r := math.Exp(diff.Mean)
		return r, r * diff.CI // the delta method: d exp(x) = exp(x) dx
	}
	f := summarize(full).Mean
	if f == 0 {
		return math.NaN(), math.NaN()
	}
	return 1 + diff.Mean/f, diff.CI / f
}
