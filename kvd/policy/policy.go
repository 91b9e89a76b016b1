// Package policy is kvd's layer-wise sparsity configuration: which tokens
// each layer keeps at the end of prefill (full, window, snapkv, pyramid) and
// during decode (h2o, window). kvd parses and validates the spec at start,
// shows it in status, and sends every layer's policy to clients at hello so
// that both sides size the block tables alike.
//
// policy must not import anything of this module: it is plain data and
// arithmetic.
package policy

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ErrSpec reports a policy spec that cannot be used.
var ErrSpec = errors.New("invalid KV policy")

// Prefill policies: what a layer keeps of a prompt.
const (
	Full    = "full"    // everything
	Window  = "window"  // StreamingLLM: the first Sinks tokens and the last Window
	SnapKV  = "snapkv"  // the last ObsWindow tokens and the Budget-ObsWindow the window attends to most
	Pyramid = "pyramid" // snapkv with PyramidKV's per-layer budgets
)

// Decode policies: how a layer stays within DecodeBudget as tokens come.
const (
	H2O = "h2o" // evict the lowest accumulated attention outside the sinks and the recent tokens
)

// Layer is one layer's policy. Budgets count tokens per sequence (per KV
// head: heads keep equal numbers of possibly different tokens).
type Layer struct {
	Prefill      string `json:"prefill"`
	Decode       string `json:"decode,omitempty"`        // "", H2O, or Window
	Budget       int    `json:"budget,omitempty"`        // tokens kept of a prompt; 0 keeps all
	DecodeBudget int    `json:"decode_budget,omitempty"` // tokens kept while decoding; 0 is unbounded
	Sinks        int    `json:"sinks,omitempty"`         // first tokens never evicted
	Recent       int    `json:"recent,omitempty"`        // last tokens never evicted
	ObsWindow    int    `json:"obs_window,omitempty"`    // snapkv: queries that vote
	Kernel       int    `json:"kernel,omitempty"`        // snapkv: pooling width along the sequence
	Pool         string `json:"pool,omitempty"`          // snapkv: "max" or "avg"
	GQA          string `json:"gqa,omitempty"`           // snapkv: "mean" or "max" over a KV head's queries
}

// Selects reports whether the layer keeps only part of a prompt.
func (l Layer) Selects() bool { return l.Prefill != Full && l.Budget > 0 }

// Scores reports whether the layer needs attention scores: to select at the
// end of prefill, or to evict by score during decode.
func (l Layer) Scores() bool { return l.Prefill == SnapKV || l.Prefill == Pyramid || l.Decode == H2O }

// PrefillKeep is how many of n new tokens the layer keeps when it already
// holds before: a prompt (before == 0) longer than the budget keeps the
// budget; anything else keeps every token.
func (l Layer) PrefillKeep(before, n int) int {
	if before == 0 && l.Selects() && n > l.Budget {
		return l.Budget
	}
	return n
}

// Evicts reports whether a layer holding tokens should be cut back to
// DecodeBudget: once it exceeds it by a whole block, so eviction frees a
// block each time.
func (l Layer) Evicts(tokens, blockSize int) bool {
	return l.Decode != "" && l.DecodeBudget > 0 && tokens >= l.DecodeBudget+blockSize
}

// String is the layer's policy as the spec writes it.
func (l Layer) String() string {
	s := l.Prefill
	switch l.Prefill {
	case Window:
		s += fmt.Sprintf(":sinks=%d,window=%d", l.Sinks, l.Budget-l.Sinks)
	case SnapKV, Pyramid:
		s += fmt.Sprintf(":budget=%d", l.Budget)
	}
	if l.Decode != "" {
		s += fmt.Sprintf("/%s:budget=%d", l.Decode, l.DecodeBudget)
	}
	return s
}

// Spec is every layer's policy.
type Spec []Layer

// Defaults of the tunables.
const (
	DefaultObsWindow = 32
	DefaultKernel    = 7
	DefaultSinks     = 4
	DefaultBeta      = 20
)

// AllFull is the spec that keeps everything.
func AllFull(layers int) Spec {
	s := make(Spec, layers)
	for i := range s {
		s[i] = Layer{Prefill: Full}
	}
	return s
}

// Seed is the seed fork's layout: the last n of layers layers keep a
// SnapKV-selected window of w tokens of the prompt and hold w tokens while
// decoding by H2O eviction (the recent ObsWindow tokens always kept); the
// first layers stay full. The last layers, not the first, go sparse because
// attention in the lowest layers is spread over the whole context (the
// PyramidKV observation, and why the seed kept layers 0–1 full).
func Seed(layers, n, w int) (Spec, error) {
	if n < 0 || n > layers {
		return nil, fmt.Errorf("%w: --sparse-layers %d of %d layers", ErrSpec, n, layers)
	}
	if n > 0 && w <= DefaultObsWindow {
		return nil, fmt.Errorf("%w: --window %d must exceed the observation window of %d", ErrSpec, w, DefaultObsWindow)
	}
	s := AllFull(layers)
	for i := layers - n; i < layers; i++ {
		s[i] = snap(SnapKV, w)
		s[i].Decode, s[i].DecodeBudget, s[i].Recent = H2O, w, DefaultObsWindow
	}
	return s, s.Validate()
}

