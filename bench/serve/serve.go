package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// client sends completion requests to one server.
type client struct {
	o    options
	http *http.Client
}

func newClient(o options) *client {
	return &client{o: o, http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4096}}}
}

func (c *client) newRequest(ctx context.Context, method, path string, body []byte) *http.Request {
	req, _ := http.NewRequestWithContext(ctx, method, c.o.Base+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if c.o.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.o.APIKey)
	}
	return req
}

// resolveModel checks the server answers and, without -model, takes the
// first model it lists.
func (c *client) resolveModel(ctx context.Context) error {
	resp, err := c.http.Do(c.newRequest(ctx, "GET", "/v1/models", nil))
	if err != nil {
		return fmt.Errorf("cannot reach the server at %s: %v", c.o.Base, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s/v1/models: %d %s", c.o.Base, resp.StatusCode, b)
	}
	var r struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil || len(r.Data) == 0 {
		return fmt.Errorf("%s/v1/models lists no model", c.o.Base)
	}
	if c.o.Model == "" {
		c.o.Model = r.Data[0].ID
	}
	return nil
}

// sample is one request's timings.
type sample struct {
	TTFT, E2E time.Duration
	ITL       []time.Duration // between streamed chunks after the first
	Output    int             // tokens generated
	Err       error
}

// complete streams one completion of the prompt.
func (c *client) complete(ctx context.Context, prompt []int) sample {
	body, _ := json.Marshal(map[string]any{
		"model": c.o.Model, "prompt": prompt, "max_tokens": c.o.OutputLen, "ignore_eos": true,
		"temperature": 0, "stream": true, "stream_options": map[string]any{"include_usage": true},
	})
	start := time.Now()
	resp, err := c.http.Do(c.newRequest(ctx, "POST", "/v1/completions", body))
	if err != nil {
		return sample{Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return sample{Err: fmt.Errorf("%d %s", resp.StatusCode, bytes.TrimSpace(b))}
	}
	var s sample
	last, chunks := time.Time{}, 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			break
		}
		var ch struct {
			Choices []json.RawMessage `json:"choices"`
			Usage   *struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			return sample{Err: fmt.Errorf("bad stream chunk %q: %v", data, err)}
		}
		now := time.Now()
		switch {
		case ch.Error != nil:
			return sample{Err: fmt.Errorf("stream error: %s", ch.Error.Message)}
		case ch.Usage != nil && len(ch.Choices) == 0:
			s.Output = ch.Usage.CompletionTokens
		case len(ch.Choices) > 0:
			if chunks == 0 {
				s.TTFT = now.Sub(start)
			} else {
				s.ITL = append(s.ITL, now.Sub(last))
			}
			last = now
			chunks++
		}
	}
	if err := sc.Err(); err != nil {
		return sample{Err: err}
	}
	if chunks == 0 {
		return sample{Err: fmt.Errorf("the stream ended with no tokens")}
	}
	if s.Output == 0 { // a server that sends no usage: count chunks
		s.Output = chunks
	}
	s.E2E = time.Since(start)
	return s
}

// prompts draws n prompts of random token ids.
func prompts(o options, n int) [][]int {
	rng := rand.New(rand.NewPCG(o.Seed, 0x7365727665))
	out := make([][]int, n)
	for i := range out {
		p := make([]int, o.InputLen)
		for j := range p {
			p[j] = 100 + rng.IntN(o.Vocab-100)
		}
		out[i] = p
	}
	return out
}

// run warms up, then sends o.NumPrompts requests and reports.
func run(ctx context.Context, c *client, o options) (*report, error) {
	o.Model = c.o.Model
	c.o = o
	ps := prompts(o, o.Warmup+o.NumPrompts)
	for _, p := range ps[:o.Warmup] {
		if s := c.complete(ctx, p); s.Err != nil {
			return nil, fmt.Errorf("warm-up request: %v", s.Err)
		}
	}
	ps = ps[o.Warmup:]
	samples := make([]sample, len(ps))
	start := time.Now()
	var wg sync.WaitGroup
	if o.Rate == 0 {
		next := make(chan int)
		for range o.Concurrency {
			wg.Go(func() {
				for i := range next {
					samples[i] = c.complete(ctx, ps[i])
				}
			})
		}
		for i := range ps {
			next <- i
		}
		close(next)
	} else {
		// Poisson arrivals: exponential gaps, as vLLM's --request-rate.
		rng := rand.New(rand.NewPCG(o.Seed, 0x61727269))
		var slots chan struct{}
		if o.Concurrency > 0 {
			slots = make(chan struct{}, o.Concurrency)
		}
		at := start
		for i := range ps {
			at = at.Add(time.Duration(rng.ExpFloat64() / o.Rate * float64(time.Second)))
			time.Sleep(time.Until(at))
			if slots != nil {
				slots <- struct{}{}
			}
			wg.Go(func() {
				samples[i] = c.complete(ctx, ps[i])
				if slots != nil {
					<-slots
				}
			})
		}
	}
	wg.Wait()
	return summarize(o, samples, time.Since(start)), nil
}

// dist is a distribution's summary in milliseconds.
type dist struct {
	Mean, P50, P90, P99 float64
}

func summarizeDist(xs []float64) dist {
	if len(xs) == 0 {
		return dist{math.NaN(), math.NaN(), math.NaN(), math.NaN()}
	}
	sort.Float64s(xs)
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return dist{sum / float64(len(xs)), percentile(xs, 50), percentile(xs, 90), percentile(xs, 99)}
}

