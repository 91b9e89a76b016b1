package sample

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// runStop feeds chunks to a filter and returns what it emitted, with Flush
// appended, and whether it stopped.
func runStop(stops, chunks []string) (out []string, stopped bool) {
	f := NewStopFilter(stops)
	for _, c := range chunks {
		e, st := f.Add(c)
		out = append(out, e)
		if st {
			if e2, st2 := f.Add("more"); e2 != "" || !st2 {
				out = append(out, "<after stop: "+e2+">")
			}
			if e2 := f.Flush(); e2 != "" || !f.Stopped() {
				out = append(out, "<flush after stop: "+e2+">")
			}
			return out, true
		}
	}
	out = append(out, f.Flush())
	return out, f.Stopped()
}

// refStop is the definition: the whole text cut at the earliest occurrence
// of any non-empty stop.
func refStop(text string, stops []string) (string, bool) {
	first := -1
	for _, s := range stops {
		if s == "" {
			continue
		}
		if i := strings.Index(text, s); i >= 0 && (first < 0 || i < first) {
			first = i
		}
	}
	if first < 0 {
		return text, false
	}
	return text[:first], true
}

func TestStopFilter(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stops   []string
		chunks  []string
		want    []string // what each Add returned, then Flush unless stopped
		stopped bool
	}{
		{"no stops passes through", nil, []string{"ab", "c"}, []string{"ab", "c", ""}, false},
		{"empty stops ignored", []string{"", ""}, []string{"ab", "c"}, []string{"ab", "c", ""}, false},
		{"no match", []string{"xyz"}, []string{"hello ", "world"}, []string{"hello ", "world", ""}, false},
		{"stop inside one chunk", []string{"STOP"}, []string{"abSTOPcd"}, []string{"ab"}, true},
		{"stop at start", []string{"STOP"}, []string{"STOP"}, []string{""}, true},
		{"stop split over chunks", []string{"STOP"}, []string{"abS", "T", "O", "Pcd"}, []string{"ab", "", "", ""}, true},
		{"held then released", []string{"STOP"}, []string{"abST", "x"}, []string{"ab", "STx", ""}, false},
		{"held back at end flushed", []string{"STOP"}, []string{"abSTO"}, []string{"ab", "STO"}, false},
		{"spans held and new text", []string{"</s>"}, []string{"x<", "/", "s>y"}, []string{"x", "", ""}, true},
		{"repeated start char", []string{"aab"}, []string{"a", "a", "a", "b"}, []string{"", "", "a", ""}, true},
		{"one stop prefix of another, short first", []string{"ab", "abc"}, []string{"xab"}, []string{"x"}, true},
		{"one stop prefix of another, long first", []string{"abc", "ab"}, []string{"x", "a", "bc"}, []string{"x", "", ""}, true},
		// "abc" would start before "b": wait for the next text to decide.
		{"earlier partial stop wins", []string{"abc", "b"}, []string{"ab", "c"}, []string{"", ""}, true},
		{"earlier partial stop fails", []string{"abc", "b"}, []string{"ab", "x"}, []string{"", "a"}, true},
		{"stop found only at flush", []string{"abc", "b"}, []string{"zab"}, []string{"z", "a"}, true},
		{"earliest of several", []string{"c", "b", "d"}, []string{"xdcb"}, []string{"x"}, true},
		{"after stop, Add gives nothing", []string{"."}, []string{"a.b", "c"}, []string{"a"}, true},
		{"multibyte stop", []string{"世界"}, []string{"你好世", "界!"}, []string{"你好", ""}, true},
		{"multibyte stop split inside a character", []string{"é!"}, []string{"caf\xc3", "\xa9", "!"}, []string{"caf", "", ""}, true},
		{"incomplete character held", nil, []string{"a\xe4\xb8", "\x96b"}, []string{"a", "世b", ""}, false},
		{"emoji split four ways", []string{"x"}, []string{"\xf0", "\x9f", "\x99", "\x82"}, []string{"", "", "", "🙂", ""}, false},
		{"incomplete character flushed", nil, []string{"a\xe4\xb8"}, []string{"a", "\xe4\xb8"}, false},
		{"invalid byte not held", nil, []string{"a\xff"}, []string{"a\xff", ""}, false},
		{"stop that is not UTF-8 never splits a character", []string{"\xa9!"}, []string{"caf\xc3\xa9", "?"}, []string{"caf", "é?", ""}, false},
		{"empty chunks", []string{"ab"}, []string{"", "a", "", "b"}, []string{"", "", "", ""}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, stopped := runStop(tc.stops, tc.chunks)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") || stopped != tc.stopped {
				t.Errorf("emitted %q stopped=%v, want %q stopped=%v", got, stopped, tc.want, tc.stopped)
			}
			full := strings.Join(tc.chunks, "")
			if want, wantStop := refStop(full, tc.stops); strings.Join(got, "") != want || stopped != wantStop {
				t.Errorf("concatenation %q stopped=%v, reference %q stopped=%v", strings.Join(got, ""), stopped, want, wantStop)
			}
		})
	}
}

// TestStopFilterRandom splits random texts over a small alphabet (so stops
// occur and overlap often) at random byte offsets, including inside
// characters, and checks the filter against refStop on the whole text.
func TestStopFilterRandom(t *testing.T) {
	s0 := rand.Uint64()
	t.Logf("seed %d", s0)
	rng := rand.New(rand.NewPCG(s0, 1))
	alphabet := []string{"a", "b", "c", "é", "世", "🙂", " "}
	word := func(maxRunes int) string {
		var sb strings.Builder
		for range 1 + rng.IntN(maxRunes) {
			sb.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		return sb.String()
	}
	for iter := range 5000 {
		text := ""
		if rng.IntN(20) != 0 {
			text = word(60)
		}
		stops := make([]string, rng.IntN(5))
		for i := range stops {
			if rng.IntN(10) == 0 {
				continue // empty stop
			}
			stops[i] = word(4)
			if rng.IntN(3) == 0 && i > 0 && stops[i-1] != "" { // a prefix or extension of another
				stops[i] = stops[i-1] + word(2)
			}
		}
		var chunks []string
		for rest := text; rest != ""; {
			n := min(len(rest), rng.IntN(8))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		got, stopped := runStop(stops, chunks)
		want, wantStop := refStop(text, stops)
		if strings.Join(got, "") != want || stopped != wantStop {
			t.Fatalf("iter %d: stops %q, chunks %q:\nemitted %q stopped=%v\nwant %q stopped=%v",
				iter, stops, chunks, got, stopped, want, wantStop)
		}
		for _, e := range got {
			if !utf8.ValidString(e) {
				t.Fatalf("iter %d: stops %q, chunks %q: emitted %q splits a character", iter, stops, chunks, e)
			}
		}
	}
}
