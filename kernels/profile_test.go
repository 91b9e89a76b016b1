//go:build cgo

package kernels

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// TestProfileSummarize checks how launches' times add up by kernel, and
// their order (the recording itself needs a GPU: bench/forward
// --kernel-profile).
func TestProfileSummarize(t *testing.T) {
	us := func(n int) time.Duration { return time.Duration(n) * time.Microsecond }
	p := summarize(us(100), []ProfileEntry{
		{Name: "rmsnorm", Calls: 1, Time: us(5)}, {Name: "gemm 32x4096x4096", Calls: 1, Time: us(17)},
		{Name: "rmsnorm", Calls: 1, Time: us(6)}, {Name: "add", Calls: 1, Time: us(11)},
		{Name: "gemm 32x4096x4096", Calls: 1, Time: us(16)},
	})
	want := []ProfileEntry{
		{Name: "gemm 32x4096x4096", Calls: 2, Time: us(33)},
		{Name: "add", Calls: 1, Time: us(11)}, {Name: "rmsnorm", Calls: 2, Time: us(11)}, // ties by name
	}
	if p.Span != us(100) || p.Busy != us(55) || !slices.Equal(p.Entries, want) {
		t.Errorf("summarize: span %v, busy %v, entries %+v; want 100µs, 55µs, %+v", p.Span, p.Busy, p.Entries, want)
	}
	if e := summarize(0, nil); e.Busy != 0 || len(e.Entries) != 0 {
		t.Errorf("no launches: %+v", e)
	}
}

// TestProfileMarkdown checks the per-step arithmetic of a profile's table.
func TestProfileMarkdown(t *testing.T) {
	p := Profile{Span: 40 * time.Millisecond, Busy: 30 * time.Millisecond, Entries: []ProfileEntry{
		{Name: "split_paged_v2_g4", Calls: 64, Time: 20 * time.Millisecond},
		{Name: "gemm 32x4096x4096", Calls: 64, Time: 10 * time.Millisecond},
	}}
	got := p.Markdown(2)
	for _, want := range []string{
		"device busy 15.000 ms of a 20.000 ms span per step (75%)",
		"| split_paged_v2_g4 | 32.0 | 10.000 | 66.7% | 312.5 |",
		"| gemm 32x4096x4096 | 32.0 | 5.000 | 33.3% | 156.2 |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Markdown(2) lacks %q:\n%s", want, got)
		}
	}
	if empty := (Profile{}).Markdown(0); !strings.Contains(empty, "device busy 0.000 ms") || strings.Contains(empty, "idle") {
		t.Errorf("an empty profile: %q", empty)
	}
	// The idle gaps, summed by the kernel they preceded, largest first.
	idle, total := byName([]ProfileEntry{
		{Name: betweenSteps, Calls: 1, Time: 3 * time.Millisecond}, {Name: "rmsnorm", Calls: 1, Time: time.Millisecond},
		{Name: betweenSteps, Calls: 1, Time: 2 * time.Millisecond}, {Name: "widen_fp8", Calls: 1, Time: 2 * time.Millisecond},
	})
	if total != 8*time.Millisecond || len(idle) != 3 || idle[0].Name != betweenSteps || idle[0].Calls != 2 || idle[1].Name != "widen_fp8" {
		t.Errorf("idle by kernel: %+v, total %v", idle, total)
	}
	p.Idle = idle
	got = p.Markdown(2)
	for _, want := range []string{
		"device idle 4.000 ms per step",
		"| (between steps) | 1.0 | 2.500 |",
		"| widen_fp8 | 0.5 | 1.000 |",
		"| rmsnorm | 0.5 | 0.500 |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Markdown(2) with idle gaps lacks %q:\n%s", want, got)
		}
	}
}