// percentile of sorted xs, interpolating linearly between ranks (numpy's
// default, which vLLM's benchmark uses).
func percentile(xs []float64, p float64) float64 {
	r := p / 100 * float64(len(xs)-1)
	lo := int(math.Floor(r))
	if lo+1 >= len(xs) {
		return xs[len(xs)-1]
	}
	return xs[lo] + (r-float64(lo))*(xs[lo+1]-xs[lo])
}

// report is one benchmark's result.
type report struct {
	Model               string
	Concurrency         int
	Rate                float64 // requests/s; 0: closed loop
	InputLen, OutputLen int
	Completed, Failed   int
	FirstError          string `json:",omitempty"`
	Seconds             float64
	RequestsPerSec      float64
	OutputTokensPerSec  float64
	TotalTokensPerSec   float64
	TTFT, TPOT, ITL     dist // ms
	E2E                 dist // ms
}

func summarize(o options, samples []sample, took time.Duration) *report {
	r := &report{Model: o.Model, Concurrency: o.Concurrency, Rate: o.Rate, InputLen: o.InputLen, OutputLen: o.OutputLen, Seconds: took.Seconds()}
	var ttft, tpot, itl, e2e []float64
	out := 0
	for _, s := range samples {
		if s.Err != nil {
			r.Failed++
			if r.FirstError == "" {
				r.FirstError = s.Err.Error()
			}
			continue
		}
		r.Completed++
		out += s.Output
		ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
		ttft, e2e = append(ttft, ms(s.TTFT)), append(e2e, ms(s.E2E))
		if s.Output > 1 {
			tpot = append(tpot, ms(s.E2E-s.TTFT)/float64(s.Output-1))
		}
		for _, d := range s.ITL {
			itl = append(itl, ms(d))
		}
	}
	r.RequestsPerSec = float64(r.Completed) / r.Seconds
	r.OutputTokensPerSec = float64(out) / r.Seconds
	r.TotalTokensPerSec = float64(out+r.Completed*o.InputLen) / r.Seconds
	r.TTFT, r.TPOT, r.ITL, r.E2E = summarizeDist(ttft), summarizeDist(tpot), summarizeDist(itl), summarizeDist(e2e)
	return r
}

func (r *report) load() string {
	if r.Rate > 0 {
		return fmt.Sprintf("Poisson %.2f req/s", r.Rate)
	}
	return fmt.Sprintf("concurrency %d", r.Concurrency)
}

// String is the report in the shape of vLLM's serving benchmark.
func (r *report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "============ Serving Benchmark Result ============\n")
	row := func(k string, v any) { fmt.Fprintf(&b, "%-40s %v\n", k+":", v) }
	row("Model", r.Model)
	row("Load", r.load())
	row("Input / output tokens per request", fmt.Sprintf("%d / %d", r.InputLen, r.OutputLen))
	row("Successful requests", r.Completed)
	row("Failed requests", r.Failed)
	if r.FirstError != "" {
		row("First error", r.FirstError)
	}
	row("Benchmark duration (s)", fmt.Sprintf("%.2f", r.Seconds))
	row("Request throughput (req/s)", fmt.Sprintf("%.2f", r.RequestsPerSec))
	row("Output token throughput (tok/s)", fmt.Sprintf("%.2f", r.OutputTokensPerSec))
	row("Total token throughput (tok/s)", fmt.Sprintf("%.2f", r.TotalTokensPerSec))
	for _, d := range []struct {
		name string
		d    dist
	}{{"Time to First Token", r.TTFT}, {"Time per Output Token (excl. 1st token)", r.TPOT}, {"Inter-token Latency", r.ITL}, {"End-to-end Latency", r.E2E}} {
		fmt.Fprintf(&b, "%s\n", centre(d.name))
		row("Mean (ms)", fmt.Sprintf("%.2f", d.d.Mean))
		row("Median (ms)", fmt.Sprintf("%.2f", d.d.P50))
		row("P90 (ms)", fmt.Sprintf("%.2f", d.d.P90))
		row("P99 (ms)", fmt.Sprintf("%.2f", d.d.P99))
	}
	b.WriteString(strings.Repeat("=", 50) + "\n")
	return b.String()
}

func centre(s string) string {
	pad := max(0, 50-len(s)-2)
	return strings.Repeat("-", pad/2) + " " + s + " " + strings.Repeat("-", pad-pad/2)
}

// line is a one-line summary for -search.
func (r *report) line() string {
	return fmt.Sprintf("%-16s %8.1f out tok/s  %6.2f req/s  TTFT p50 %8.1f p99 %8.1f ms  TPOT p50 %7.2f ms  failed %d",
		r.load(), r.OutputTokensPerSec, r.RequestsPerSec, r.TTFT.P50, r.TTFT.P99, r.TPOT.P50, r.Failed)
}

// searchConcurrency doubles the concurrency from 1 while every request
// succeeds and p99 TTFT stays within bound, and returns the level with the
// most output tokens/s (nil if even 1 missed the bound) and every level's
// report. Each level sends at least twice its concurrency of requests.
func searchConcurrency(ctx context.Context, c *client, o options, bound time.Duration, maxConc int, each func(*report)) (*report, []*report, error) {
	var best *report
	var all []*report
	for conc := 1; conc <= maxConc; conc *= 2 {
		lo := o
		lo.Rate, lo.Concurrency, lo.NumPrompts = 0, conc, max(o.NumPrompts, 2*conc)
		if conc > 1 {
			lo.Warmup = 0
		}
		r, err := run(ctx, c, lo)
		if err != nil {
			return nil, all, err
		}
		all = append(all, r)
		each(r)
		if r.Failed > 0 || r.TTFT.P99 > float64(bound)/1e6 {
			break
		}
		if best == nil || r.OutputTokensPerSec > best.OutputTokensPerSec {
			best = r
		}
	}
	return best, all, nil
}