func snap(kind string, budget int) Layer {
	return Layer{Prefill: kind, Budget: budget, ObsWindow: DefaultObsWindow, Kernel: DefaultKernel, Pool: "max", GQA: "mean"}
}

// Parse reads a spec for a model of layers layers: rules separated by ";",
// each "LAYERS=PREFILL[:k=v,...][/DECODE[:k=v,...]]", where LAYERS is "all",
// "3" or "2-31". Layers no rule names stay full. Examples:
//
//	all=window:sinks=4,window=1020
//	0-1=full;2-31=snapkv:budget=1024/h2o:recent=32
//	2-31=pyramid:budget=1024,beta=20
//	all=full/h2o:heavy=992,recent=32
func Parse(spec string, layers int) (Spec, error) {
	s := AllFull(layers)
	for _, rule := range strings.Split(spec, ";") {
		rule = strings.TrimSpace(rule)
		if rule == "" {
			continue
		}
		if err := s.apply(rule); err != nil {
			return nil, fmt.Errorf("%w: rule %q: %v", ErrSpec, rule, err)
		}
	}
	return s, s.Validate()
}

func (s Spec) apply(rule string) error {
	rng, pol, ok := strings.Cut(rule, "=")
	if !ok {
		return fmt.Errorf("want LAYERS=POLICY")
	}
	lo, hi, err := layerRange(rng, len(s))
	if err != nil {
		return err
	}
	pre, dec, _ := strings.Cut(pol, "/")
	name, args, err := kv(pre)
	if err != nil {
		return err
	}
	var base Layer
	beta := DefaultBeta
	heavyDefault := false
	switch name {
	case Full:
		base = Layer{Prefill: Full}
	case Window:
		base = Layer{Prefill: Window, Sinks: DefaultSinks}
		w := 0
		if err := take(args, map[string]*int{"sinks": &base.Sinks, "window": &w}); err != nil {
			return err
		}
		if w < 1 {
			return fmt.Errorf("window needs window=N")
		}
		base.Budget = base.Sinks + w
		// The window holds as tokens arrive, too.
		base.Decode, base.DecodeBudget, base.Recent = Window, base.Budget, w
	case SnapKV, Pyramid:
		base = snap(name, 0)
		ints := map[string]*int{"budget": &base.Budget, "obs_window": &base.ObsWindow, "kernel": &base.Kernel}
		if name == Pyramid {
			ints["beta"] = &beta
		}
		if p, ok := args["pool"]; ok {
			base.Pool = p
			delete(args, "pool")
		}
		if g, ok := args["gqa"]; ok {
			base.GQA = g
			delete(args, "gqa")
		}
		if err := take(args, ints); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown prefill policy %q (full, window, snapkv, pyramid)", name)
	}
	if dec != "" {
		dname, dargs, err := kv(dec)
		if err != nil {
			return err
		}
		if dname != H2O {
			return fmt.Errorf("unknown decode policy %q (h2o)", dname)
		}
		heavy, recent := -1, DefaultObsWindow
		sinks := base.Sinks
		if err := take(dargs, map[string]*int{"heavy": &heavy, "recent": &recent, "sinks": &sinks}); err != nil {
			return err
		}
		if base.Prefill == Window && sinks != base.Sinks {
			return fmt.Errorf("set sinks on the window, not on h2o after it")
		}
		base.Sinks = sinks
		heavyDefault = heavy < 0
		if heavy < 0 {
			if base.Budget == 0 {
				return fmt.Errorf("h2o after full needs heavy=N")
			}
			heavy = base.Budget - recent
		}
		base.Decode, base.DecodeBudget, base.Recent = H2O, heavy+recent, recent
	}
	n := hi - lo + 1
	for i := lo; i <= hi; i++ {
		l := base
		if name == Pyramid {
			l.Budget = pyramidBudget(base.Budget, base.ObsWindow, beta, i-lo, n)
			if l.Decode == H2O && heavyDefault {
				// Each layer holds its own pyramid budget while decoding.
				l.DecodeBudget = l.Budget
			}
		}
		s[i] = l
	}
	return nil
}

