package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kvd-project/kvd/gateway/tokenizer"
)

// Sample is one task instance. Completion tasks carry text; the
// log-likelihood task carries token ids, so every server scores exactly the
// same tokens.
type Sample struct {
	Task         string  `json:"task"`
	Source       string  `json:"source"`
	Prompt       string  `json:"prompt,omitempty"`
	Target       string  `json:"target,omitempty"`
	PromptIDs    []int32 `json:"prompt_ids,omitempty"`
	Continuation []int32 `json:"continuation,omitempty"`
}

// SampleSet is what -make-samples writes and -samples reads.
type SampleSet struct {
	Model   string   `json:"model"`
	Seed    uint64   `json:"seed"`
	Lengths []int    `json:"lengths"`
	Sources []string `json:"sources"`
	Samples []Sample `json:"samples"`
}

// Task names.
const (
	taskLine      = "line"      // next line after an L-token prefix, per length
	taskRetrieval = "retrieval" // a constant defined at the top, asked for at the end
	taskLoglik    = "loglik"    // the last 256 tokens of a file, teacher-forced through decode
	// taskKey is retrieval measured by likelihood: the constant's
	// definition is repeated at the end, and the value's tokens are scored
	// through the (compressed) cache. It measures what compression costs a
	// model too weak to answer the exact-match question (the bundled one).
	taskKey = "retrieval-key"
)

const (
	genRoom     = 64  // tokens a completion may use
	loglikTail  = 256 // tokens scored
	probeDigits = 6
)

// heldoutSources lists the model's held-out packages' files (split.json,
// paths under GOROOT/src) and the Go files of the modules this repository
// depends on, tests and testdata left out, sorted.
func heldoutSources(modelDir string) ([]string, error) {
	var split struct {
		Heldout []string `json:"heldout"`
	}
	b, err := os.ReadFile(filepath.Join(modelDir, "split.json"))
	if err != nil {
		return nil, fmt.Errorf("the model's held-out split: %w", err)
	}
	if err := json.Unmarshal(b, &split); err != nil {
		return nil, err
	}
	root, err := goEnv("GOROOT")
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, p := range split.Heldout {
		dirs = append(dirs, filepath.Join(root, "src", p))
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "all").Output()
	if err != nil {
		return nil, fmt.Errorf("go list -m all: %w", err)
	}
	for _, d := range strings.Fields(string(out)) {
		if !strings.HasPrefix(d, root) && d != mustGetwd() {
			dirs = append(dirs, d)
		}
	}
	var files []string
	isSource := func(n string) bool { return strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go") }
	for _, d := range dirs {
		if strings.HasPrefix(d, root) {
			// A held-out package: its own files (its subpackages may
			// have been trained on).
			entries, _ := os.ReadDir(d)
			for _, e := range entries {
				if !e.IsDir() && isSource(e.Name()) {
					files = append(files, filepath.Join(d, e.Name()))
				}
			}
			continue
		}
		// A dependency module: all of it but tests and testdata.
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			switch {
			case err != nil:
				return nil
			case e.IsDir() && p != d && (e.Name() == "testdata" || strings.HasPrefix(e.Name(), ".")):
				return filepath.SkipDir
			case !e.IsDir() && isSource(e.Name()):
				files = append(files, p)
			}
			return nil
		})
	}
	sort.Strings(files)
	return files, nil
}

// shortPath names a source file without the machine's directories.
func shortPath(p string) string {
	for _, env := range []string{"GOROOT", "GOMODCACHE"} {
		if d, err := goEnv(env); err == nil && d != "" && strings.HasPrefix(p, d+"/") {
			return strings.ToLower(env) + ":" + strings.TrimPrefix(p, d+"/")
		}
	}
	return p
}

func goEnv(name string) (string, error) {
	out, err := exec.Command("go", "env", name).Output()
	return strings.TrimSpace(string(out)), err
}

func mustGetwd() string { d, _ := os.Getwd(); return d }

// makeSamples draws n samples of each task from files, deterministically
// for a seed: next-line completion after prefixes of each length, retrieval
// and log-likelihood at the largest length.
func makeSamples(tok *tokenizer.Tokenizer, files []string, lengths []int, n int, seed uint64) ([]Sample, error) {
	rng := rand.New(rand.NewPCG(seed, 0x6b7664))
	order := rng.Perm(len(files))
	want := map[string]int{taskRetrieval: n, taskLoglik: n}
	for _, l := range lengths {
		want[lineTask(l)] = n
	}
	longest := lengths[len(lengths)-1]
	var out []Sample
	for _, i := range order {
		b, err := os.ReadFile(files[i])
		if err != nil {
			continue
		}
		text := string(b)
		lines := strings.SplitAfter(text, "\n")
		counts := make([]int, len(lines))
		total := 0
		for j, l := range lines {
			ids, err := tok.Encode(l, false)
			if err != nil {
				break
			}
			counts[j] = len(ids)
			total += len(ids)
		}
		src := shortPath(files[i])
		for _, l := range lengths {
			if t := lineTask(l); want[t] > 0 && total > l+genRoom {
				if s, ok := lineSample(lines, counts, l-genRoom, rng); ok {
					s.Task, s.Source = t, src
					out = append(out, s)
					want[t]--
				}
			}
		}
		if want[taskRetrieval] > 0 && total > longest {
			out = append(out, retrievalSample(lines, counts, longest-genRoom-64, rng, src))
			want[taskRetrieval]--
		}
		if want[taskLoglik] > 0 && total > longest+64 {
			ids, err := tok.Encode(text, true)
			if err == nil && len(ids) >= longest {
				ids32 := make([]int32, longest)
				for j := range ids32 {
					ids32[j] = int32(ids[j])
				}
				tail := min(loglikTail, longest/4)
				out = append(out, Sample{Task: taskLoglik, Source: src, PromptIDs: ids32[:longest-tail], Continuation: ids32[longest-tail:]})
				want[taskLoglik]--
			}
		}
		done := true
		for _, w := range want {
			done = done && w == 0
		}
		if done {
			return out, nil
		}
	}
	return out, fmt.Errorf("not enough long files for %v more samples (%d files)", want, len(files))
}

