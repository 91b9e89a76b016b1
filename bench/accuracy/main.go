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
//     log-probability per token;
//   - retrieval-key: retrieval at the shortest length measured by
//     likelihood: the definition line is repeated at the end and the
//     value's tokens are scored through the compressed cache (for models,
//     like the bundled one, too weak to answer the exact-match question).
//
// Make the samples once (on a machine with Go; the committed sets are
// bench/accuracy/samples.json, 10 per task, and samples-100.json.gz, 100 per
// task, for the GPU), then run them against every policy, each in its own
// `gateway --embedded --kv-policy ...`:
//
//	go run ./bench/accuracy -make-samples bench/accuracy/samples.json -n 10
//	go run ./bench/accuracy -make-samples /tmp/s.json -n 100 && gzip -9 -c /tmp/s.json >bench/accuracy/samples-100.json.gz
//	go run ./bench/accuracy -samples bench/accuracy/samples.json -out bench/results/accuracy-cpu.md
//
// or against any running server with -server URL (one configuration).
// Scores are saved with -raw-out (at most once a second, when a
// configuration finishes, and when the run is stopped by a signal or an
// error); -resume goes on from such files, and -merge renders the table from several (runs split over
// machines with -configs, which -list numbers).
package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kvd-project/kvd/bench/machine"
	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/tokenizer"
	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/shm"
)

// config is one KV setting under test.
type config struct {
	Name   string
	Policy string // kvd policy spec; "" is full KV
	Layers int    // sparse layers (the seed's grid), 0 otherwise
	Window int
	Kind   string // "full", "grid", "policy" (equal budget) or "custom" (-policy, -kv-cache-dtype-also)
	KVType string // the gateway's --kv-cache-dtype; "": float32
}

// grid is what to measure: the seed's grid (sparse layers × windows) and
// the policies at one equal budget.
type grid struct {
	Rows     []int // sparse layers (the last ones); nil: the seed's 22, 26 and 31 of 32, scaled to the model
	Windows  []int
	Budget   int
	Policies []config // extra named policy specs (-policy)
}

// configs is full KV, the grid's rows × windows (the last N layers SnapKV
// at the window, held there by H2O while decoding: the seed's preset) and
// the five policies at an equal budget on the middle row's layers, then
// any policies given by name.
func (g grid) configs(layers int) []config {
	cs := []config{{Name: "full", Kind: "full"}}
	rows := g.Rows
	if rows == nil {
		seen := map[int]bool{}
		for _, of32 := range []int{22, 26, 31} {
			n := min(layers, max(1, (of32*layers+16)/32))
			if !seen[n] {
				seen[n] = true
				rows = append(rows, n)
			}
		}
	}
	for _, n := range rows {
		for _, w := range g.Windows {
			cs = append(cs, config{Name: fmt.Sprintf("%d sparse layers, window %d", n, w),
				Policy: fmt.Sprintf("%d-%d=snapkv:budget=%d/h2o:recent=32", layers-n, layers-1, w), Layers: n, Window: w, Kind: "grid"})
		}
	}
	if len(rows) > 0 && g.Budget > 0 {
		n := rows[len(rows)/2]
		r := fmt.Sprintf("%d-%d", layers-n, layers-1)
		b := g.Budget
		for _, p := range []struct{ name, spec string }{
			{"window", fmt.Sprintf("%s=window:sinks=4,window=%d", r, b-4)},
			{"snapkv", fmt.Sprintf("%s=snapkv:budget=%d", r, b)},
			{"pyramid", fmt.Sprintf("%s=pyramid:budget=%d", r, b)},
			{"h2o", fmt.Sprintf("%s=full/h2o:heavy=%d,recent=32", r, b-32)},
			{"snapkv+h2o", fmt.Sprintf("%s=snapkv:budget=%d/h2o:recent=32", r, b)},
		} {
			cs = append(cs, config{Name: p.name, Policy: p.spec, Layers: n, Window: b, Kind: "policy"})
		}
	}
	return append(cs, g.Policies...)
}

// withKVType is full KV and the grid's middle row at its first window
// (the seed's preset) again, over a pool holding K and V as kvType, named
// for it.
func withKVType(cs []config, kvType string) []config {
	var grid []config
	var out []config
	for _, c := range cs {
		switch c.Kind {
		case "full":
			out = append(out, config{Name: c.Name + ", " + kvType + " KV", Kind: "custom", KVType: kvType})
		case "grid":
			grid = append(grid, c)
		}
	}
	if len(grid) > 0 {
		c := grid[len(grid)/2]
		for _, d := range grid { // the middle row's first window
			if d.Layers == c.Layers {
				c = d
				break
			}
		}
		c.Name, c.Kind, c.KVType = c.Name+", "+kvType+" KV", "custom", kvType
		out = append(out, c)
	}
	return out
}

