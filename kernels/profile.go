//go:build cgo

package kernels

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/kvd-project/kvd/kernels/cuda"
)

// kernelProfile records a timing event pair around every kernel and GEMM
// the backend queues while it is on (StartProfile), for a per-kernel
// account of the device's time (for developers: bench/forward
// --kernel-profile). The events sit on the same stream as the work, so the
// sum of the pairs is the time the device was busy and the span from the
// first to the last is the time it took; the difference is what the
// device waited on the host for (launches, syncs) or spent on work not
// timed (uploads, memsets). It assumes one goroutine launches while it is
// on (the forward pass; an embedded kvd's eviction runs between steps):
// pairs recorded from two at once would overlap and count twice.
type kernelProfile struct {
	recs     []profRec
	markNext bool // the next record is a step's first (MarkProfileStep)
}

type profRec struct {
	name  string
	a, b  cuda.Event
	first bool // a step's first kernel
}

// betweenSteps names, in Profile.Idle, the device's idle time before a
// step's first kernel: the host's work between steps.
const betweenSteps = "(between steps)"

// ProfileEntry is one kernel's (or GEMM shape's) share of a profile.
type ProfileEntry struct {
	Name  string
	Calls int
	Time  time.Duration // device time, summed over calls
}

// Profile is where the device's time went between StartProfile and
// StopProfile.
type Profile struct {
	Span    time.Duration // first kernel's start to the last one's end
	Busy    time.Duration // the sum of every kernel's time
	Entries []ProfileEntry
	// Idle is the device's time between one recorded kernel's end and
	// the next one's start, by the kernel it waited to start (betweenSteps
	// for a step's first, MarkProfileStep): the host's launch work, syncs,
	// and work not timed (uploads, memsets).
	Idle []ProfileEntry
}

// StartProfile starts recording every kernel's device time.
func (c *CUDA) StartProfile() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.prof == nil {
		c.prof = &kernelProfile{}
	}
	c.profOn.Store(true)
}

// MarkProfileStep says that the next kernel starts a step, so that the
// idle time before it counts as between steps (Profile.Idle).
func (c *CUDA) MarkProfileStep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.prof != nil {
		c.prof.markNext = true
	}
}

// profiling reports whether a profile is on, without the lock: every
// launch asks.
func (c *CUDA) profiling() bool { return c.profOn.Load() }

// profBegin records the start event of a kernel named name, or returns -1
// when no profile is on.
func (c *CUDA) profBegin(name string) int {
	if !c.profiling() {
		return -1
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.prof
	if p == nil {
		return -1
	}
	r := profRec{name: name, first: p.markNext}
	p.markNext = false
	for _, e := range []*cuda.Event{&r.a, &r.b} {
		var err error
		if *e, err = c.ctx.NewTimingEvent(); err != nil {
			c.fail1(err)
			return -1
		}
	}
	c.fail1(c.ctx.Record(r.a, cuda.Stream{}))
	p.recs = append(p.recs, r)
	return len(p.recs) - 1
}

// profEnd records the end event of the kernel profBegin numbered i.
func (c *CUDA) profEnd(i int) {
	if i < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.prof != nil && i < len(c.prof.recs) {
		c.fail1(c.ctx.Record(c.prof.recs[i].b, cuda.Stream{}))
	}
}

// StopProfile waits for the recorded work and returns where its time
// went, largest share first; recording stops.
func (c *CUDA) StopProfile() (Profile, error) {
	c.mu.Lock()
	p := c.prof
	c.prof = nil
	c.profOn.Store(false)
	c.mu.Unlock()
	var out Profile
	if p == nil || len(p.recs) == 0 {
		return out, nil
	}
	defer func() {
		for _, r := range p.recs {
			c.ctx.DestroyEvent(r.a)
			c.ctx.DestroyEvent(r.b)
		}
	}()
	last := p.recs[len(p.recs)-1]
	if err := c.ctx.SyncEvent(last.b); err != nil {
		return out, err
	}
	var err error
	if out.Span, err = c.ctx.Elapsed(p.recs[0].a, last.b); err != nil {
		return out, err
	}
	times := make([]ProfileEntry, len(p.recs))
	var gaps []ProfileEntry
	for i, r := range p.recs {
		d, err := c.ctx.Elapsed(r.a, r.b)
		if err != nil {
			return out, fmt.Errorf("kernel %s: %w", r.name, err)
		}
		times[i] = ProfileEntry{Name: r.name, Calls: 1, Time: d}
		if i == 0 {
			continue
		}
		g, err := c.ctx.Elapsed(p.recs[i-1].b, r.a)
		if err != nil {
			return out, fmt.Errorf("before kernel %s: %w", r.name, err)
		}
		name := r.name
		if r.first {
			name = betweenSteps
		}
		gaps = append(gaps, ProfileEntry{Name: name, Calls: 1, Time: max(g, 0)})
	}
	out = summarize(out.Span, times)
	out.Idle, _ = byName(gaps)
	return out, nil
}

// summarize sums the launches' times by name into a profile of span,
// largest share first.
func summarize(span time.Duration, launches []ProfileEntry) Profile {
	out := Profile{Span: span}
	out.Entries, out.Busy = byName(launches)
	return out
}

// byName sums entries by name, largest time first (ties by name), and
// returns their total time.
func byName(entries []ProfileEntry) ([]ProfileEntry, time.Duration) {
	by := map[string]*ProfileEntry{}
	var total time.Duration
	for _, l := range entries {
		e := by[l.Name]
		if e == nil {
			e = &ProfileEntry{Name: l.Name}
			by[l.Name] = e
		}
		e.Calls += l.Calls
		e.Time += l.Time
		total += l.Time
	}
	var out []ProfileEntry
	for _, e := range by {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b ProfileEntry) int {
		return cmp.Or(cmp.Compare(b.Time, a.Time), strings.Compare(a.Name, b.Name))
	})
	return out, total
}

// Markdown renders p as a table, times divided by per (the steps the
// profile spans, so the rows read per step).
func (p Profile) Markdown(per int) string {
	per = max(per, 1)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()*1000/float64(per)) }
	var b strings.Builder
	fmt.Fprintf(&b, "device busy %s ms of a %s ms span per step (%.0f%%)\n\n", ms(p.Busy), ms(p.Span), 100*p.Busy.Seconds()/max(p.Span.Seconds(), 1e-12))
	b.WriteString("| kernel | calls per step | ms per step | share of busy | µs per call |\n|---|---|---|---|---|\n")
	for _, e := range p.Entries {
		fmt.Fprintf(&b, "| %s | %.1f | %s | %.1f%% | %.1f |\n", e.Name, float64(e.Calls)/float64(per), ms(e.Time),
			100*e.Time.Seconds()/max(p.Busy.Seconds(), 1e-12), e.Time.Seconds()*1e6/float64(e.Calls))
	}
	if len(p.Idle) > 0 {
		var idle time.Duration
		for _, e := range p.Idle {
			idle += e.Time
		}
		fmt.Fprintf(&b, "\ndevice idle %s ms per step, by the kernel it waited to start (%s: a step's first)\n\n", ms(idle), betweenSteps)
		b.WriteString("| before | gaps per step | ms per step |\n|---|---|---|\n")
		for _, e := range p.Idle[:min(len(p.Idle), 12)] {
			fmt.Fprintf(&b, "| %s | %.1f | %s |\n", e.Name, float64(e.Calls)/float64(per), ms(e.Time))
		}
	}
	return b.String()
}
