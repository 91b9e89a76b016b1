// Command accuracy measures what KV sparsity costs in accuracy, as an HTTP
// client of an OpenAI-compatible server (plus kvd's /v1/kvd/score for the
// log-likelihood task). Tasks run on Go source the bundled model never saw
// (its held-out packages, and the Go modules this repository depends on):
//
//   - line-L: the next line after an L-token prefix, greedy, scored by edit
//     similarity and exact match (LongBench's lcc);
//   - retrieval: a constant defined at the top of a long file, asked for at
//     its end (exact match);
//   - loglik: the last 256 tokens of a file of the longest length, fed
//     token by token through decode after the (compressed) prefill, as mean
//     log-probability per token.
//
// Make the samples once (on a machine with Go), then run them against every
// policy, each in its own `gateway --embedded --kv-policy ...`:
//
//	go run ./bench/accuracy -make-samples bench/accuracy/samples.json
//	go run ./bench/accuracy -samples bench/accuracy/samples.json -out bench/results/accuracy-cpu.md
//
// or against any running server with -server URL (one configuration).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kvd-project/kvd/bench/machine"
	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/tokenizer"
)

// config is one KV setting under test.
type config struct {
	Name   string
	Policy string // kvd policy spec; "" is full KV
	Layers int    // sparse layers (the seed's grid), 0 otherwise
	Window int
	Kind   string // "full", "grid" or "policy"
}

// defaultConfigs is full KV, the seed's grid (its 22, 26 and 31 of 32
// sparse layers, scaled to the model's depth, at windows of 1024, 1280 and
// 1536) and the five policies at an equal budget of 1024 on the middle
// row's layers.
func defaultConfigs(layers int) []config {
	cs := []config{{Name: "full", Kind: "full"}}
	seen := map[int]bool{}
	var rows []int
	for _, of32 := range []int{22, 26, 31} {
		n := min(layers, max(1, (of32*layers+16)/32))
		if !seen[n] {
			seen[n] = true
			rows = append(rows, n)
		}
	}
	for _, n := range rows {
		for _, w := range []int{1024, 1280, 1536} {
			cs = append(cs, config{Name: fmt.Sprintf("%d sparse layers, window %d", n, w),
				Policy: fmt.Sprintf("%d-%d=snapkv:budget=%d/h2o:recent=32", layers-n, layers-1, w), Layers: n, Window: w, Kind: "grid"})
		}
	}
	n := rows[len(rows)/2]
	r := fmt.Sprintf("%d-%d", layers-n, layers-1)
	const b = 1024
	for _, p := range []struct{ name, spec string }{
		{"window", fmt.Sprintf("%s=window:sinks=4,window=%d", r, b-4)},
		{"snapkv", fmt.Sprintf("%s=snapkv:budget=%d", r, b)},
		{"pyramid", fmt.Sprintf("%s=pyramid:budget=%d", r, b)},
		{"h2o", fmt.Sprintf("%s=full/h2o:heavy=%d,recent=32", r, b-32)},
		{"snapkv+h2o", fmt.Sprintf("%s=snapkv:budget=%d/h2o:recent=32", r, b)},
	} {
		cs = append(cs, config{Name: p.name, Policy: p.spec, Layers: n, Window: b, Kind: "policy"})
	}
	return cs
}