// defaultGrid is the seed's: windows of 1024, 1280 and 1536 tokens and the
// policies at 1024.
var defaultGrid = grid{Windows: []int{1024, 1280, 1536}, Budget: 1024}

// readSamples reads a sample set, gunzipping a name ending in .gz (the
// larger sets are committed compressed).
func readSamples(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil || !strings.HasSuffix(path, ".gz") {
		return b, err
	}
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return io.ReadAll(r)
}

// intList parses "1,2,3".
func intList(flagName, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-%s: %q is not a positive integer", flagName, f)
		}
		out = append(out, n)
	}
	return out, nil
}

// policyFlags collects -policy NAME=SPEC.
type policyFlags []config

func (p *policyFlags) String() string { return "" }

func (p *policyFlags) Set(v string) error {
	name, spec, ok := strings.Cut(v, "=")
	if !ok || name == "" || spec == "" {
		return fmt.Errorf("want NAME=SPEC (a kvd --kv-policy spec), got %q", v)
	}
	*p = append(*p, config{Name: name, Policy: spec, Kind: "custom"})
	return nil
}

func main() {
	modelDir := flag.String("model", "models/kvd-go-16m", "the model directory (its split.json names the held-out packages)")
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
	resume := flag.String("resume", "", "go on from these comma-separated -raw-out files: configurations they finished are skipped, those cut off go on from their last sample")
	note := flag.String("note", "", "a paragraph for the report's head (where and how the runs were made)")
	merge := flag.String("merge", "", "render the table from these comma-separated -raw-out files instead of running")
	which := flag.String("configs", "", "run only these configurations: indices and ranges as -list prints them (\"0,3-5\")")
	list := flag.Bool("list", false, "print the configurations with their indices and exit")
	deviceFlag := flag.String("device", "", "the gateways' --device (auto, cpu or cuda; default: the gateway's own default, auto)")
	concurrency := flag.Int("concurrency", 1, "samples in flight to each server at once (it batches them; scores still pair sample by sample)")
	parallel := flag.Int("parallel", 1, "configurations to run at once, each gateway on its share of the cores")
	rowsFlag := flag.String("sparse-layers", "", "the grid's rows: numbers of sparse (last) layers (default: the seed's 22, 26, 31 of 32, scaled to the model)")
	windowsFlag := flag.String("windows", "1024,1280,1536", "the grid's columns: SnapKV windows in tokens")
	budget := flag.Int("budget", 1024, "the equal budget of the five policies' rows (0: leave them out)")
	var extra policyFlags
	flag.Var(&extra, "policy", "also run this policy, as NAME=SPEC with SPEC a kvd --kv-policy spec (repeatable)")
	alsoType := flag.String("kv-cache-dtype-also", "", "also run full KV and the grid's middle row at its first window with the pool's K and V in this dtype (bfloat16), paired with the rest")
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
	b, err := readSamples(*samplesFile)
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
	for _, c := range extra {
		if _, err := policy.Parse(c.Policy, cfg.NumLayers); err != nil {
			log.Fatalf("-policy %s: %v", c.Name, err)
		}
	}
	g := defaultGrid
	g.Budget, g.Policies = *budget, extra
	if g.Windows, err = intList("windows", *windowsFlag); err != nil {
		log.Fatal(err)
	}
	if *rowsFlag != "" {
		if g.Rows, err = intList("sparse-layers", *rowsFlag); err != nil {
			log.Fatal(err)
		}
		for _, n := range g.Rows {
			if n > cfg.NumLayers {
				log.Fatalf("-sparse-layers: %d, but the model has %d layers", n, cfg.NumLayers)
			}
		}
	}
	configs := g.configs(cfg.NumLayers)
	if *alsoType != "" {
		if _, err := shm.ParseDType(*alsoType); err != nil {
			log.Fatalf("-kv-cache-dtype-also: %v", err)
		}
		configs = append(configs, withKVType(configs, *alsoType)...)
	}
	if *merge != "" {
		run, err := loadRaw(strings.Split(*merge, ","))
		if err != nil {
			log.Fatal(err)
		}
		report := render(set, configs, run, *modelDir, *note)
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
		if *deviceFlag != "" {
			log.Fatal("-device sets the gateways this harness starts; with -server it starts none")
		}
	}
	if *list {
		for i, c := range configs {
			fmt.Printf("%2d  %-32s %s\n", i, c.Name, c.Policy)
		}
		return
	}
	served := ""
	if *srv != "" {
		probe := &server{base: strings.TrimSuffix(*srv, "/")}
		if served, err = probe.firstModel(context.Background()); err != nil {
			log.Fatalf("-server %s: %v", *srv, err)
		}
	}
	picked, err := pick(configs, *which, *only)
	if err != nil {
		log.Fatal(err)
	}
	run := rawRun{Revision: revision(), CPU: machine.CPUName(), Device: *deviceFlag, Threads: runtime.NumCPU(), Results: map[string]result{}, Done: map[string]int{}, Seconds: map[string]float64{}}
	if *resume != "" {
		if run, err = loadRaw(strings.Split(*resume, ",")); err != nil {
			log.Fatal(err)
		}
		if run.Device != *deviceFlag {
			log.Fatalf("-resume: the earlier run's -device was %q, this one's %q: one raw file holds one device's scores (merge files with -merge instead)", run.Device, *deviceFlag)
		}
		run.CPU, run.Threads, run.Revision = machine.CPUName(), runtime.NumCPU(), revision()
	}
	saver := &rawSaver{run: &run, path: *rawOut, every: time.Second}
	// A device call's time limit stops a run with SIGINT (timeout -s INT):
	// keep every sample finished until then.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		stopping.Store(true)
		if err := saver.flush(); err != nil {
			log.Printf("-raw-out: %v", err)
		}
		started.stopAll()
		log.Fatalf("stopped by %v; -resume %s goes on", sig, *rawOut)
	}()
	// Configurations run -parallel at a time, each gateway on its share of
	// the cores (one long prompt does not keep many cores busy).
	threads := max(1, runtime.NumCPU() / *parallel)
	sem := make(chan struct{}, *parallel)
	var wg sync.WaitGroup
	for _, c := range picked {
		sem <- struct{}{}
		wg.Add(1)
		from, r := saver.progress(c.Name)
		if from >= len(set.Samples) {
			<-sem
			wg.Done()
			continue
		}
		go func() {
			defer func() { <-sem; wg.Done() }()
			start := time.Now()
			s := &server{base: strings.TrimSuffix(*srv, "/"), model: served}
			if *srv == "" {
				var err error
				if s, err = startGateway(*gw, *modelDir, c, *kvMem, *deviceFlag, threads, io.Discard); err != nil {
					die(saver, "%v", err)
				}
			}
			done, last := from, start
			err := runSamples(context.Background(), s, set.Samples[from:], r, *concurrency, func() {
				done++
				now := time.Now()
				if err := saver.save(c.Name, r, done, now.Sub(last), done == len(set.Samples)); err != nil {
					die(nil, "%v", err)
				}
				last = now
			})
			s.stop()
			if err != nil {
				die(saver, "%s: %v", c.Name, err)
			}
			fmt.Fprintf(os.Stderr, "%s: %d samples in %.0fs\n", c.Name, done-from, time.Since(start).Seconds())
		}()
	}
	wg.Wait()
	report := render(set, configs, run, *modelDir, *note)
	fmt.Print(report)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

