// Command serve is a load generator for an OpenAI-compatible completions
// server, modelled on vLLM's serving benchmark: prompts of random token ids
// with fixed input and output lengths (ignore_eos, so every request
// generates exactly its output length), sent in a closed loop at a fixed
// concurrency or as a Poisson process at a fixed rate, after a warm-up.
// Responses are streamed so that time to first token (TTFT) and time per
// output token (TPOT) are measured per request; the report has throughput
// and their p50/p90/p99.
//
//	go run ./bench/serve -base http://127.0.0.1:8080 -input-len 5000 -output-len 500 -concurrency 32
//	go run ./bench/serve -request-rate 4 -num-prompts 200
//	go run ./bench/serve -search          # the most output tokens/s with p99 TTFT under -ttft-bound
//	go run ./bench/serve -tables DIR      # the seed's tables from tools/gpu/bench.sh's results
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"
)

func main() {
	var o options
	flag.StringVar(&o.Base, "base", "http://127.0.0.1:8080", "the server's base URL")
	flag.StringVar(&o.Model, "model", "", "the model to ask for (default: the first of /v1/models)")
	flag.StringVar(&o.APIKey, "api-key", os.Getenv("OPENAI_API_KEY"), "bearer token, if the server wants one")
	flag.IntVar(&o.InputLen, "input-len", 1024, "prompt tokens per request")
	flag.IntVar(&o.OutputLen, "output-len", 128, "output tokens per request (ignore_eos)")
	flag.IntVar(&o.Vocab, "vocab", 8000, "prompt token ids are drawn from [100, vocab)")
	flag.IntVar(&o.NumPrompts, "num-prompts", 64, "requests measured")
	flag.IntVar(&o.Warmup, "warmup", 2, "requests sent (at concurrency 1) before measuring")
	flag.IntVar(&o.Concurrency, "concurrency", 8, "requests in flight (closed loop); with -request-rate, the most in flight (0: no limit)")
	flag.Float64Var(&o.Rate, "request-rate", 0, "requests per second as a Poisson process (0: closed loop at -concurrency)")
	flag.Uint64Var(&o.Seed, "seed", 0, "seed for prompts and arrival times")
	search := flag.Bool("search", false, "raise the concurrency (1, 2, 4, ...) while p99 TTFT stays under -ttft-bound and report the best")
	bound := flag.Duration("ttft-bound", 2*time.Second, "p99 TTFT bound for -search")
	maxConc := flag.Int("max-concurrency", 256, "where -search stops")
	out := flag.String("out", "", "also write the results (JSON) here")
	tablesDir := flag.String("tables", "", "print the seed's tables from the results tools/gpu/bench.sh left in this directory, and exit")
	flag.Parse()
	log.SetFlags(0)
	if *tablesDir != "" {
		if err := tables(os.Stdout, *tablesDir); err != nil {
			log.Fatal(err)
		}
		return
	}
	if err := o.check(); err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	c := newClient(o)
	if err := c.resolveModel(ctx); err != nil {
		log.Fatal(err)
	}
	var results []*report
	if *search {
		best, all, err := searchConcurrency(ctx, c, o, *bound, *maxConc, func(r *report) { fmt.Println(r.line()) })
		if err != nil {
			log.Fatal(err)
		}
		results = all
		if best == nil {
			fmt.Printf("no concurrency kept p99 TTFT under %v\n", *bound)
		} else {
			fmt.Printf("\nbest under p99 TTFT %v: concurrency %d\n\n%s", *bound, best.Concurrency, best.String())
		}
	} else {
		r, err := run(ctx, c, o)
		if err != nil {
			log.Fatal(err)
		}
		results = []*report{r}
		fmt.Print(r.String())
	}
	if *out != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

// options is one benchmark's workload.
type options struct {
	Base, Model, APIKey string
	InputLen, OutputLen int
	Vocab               int
	NumPrompts, Warmup  int
	Concurrency         int
	Rate                float64
	Seed                uint64
}

func (o *options) check() error {
	o.Base = strings.TrimSuffix(o.Base, "/")
	switch {
	case o.InputLen < 1 || o.OutputLen < 1:
		return fmt.Errorf("-input-len and -output-len must be at least 1")
	case o.Vocab <= 100:
		return fmt.Errorf("-vocab must be above 100 (prompt ids are drawn from [100, vocab))")
	case o.NumPrompts < 1:
		return fmt.Errorf("-num-prompts must be at least 1")
	case o.Warmup < 0:
		return fmt.Errorf("-warmup cannot be negative")
	case o.Rate < 0:
		return fmt.Errorf("-request-rate cannot be negative")
	case o.Rate == 0 && o.Concurrency < 1:
		return fmt.Errorf("-concurrency must be at least 1 in a closed loop")
	}
	return nil
}
