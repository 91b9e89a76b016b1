package runner

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kvd-project/kvd/kernels"
)

// profBackend is the CPU backend with a profiler that counts its starts
// and stops, so the window's logic runs without a GPU.
type profBackend struct {
	*kernels.CPU
	starts, stops, marks int
	on                   bool
}

func (b *profBackend) StartProfile() { b.starts++; b.on = true }
func (b *profBackend) MarkProfileStep() {
	if b.on {
		b.marks++
	}
}
func (b *profBackend) StopProfile() (kernels.Profile, error) {
	b.stops++
	b.on = false
	return kernels.Profile{Span: time.Millisecond, Busy: time.Millisecond}, nil
}

// TestStepProfileWindow runs stepProfile's hooks as StepSample does: the
// profile starts at step FROM, stops after N steps that ran, prints one
// table, and a failed step inside the window stops it without a table.
func TestStepProfileWindow(t *testing.T) {
	for _, tc := range []struct {
		spec     string
		failAt   int // the step that fails (-1: none)
		steps    int
		starts   int
		stops    int
		marks    int // steps started with the profile on: each marks its first kernel
		printed  string
		notPrint string
	}{
		{"2:3", -1, 8, 1, 1, 3, "steps 2..4, 10.0 rows and 2.0 sequences a step", "abandoned"},
		{"0:1", -1, 3, 1, 1, 1, "steps 0..0", "abandoned"},
		{"5:10", -1, 8, 1, 0, 3, "", "kernel profile"}, // still running: Shutdown abandons it
		{"2:3", 3, 8, 1, 1, 2, "abandoned at step 3", "rows and"},
		{"2:3", 2, 8, 2, 2, 4, "steps 2..4", ""}, // the first step failed: it starts again at the retry
	} {
		p, err := parseStepProfile(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		p.out = &out
		b := &profBackend{CPU: kernels.NewCPU()}
		failed := false
		for i := 0; i < tc.steps; i++ {
			p.before(b)
			if p.step == tc.failAt && !failed {
				failed = true
				p.abandon(b, errors.New("boom"))
				continue
			}
			p.after(b, 2, 10, time.Millisecond)
		}
		if b.starts != tc.starts || b.stops != tc.stops || b.marks != tc.marks {
			t.Errorf("%s, failing at %d: %d starts, %d stops and %d step marks, want %d, %d and %d", tc.spec, tc.failAt, b.starts, b.stops, b.marks, tc.starts, tc.stops, tc.marks)
		}
		if tc.printed != "" && !strings.Contains(out.String(), tc.printed) {
			t.Errorf("%s, failing at %d: printed %q, want it to say %q", tc.spec, tc.failAt, out.String(), tc.printed)
		}
		if tc.notPrint != "" && strings.Contains(out.String(), tc.notPrint) {
			t.Errorf("%s, failing at %d: printed %q, which should not say %q", tc.spec, tc.failAt, out.String(), tc.notPrint)
		}
		p.abandon(b, errors.New("shutdown"))
		if b.on {
			t.Errorf("%s: the profile is still on after abandon", tc.spec)
		}
	}
}

// TestParseStepProfile: FROM:N exactly, nothing after it.
func TestParseStepProfile(t *testing.T) {
	if p, err := parseStepProfile("600:100"); err != nil || p.from != 600 || p.n != 100 {
		t.Errorf("600:100: %+v, %v", p, err)
	}
	for _, bad := range []string{"", "x", "5", "3:0", "-1:2", "1:2x", "1:2:3", "100:10ms", "1: 2", "1:2 junk"} {
		if _, err := parseStepProfile(bad); err == nil || !strings.Contains(err.Error(), "FROM:N") {
			t.Errorf("%q: err %v, want one that asks for FROM:N", bad, err)
		}
	}
}

// TestStepTiming averages decode steps every N, prompts left out, the
// host's time between steps included.
func TestStepTiming(t *testing.T) {
	var out strings.Builder
	st := &stepTiming{every: 2, out: &out}
	ms := time.Millisecond
	st.add(4, 4, 1*ms, 10*ms, 0, 2*ms)
	st.add(4, 900, 5*ms, 50*ms, 0, 9*ms) // a prompt's step: left out
	if out.Len() != 0 {
		t.Fatalf("printed before %d decode steps: %q", st.every, out.String())
	}
	st.add(6, 6, 3*ms, 20*ms, 0, 4*ms)
	want := "step timing: 2 decode steps of 5.0 sequences: reserve 2.000 ms, forward+sample 15.000 ms, done 0.000 ms, host between steps 3.000 ms\n"
	if out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
	if st.steps != 0 || st.between != 0 {
		t.Errorf("not reset after printing: %+v", st)
	}
}