// pyramidBudget is PyramidKV's schedule: over n layers, budgets fall
// linearly from the lowest layer to the highest, averaging budget, with the
// smallest (budget-obs)/beta above the observation window.
func pyramidBudget(budget, obs, beta, i, n int) int {
	if n == 1 || beta <= 0 {
		return budget
	}
	minNum := (budget - obs) / beta
	maxNum := (budget-obs)*2 - minNum
	step := (maxNum - minNum) / (n - 1)
	return maxNum - i*step + obs
}

func layerRange(s string, layers int) (int, int, error) {
	s = strings.TrimSpace(s)
	if s == "all" {
		return 0, layers - 1, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	lo, err := strconv.Atoi(a)
	if err != nil {
		return 0, 0, fmt.Errorf("layers %q: want all, N or N-M", s)
	}
	hi := lo
	if isRange {
		if hi, err = strconv.Atoi(b); err != nil {
			return 0, 0, fmt.Errorf("layers %q: want all, N or N-M", s)
		}
	}
	if lo < 0 || hi < lo || hi >= layers {
		return 0, 0, fmt.Errorf("layers %q outside 0-%d", s, layers-1)
	}
	return lo, hi, nil
}

// kv splits "name:k=v,k=v".
func kv(s string) (string, map[string]string, error) {
	name, rest, _ := strings.Cut(strings.TrimSpace(s), ":")
	args := map[string]string{}
	if rest == "" {
		return name, args, nil
	}
	for _, p := range strings.Split(rest, ",") {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return "", nil, fmt.Errorf("%q: want key=value", p)
		}
		args[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return name, args, nil
}

// take moves integer arguments into their fields; unknown keys are errors.
func take(args map[string]string, ints map[string]*int) error {
	for k, v := range args {
		p, ok := ints[k]
		if !ok {
			return fmt.Errorf("unknown parameter %q", k)
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%s=%q is not an integer", k, v)
		}
		*p = n
	}
	return nil
}

// Validate checks every layer.
func (s Spec) Validate() error {
	for i, l := range s {
		if err := l.validate(); err != nil {
			return fmt.Errorf("%w: layer %d (%s): %v", ErrSpec, i, l.Prefill, err)
		}
	}
	return nil
}

func (l Layer) validate() error {
	switch l.Prefill {
	case Full:
	case Window:
		if l.Sinks < 0 || l.Budget <= l.Sinks {
			return fmt.Errorf("sinks %d and window %d", l.Sinks, l.Budget-l.Sinks)
		}
	case SnapKV, Pyramid:
		switch {
		case l.ObsWindow < 1:
			return fmt.Errorf("obs_window %d", l.ObsWindow)
		case l.Budget <= l.ObsWindow+l.Sinks:
			return fmt.Errorf("budget %d must exceed obs_window %d + sinks %d", l.Budget, l.ObsWindow, l.Sinks)
		case l.Kernel < 1 || l.Kernel%2 == 0:
			return fmt.Errorf("kernel %d must be odd and positive", l.Kernel)
		case l.Pool != "max" && l.Pool != "avg":
			return fmt.Errorf("pool %q (max or avg)", l.Pool)
		case l.GQA != "mean" && l.GQA != "max":
			return fmt.Errorf("gqa %q (mean or max)", l.GQA)
		}
	default:
		return fmt.Errorf("unknown prefill policy")
	}
	switch l.Decode {
	case "":
	case H2O, Window:
		if l.Recent < 1 || l.Sinks < 0 || l.DecodeBudget < l.Sinks+l.Recent {
			return fmt.Errorf("decode budget %d must exceed sinks %d + recent %d", l.DecodeBudget, l.Sinks, l.Recent)
		}
	default:
		return fmt.Errorf("unknown decode policy %q", l.Decode)
	}
	return nil
}

// FromFlags builds the spec that kvd's (and the embedded gateway's) flags
// describe: --kv-policy SPEC (or @FILE holding one, rules on separate lines
// allowed, # starting a comment), or the seed's shorthand --sparse-layers N
// --window W, or all layers full.
func FromFlags(spec string, sparseLayers, window, layers int) (Spec, error) {
	if path, ok := strings.CutPrefix(spec, "@"); ok {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrSpec, err)
		}
		var rules []string
		for _, line := range strings.Split(string(b), "\n") {
			line, _, _ = strings.Cut(line, "#")
			if line = strings.TrimSpace(line); line != "" {
				rules = append(rules, line)
			}
		}
		spec = strings.Join(rules, ";")
		if spec == "" {
			return nil, fmt.Errorf("%w: %s holds no rule", ErrSpec, path)
		}
	}
	switch {
	case spec != "" && sparseLayers > 0:
		return nil, fmt.Errorf("%w: give --kv-policy or --sparse-layers/--window, not both", ErrSpec)
	case spec != "":
		return Parse(spec, layers)
	case sparseLayers > 0:
		return Seed(layers, sparseLayers, window)
	}
	return AllFull(layers), nil
}