// stopping is set once a signal is stopping the run: the errors its
// gateways' shutdown causes in the samples in flight are not the run's.
var stopping atomic.Bool

// die ends the run after an error: the raw file flushed (saver, if not
// nil), the gateways stopped. While a signal is stopping the run it waits
// for that instead.
func die(saver *rawSaver, format string, args ...any) {
	if stopping.Load() {
		select {}
	}
	if saver != nil {
		saver.flush()
	}
	started.stopAll()
	log.Fatalf(format, args...)
}

// pick returns the configurations -configs (indices and ranges, as -list
// numbers them) and -only (a name substring) select; full KV is kept
// unless -configs leaves it out.
func pick(configs []config, which, only string) ([]config, error) {
	var picked []config
	if which == "" {
		for _, c := range configs {
			if strings.Contains(c.Name, only) || c.Kind == "full" {
				picked = append(picked, c)
			}
		}
		return picked, nil
	}
	for _, f := range strings.Split(which, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(f), "-")
		a, err1 := strconv.Atoi(lo)
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a || b >= len(configs) {
			return nil, fmt.Errorf("-configs: %q is not an index or range of 0..%d (see -list)", f, len(configs)-1)
		}
		picked = append(picked, configs[a:b+1]...)
	}
	return picked, nil
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
	keys, err := makeKeySamples(tok, files, lengths[0], n, seed)
	if err != nil {
		return err
	}
	samples = append(samples, keys...)
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

