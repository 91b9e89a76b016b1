package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"
)

// server is a running OpenAI-compatible server under test.
type server struct {
	base string
	cmd  *exec.Cmd // nil for a server the harness did not start
}

// startGateway runs `gateway --embedded` with a KV policy on a free port.
func startGateway(bin, model, policy, kvMemory string, logs io.Writer) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	args := []string{"--model", model, "--embedded", "--kv-memory", kvMemory, "--listen", addr, "--log-level", "warn"}
	if policy != "" {
		args = append(args, "--kv-policy", policy)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{base: "http://" + addr, cmd: cmd}
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
	return nil, fmt.Errorf("gateway with policy %q did not come up", policy)
}

func (s *server) stop() {
	if s.cmd != nil {
		s.cmd.Process.Signal(os.Interrupt)
		s.cmd.Wait()
	}
}

func (s *server) post(ctx context.Context, path string, body any, out any) error {
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
		return fmt.Errorf("%s: %d %s", path, resp.StatusCode, data)
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
// kvd's /v1/kvd/score extension.
func (s *server) score(ctx context.Context, prompt, cont []int32) (float64, error) {
	var r struct {
		Mean float64 `json:"mean_logprob"`
	}
	err := s.post(ctx, "/v1/kvd/score", map[string]any{"prompt": prompt, "continuation": cont}, &r)
	return r.Mean, err
}

// result is one configuration's per-task scores, one value per sample.
type result map[string][]float64

// metric names.
func esKey(task string) string { return task + " edit-sim" }
func emKey(task string) string { return task + " exact" }

const loglikKey = "loglik mean-logprob"

// runSamples runs every sample against s.
func runSamples(ctx context.Context, s *server, samples []Sample, progress func(int)) (result, error) {
	r := result{}
	for i, smp := range samples {
		switch {
		case strings.HasPrefix(smp.Task, taskLine):
			got, err := s.complete(ctx, smp.Prompt, genRoom)
			if err != nil {
				return nil, err
			}
			r[esKey(smp.Task)] = append(r[esKey(smp.Task)], editSimilarity(got, smp.Target))
			r[emKey(smp.Task)] = append(r[emKey(smp.Task)], b2f(strings.TrimSpace(got) == smp.Target))
		case smp.Task == taskRetrieval:
			got, err := s.complete(ctx, smp.Prompt, 8)
			if err != nil {
				return nil, err
			}
			r[emKey(smp.Task)] = append(r[emKey(smp.Task)], b2f(strings.HasPrefix(got, smp.Target)))
		case smp.Task == taskLoglik:
			m, err := s.score(ctx, smp.PromptIDs, smp.Continuation)
			if err != nil {
				return nil, err
			}
			r[loglikKey] = append(r[loglikKey], m)
		}
		if progress != nil {
			progress(i + 1)
		}
	}
	return r, nil
}

func b2f(b bool) float64 {
	if b {
		return 100
	}
	return 0
}

// relative is a configuration's score on a metric relative to full KV's:
// a ratio of means, and for log-likelihood the ratio of perplexities
// (full's over the configuration's), so 1 is "as good as full" everywhere.
func relative(metric string, cfg, full stat) float64 {
	if metric == loglikKey {
		return math.Exp(cfg.Mean - full.Mean)
	}
	if full.Mean == 0 {
		return math.NaN()
	}
	return cfg.Mean / full.Mean
}