// makeKeySamples draws n retrieval-key samples at length l. They come from
// their own random stream and go after makeSamples's, so sample sets made
// before this task existed keep their samples and order (a run can resume).
func makeKeySamples(tok *tokenizer.Tokenizer, files []string, l, n int, seed uint64) ([]Sample, error) {
	rng := rand.New(rand.NewPCG(seed, 0x6b6579))
	var out []Sample
	for _, i := range rng.Perm(len(files)) {
		if len(out) == n {
			return out, nil
		}
		b, err := os.ReadFile(files[i])
		if err != nil {
			continue
		}
		lines := strings.SplitAfter(string(b), "\n")
		counts := make([]int, len(lines))
		total := 0
		for j, ln := range lines {
			ids, err := tok.Encode(ln, false)
			if err != nil {
				return nil, err
			}
			counts[j] = len(ids)
			total += len(ids)
		}
		if total > l {
			s, err := keySample(tok, lines, counts, l-64, rng, shortPath(files[i]))
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
	}
	return out, fmt.Errorf("not enough long files for %d more key samples (%d files)", n-len(out), len(files))
}

func lineTask(l int) string { return fmt.Sprintf("%s-%d", taskLine, l) }

// lineSample cuts the file after as many lines as fit in budget tokens and
// asks for the next non-blank line.
func lineSample(lines []string, counts []int, budget int, rng *rand.Rand) (Sample, bool) {
	used, cut := 0, 0
	for cut < len(lines) && used+counts[cut] <= budget {
		used += counts[cut]
		cut++
	}
	for j := cut; j < len(lines); j++ {
		if t := strings.TrimSpace(lines[j]); t != "" {
			return Sample{Prompt: strings.Join(lines[:cut], "") + leadingSpace(lines[j]), Target: t}, true
		}
	}
	return Sample{}, false
}

func leadingSpace(s string) string { return s[:len(s)-len(strings.TrimLeft(s, " \t"))] }

// retrievalSample defines a constant right after the package clause, keeps
// as much of the file as fits, and asks for the constant's value at the end.
func retrievalSample(lines []string, counts []int, budget int, rng *rand.Rand, src string) Sample {
	return probeSample(lines, counts, budget, rng, src, "\n// checkSecret reports whether the key is the one defined at the top of this file.\nfunc checkSecret() bool {\n\treturn secretKey == \"")
}

// keySample is retrievalSample whose question repeats the definition, with
// the value and its closing quote as token ids to score.
func keySample(tok *tokenizer.Tokenizer, lines []string, counts []int, budget int, rng *rand.Rand, src string) (Sample, error) {
	s := probeSample(lines, counts, budget, rng, src, "\n// secretKey, as defined at the top of this file:\nconst secretKey = \"")
	p, err := tok.Encode(s.Prompt, true)
	if err != nil {
		return s, err
	}
	c, err := tok.Encode(s.Target+`"`, false)
	if err != nil {
		return s, err
	}
	s.Task, s.PromptIDs, s.Continuation = taskKey, toInt32(p), toInt32(c)
	return s, nil
}

func toInt32(ids []int) []int32 {
	out := make([]int32, len(ids))
	for i, id := range ids {
		out[i] = int32(id)
	}
	return out
}

// probeSample defines a random constant after the package clause, keeps as
// much of the file as fits in budget tokens, and ends with question.
func probeSample(lines []string, counts []int, budget int, rng *rand.Rand, src, question string) Sample {
	const hexDigits = "0123456789abcdef"
	v := make([]byte, probeDigits)
	for i := range v {
		v[i] = hexDigits[rng.IntN(16)]
	}
	var b strings.Builder
	used, i := 0, 0
	for ; i < len(lines) && !strings.HasPrefix(lines[i], "package "); i++ {
	}
	if i < len(lines) {
		b.WriteString(lines[i])
		used += counts[i]
		i++
	}
	fmt.Fprintf(&b, "\nconst secretKey = %q\n", string(v))
	for ; i < len(lines) && used+counts[i] <= budget; i++ {
		b.WriteString(lines[i])
		used += counts[i]
	}
	b.WriteString(question)
	return Sample{Task: taskRetrieval, Source: src, Prompt: b.String(), Target: string(v)}
}