// rawSaver records configurations' scores in run as samples finish and
// writes run to path (when set): at most once every every, and always when
// a configuration finishes, so a run cut off (a device call's time limit)
// loses at most that much and -resume goes on from there. Writing after
// every sample, as it first did, marshalled every configuration's scores
// each time: at 1000 samples per task that took ~8 ms a sample by a run's
// end and, done in the loop that takes finished samples, cost about as
// much as the samples (gpu-g.md, run 8).
type rawSaver struct {
	mu    sync.Mutex
	run   *rawRun
	path  string
	every time.Duration
	wrote time.Time
}

func (s *rawSaver) save(name string, r result, done int, took time.Duration, final bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.run.Results[name], s.run.Done[name] = r.clone(), done
	s.run.Seconds[name] += took.Seconds()
	if !final && time.Since(s.wrote) < s.every {
		return nil
	}
	return s.write()
}

// flush writes the raw file now: a run stopped by a signal or an error.
func (s *rawSaver) flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.write()
}

// progress is a configuration's samples done and scores so far (from
// -resume's files, or this run's).
func (s *rawSaver) progress(name string) (int, result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.run.Done[name], s.run.Results[name].clone()
}

// write writes run to path (none without -raw-out). Called with mu held.
func (s *rawSaver) write() error {
	if s.path == "" {
		return nil
	}
	s.wrote = time.Now()
	b, err := json.Marshal(s.run)
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp" // renamed over it, so a kill mid-write loses nothing
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, s.path)
}

// rawRun is one run's scores and where they were measured.
type rawRun struct {
	Revision string             `json:"revision,omitempty"` // the harness binary's commit (the gateway's, when built together)
	CPU      string             `json:"cpu"`
	Device   string             `json:"device,omitempty"` // -device, given to every gateway
	Threads  int                `json:"threads"`
	Results  map[string]result  `json:"results"`
	Done     map[string]int     `json:"done"`    // samples finished, per configuration
	Seconds  map[string]float64 `json:"seconds"` // time spent on them
}

// loadRaw combines -raw-out files, metric by metric: of a metric measured
// for a configuration in several (a run resumed elsewhere), the one with
// the most samples counts; files of different sample sets (other tasks)
// add their metrics. Done and Seconds add up over the files a
// configuration's counted metrics came from.
func loadRaw(files []string) (rawRun, error) {
	run := rawRun{Results: map[string]result{}, Done: map[string]int{}, Seconds: map[string]float64{}}
	var cpus, revs, devices []string
	var raws []rawRun
	from := map[string]map[string]int{} // configuration → metric → file
	for fi, f := range files {
		var r rawRun
		b, err := os.ReadFile(f)
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err != nil {
			return run, fmt.Errorf("%s: %v", f, err)
		}
		for k, res := range r.Results {
			if run.Results[k] == nil {
				run.Results[k] = result{}
			}
			if from[k] == nil {
				from[k] = map[string]int{}
			}
			for m, v := range res {
				if len(v) > len(run.Results[k][m]) {
					run.Results[k][m], from[k][m] = v, fi
				}
			}
		}
		raws = append(raws, r)
		if c := fmt.Sprintf("%s, %d threads", r.CPU, r.Threads); !slices.Contains(cpus, c) {
			cpus = append(cpus, c)
		}
		if r.Revision != "" && !slices.Contains(revs, r.Revision) {
			revs = append(revs, r.Revision)
		}
		run.CPU, run.Threads = r.CPU, r.Threads
		if r.Device != "" && !slices.Contains(devices, r.Device) {
			devices = append(devices, r.Device)
		}
	}
	run.CPU, run.Revision, run.Device = strings.Join(cpus, "; "), strings.Join(revs, ", "), strings.Join(devices, ", ")
	for k, ms := range from {
		used := map[int]bool{}
		for _, fi := range ms {
			used[fi] = true
		}
		for fi := range used {
			run.Done[k] += raws[fi].Done[k]
			run.Seconds[k] += raws[fi].Seconds[k]
		}
	}
	return run, nil
}

