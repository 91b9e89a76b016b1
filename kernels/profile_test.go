//go:build cgo

package kernels

import (
	"strings"
	"testing"
	"time"
)

// TestProfileMarkdown checks the per-step arithmetic of a profile's table
// (the recording itself needs a GPU: bench/forward --kernel-profile).
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
	if empty := (Profile{}).Markdown(0); !strings.Contains(empty, "device busy 0.000 ms") {
		t.Errorf("an empty profile: %q", empty)
	}
}