func main() {
	modelDir := flag.String("model", "models/kvd-go-28m", "the model directory (its split.json names the held-out packages)")
	mk := flag.String("make-samples", "", "write a sample set to this file and exit")
	n := flag.Int("n", 8, "samples per task")
	seed := flag.Uint64("seed", 1, "sample seed")
	lengths := flag.String("lengths", "2048,4096", "prefix lengths in tokens for next-line completion; the last is also retrieval's and loglik's")
	samplesFile := flag.String("samples", "", "the sample set to run")
	gw := flag.String("gateway", "bin/gateway", "gateway binary (started once per configuration)")
	srv := flag.String("server", "", "run against this server instead (one configuration)")
	only := flag.String("only", "", "run only configurations whose name contains this")
	kvMem := flag.String("kv-memory", "2GiB", "each gateway's KV pool")
	out := flag.String("out", "", "also write the results (markdown) here")
	rawOut := flag.String("raw-out", "", "also write the raw per-sample scores (JSON) here, for -merge")
	merge := flag.String("merge", "", "render the table from these comma-separated -raw-out files instead of running")
	flag.Parse()
	log.SetFlags(0)
	if *mk != "" {
		if err := writeSamples(*mk, *modelDir, *lengths, *n, *seed); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *samplesFile == "" {
		log.Fatal("give -make-samples FILE to draw samples, or -samples FILE to run them")
	}
	var set SampleSet
	b, err := os.ReadFile(*samplesFile)
	if err != nil {
		log.Fatal(err)
	}
	if err := json.Unmarshal(b, &set); err != nil {
		log.Fatal(err)
	}
	cfg, err := model.LoadConfig(*modelDir)
	if err != nil {
		log.Fatal(err)
	}
	configs := defaultConfigs(cfg.NumLayers)
	if *merge != "" {
		run := rawRun{Results: map[string]result{}}
		for _, f := range strings.Split(*merge, ",") {
			var r rawRun
			b, err := os.ReadFile(f)
			if err == nil {
				err = json.Unmarshal(b, &r)
			}
			if err != nil {
				log.Fatalf("%s: %v", f, err)
			}
			for k, v := range r.Results {
				run.Results[k] = v
			}
			run.CPU, run.Threads = r.CPU, r.Threads
			run.Elapsed = append(run.Elapsed, r.Elapsed...)
		}
		report := render(set, configs, run, *modelDir)
		fmt.Print(report)
		if *out != "" {
			if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
				log.Fatal(err)
			}
		}
		return
	}
	if *srv != "" {
		configs = []config{{Name: "server", Kind: "full"}}
	}
	ctx := context.Background()
	results := map[string]result{}
	var elapsed []string
	for _, c := range configs {
		if !strings.Contains(c.Name, *only) && c.Kind != "full" {
			continue
		}
		start := time.Now()
		var s *server
		if *srv != "" {
			s = &server{base: strings.TrimSuffix(*srv, "/")}
		} else if s, err = startGateway(*gw, *modelDir, c.Policy, *kvMem, io.Discard); err != nil {
			log.Fatal(err)
		}
		r, err := runSamples(ctx, s, set.Samples, func(i int) {
			fmt.Fprintf(os.Stderr, "\r%-32s %d/%d", c.Name, i, len(set.Samples))
		})
		s.stop()
		if err != nil {
			log.Fatalf("%s: %v", c.Name, err)
		}
		results[c.Name] = r
		elapsed = append(elapsed, fmt.Sprintf("%s %.0fs", c.Name, time.Since(start).Seconds()))
		fmt.Fprintln(os.Stderr)
	}
	run := rawRun{CPU: machine.CPUName(), Threads: runtime.GOMAXPROCS(0), Elapsed: elapsed, Results: results}
	if *rawOut != "" {
		b, _ := json.Marshal(run)
		if err := os.WriteFile(*rawOut, b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
	report := render(set, configs, run, *modelDir)
	fmt.Print(report)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

func writeSamples(path, modelDir, lengthList string, n int, seed uint64) error {
	var lengths []int
	for _, f := range strings.Split(lengthList, ",") {
		l, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || l < 2*genRoom {
			return fmt.Errorf("-lengths: %q", f)
		}
		lengths = append(lengths, l)
	}
	sort.Ints(lengths)
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		return err
	}
	files, err := heldoutSources(modelDir)
	if err != nil {
		return err
	}
	samples, err := makeSamples(tok, files, lengths, n, seed)
	if err != nil {
		return err
	}
	set := SampleSet{Model: modelDir, Seed: seed, Lengths: lengths, Samples: samples}
	for _, s := range samples {
		set.Sources = append(set.Sources, s.Source)
	}
	b, err := json.MarshalIndent(set, "", " ")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "%d samples from %d candidate files\n", len(samples), len(files))
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// rawRun is one run's scores and where they were measured.
type rawRun struct {
	CPU     string            `json:"cpu"`
	Threads int               `json:"threads"`
	Elapsed []string          `json:"elapsed"`
	Results map[string]result `json:"results"`
}

// render prints full KV's absolute scores, then every metric in the seed's
// shape (rows: sparse layers, columns: windows, cells: relative to full),
// then the policies at equal budget.
func render(set SampleSet, configs []config, run rawRun, modelDir string) string {
	results, elapsed := run.Results, run.Elapsed
	var b strings.Builder
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	full := results["full"]
	if full == nil {
		full = results["server"]
	}
	var metrics []string
	for m := range full {
		metrics = append(metrics, m)
	}
	sort.Strings(metrics)
	fmt.Fprintf(&b, "# KV sparsity accuracy: %s\n\n", modelDir)
	fmt.Fprintf(&b, "Commit %s, %s, CPU backend (%s, %d threads), %d samples (seed %d, lengths %v).\n",
		strings.TrimSpace(string(commit)), time.Now().Format("2006-01-02"), run.CPU, run.Threads, len(set.Samples), set.Seed, set.Lengths)
	fmt.Fprintf(&b, "± is a 95%% confidence half-width (1.96 standard errors over samples).\n\n## Full KV\n\n| metric | score |\n| --- | --- |\n")
	for _, m := range metrics {
		s := summarize(full[m])
		fmt.Fprintf(&b, "| %s | %.3f ± %.3f (n=%d) |\n", m, s.Mean, s.CI, s.N)
	}
	var grid, pols []config
	for _, c := range configs {
		if results[c.Name] == nil {
			continue
		}
		switch c.Kind {
		case "grid":
			grid = append(grid, c)
		case "policy":
			pols = append(pols, c)
		}
	}
	if len(grid) > 0 {
		fmt.Fprintf(&b, "\n## The seed's grid, relative to full KV (1.00 = as good)\n")
		var rows, cols []int
		for _, c := range grid {
			if !contains(rows, c.Layers) {
				rows = append(rows, c.Layers)
			}
			if !contains(cols, c.Window) {
				cols = append(cols, c.Window)
			}
		}
		for _, m := range metrics {
			fmt.Fprintf(&b, "\n%s\n\n| sparse layers |", m)
			for _, w := range cols {
				fmt.Fprintf(&b, " window %d |", w)
			}
			fmt.Fprintf(&b, "\n|---|%s\n", strings.Repeat("---|", len(cols)))
			for _, n := range rows {
				fmt.Fprintf(&b, "| %d |", n)
				for _, w := range cols {
					cell := "-"
					for _, c := range grid {
						if c.Layers == n && c.Window == w {
							cell = fmt.Sprintf("%.3f", relative(m, summarize(results[c.Name][m]), summarize(full[m])))
						}
					}
					fmt.Fprintf(&b, " %s |", cell)
				}
				b.WriteString("\n")
			}
		}
	}
	if len(pols) > 0 {
		fmt.Fprintf(&b, "\n## Policies at an equal budget of %d tokens on %d layers, relative to full KV\n\n| policy |", pols[0].Window, pols[0].Layers)
		for _, m := range metrics {
			fmt.Fprintf(&b, " %s |", m)
		}
		fmt.Fprintf(&b, "\n|---|%s\n", strings.Repeat("---|", len(metrics)))
		for _, c := range pols {
			fmt.Fprintf(&b, "| %s |", c.Name)
			for _, m := range metrics {
				fmt.Fprintf(&b, " %.3f |", relative(m, summarize(results[c.Name][m]), summarize(full[m])))
			}
			b.WriteString("\n")
		}
	}
	fmt.Fprintf(&b, "\nTime per configuration: %s.\n", strings.Join(elapsed, ", "))
	return b.String()
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