// render prints full KV's absolute scores, then every metric in the seed's
// shape (rows: sparse layers, columns: windows, cells: relative to full),
// then the policies at equal budget.
func render(set SampleSet, configs []config, run rawRun, modelDir, note string) string {
	results := run.Results
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
	device := "the gateway's default --device (auto: the GPU if the machine has one)"
	if run.Device != "" {
		device = "gateway --device " + run.Device
	}
	fmt.Fprintf(&b, "Rendered at commit %s on %s. Harness host: %s; %s; %d samples (seed %d, lengths %v).",
		strings.TrimSpace(string(commit)), time.Now().Format("2006-01-02"), run.CPU, device, len(set.Samples), set.Seed, set.Lengths)
	if run.Revision != "" {
		fmt.Fprintf(&b, " Measured at %s.", run.Revision)
	}
	b.WriteString("\n")
	if note != "" {
		fmt.Fprintf(&b, "\n%s\n", note)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "± is a 95%% confidence half-width (1.96 standard errors over samples); in the relative tables it is that of the\n"+
		"paired per-sample difference from full KV, so a cell whose ± does not reach 1.000 differs from full KV.\n\n## Full KV\n\n| metric | score |\n| --- | --- |\n")
	for _, m := range metrics {
		s := summarize(full[m])
		fmt.Fprintf(&b, "| %s | %.3f ± %.3f (n=%d) |\n", m, s.Mean, s.CI, s.N)
	}
	// A metric full KV scores 0 on has no ratio: leave it out of the
	// relative tables, and say so.
	var ratios, zero []string
	for _, m := range metrics {
		if summarize(full[m]).Mean == 0 {
			zero = append(zero, m)
		} else {
			ratios = append(ratios, m)
		}
	}
	if len(zero) > 0 {
		fmt.Fprintf(&b, "\nFull KV scores 0 on %s, so the relative tables leave %s out.\n", strings.Join(zero, ", "), map[bool]string{true: "it", false: "them"}[len(zero) == 1])
	}
	var grid, pols, custom []config
	for _, c := range configs {
		if results[c.Name] == nil {
			continue
		}
		switch c.Kind {
		case "grid":
			grid = append(grid, c)
		case "policy":
			pols = append(pols, c)
		case "custom":
			custom = append(custom, c)
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
		for _, m := range ratios {
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
							cell = relCell(m, results[c.Name][m], full[m])
						}
					}
					fmt.Fprintf(&b, " %s |", cell)
				}
				b.WriteString("\n")
			}
		}
	}
	table := func(title string, cs []config, spec bool) {
		if len(cs) == 0 {
			return
		}
		fmt.Fprintf(&b, "\n## %s, relative to full KV\n\n| policy |", title)
		for _, m := range ratios {
			fmt.Fprintf(&b, " %s |", m)
		}
		fmt.Fprintf(&b, "\n|---|%s\n", strings.Repeat("---|", len(ratios)))
		for _, c := range cs {
			name := c.Name
			if spec {
				name = fmt.Sprintf("%s (`%s`)", c.Name, c.Policy)
			}
			fmt.Fprintf(&b, "| %s |", name)
			for _, m := range ratios {
				fmt.Fprintf(&b, " %s |", relCell(m, results[c.Name][m], full[m]))
			}
			b.WriteString("\n")
		}
	}
	if len(pols) > 0 {
		table(fmt.Sprintf("Policies at an equal budget of %d tokens on the last %d layers", pols[0].Window, pols[0].Layers), pols, false)
	}
	table("Policies given with -policy", custom, true)
	var took []string
	for _, c := range configs {
		if d, ok := run.Done[c.Name]; ok {
			took = append(took, fmt.Sprintf("%s %d samples in %.0fs", c.Name, d, run.Seconds[c.Name]))
		}
	}
	if len(took) > 0 {
		fmt.Fprintf(&b, "\nSamples and time per configuration: %s.\n", strings.Join(took, "; "))
	}
	return b.String()
}

// relCell prints relative's ratio and its half-width.
func relCell(metric string, cfg, full []float64) string {
	r, ci := relative(metric, cfg, full)
	if math.IsNaN(r) {
		return "n/a" // full KV scored 0, or nothing ran
	}
	return fmt.Sprintf("%.3f ± %.3f", r, ci)
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// revision is the commit this binary was built from, as go build stamps it
// ("abc1234", "-dirty" when the tree had changes).
func revision() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value[:min(len(s.Value), 7)]
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return ""
	}
	return rev + dirty
}
