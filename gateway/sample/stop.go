package sample

import (
	"strings"
	"unicode/utf8"
)

// StopFilter applies OpenAI stop strings to streamed text: the output ends
// just before the first occurrence of any stop string in the whole text,
// and the stop string itself is never returned. It holds back text that
// might still turn out to be (or to precede) a stop, and a UTF-8 character
// that has not fully arrived, so that the concatenation of everything Add
// and Flush return is exactly the full text cut at
// min over stops of strings.Index(full, stop).
//
// "First occurrence" is by start position: with stops "abc" and "b" and the
// text "ab", the filter cannot stop at "b" yet, because "abc" would start
// earlier; it waits for the next text (at most the longest stop's length).
//
// A StopFilter belongs to one request and is not safe for concurrent use.
type StopFilter struct {
	stops   []string
	held    string // text not yet returned
	stopped bool
}

// NewStopFilter returns a filter for stops; empty strings are ignored.
func NewStopFilter(stops []string) *StopFilter {
	f := &StopFilter{}
	for _, s := range stops {
		if s != "" {
			f.stops = append(f.stops, s)
		}
	}
	return f
}

// Add appends newly decoded text and returns the text that is now safe to
// emit. stopped reports that a stop string was found: emit then ends right
// before it, and later Adds return "", true.
func (f *StopFilter) Add(text string) (emit string, stopped bool) {
	if f.stopped {
		return "", true
	}
	buf := f.held + text
	partial := len(buf) - f.partialStop(buf) // earliest start of a stop that may still complete
	if at := f.firstStop(buf); at >= 0 && at <= partial {
		f.held, f.stopped = "", true
		return buf[:at], true
	}
	cut := runeBoundary(buf, min(partial, completeUTF8(buf)))
	f.held = buf[cut:]
	return buf[:cut], false
}

// Flush returns whatever is still held back, at the end of generation. If
// the held text contains a stop string that was waiting on a possible
// earlier one, it is cut there and Stopped reports true.
func (f *StopFilter) Flush() string {
	if f.stopped {
		return ""
	}
	buf := f.held
	f.held = ""
	if at := f.firstStop(buf); at >= 0 {
		f.stopped = true
		return buf[:at]
	}
	return buf
}

// Stopped reports whether a stop string has been found, by Add or Flush;
// the server uses it for finish_reason "stop".
func (f *StopFilter) Stopped() bool { return f.stopped }

// firstStop returns the earliest start of a complete stop string in buf, or
// -1.
func (f *StopFilter) firstStop(buf string) int {
	first := -1
	for _, s := range f.stops {
		if i := strings.Index(buf, s); i >= 0 && (first < 0 || i < first) {
			first = i
		}
	}
	return first
}

// partialStop returns the length of the longest suffix of buf that is a
// proper prefix of some stop string: text that may yet become a stop.
func (f *StopFilter) partialStop(buf string) int {
	longest := 0
	for _, s := range f.stops {
		for n := min(len(s)-1, len(buf)); n > longest; n-- {
			if strings.HasSuffix(buf, s[:n]) {
				longest = n
				break
			}
		}
	}
	return longest
}

// completeUTF8 returns the length of buf without a trailing UTF-8 sequence
// that is incomplete but could still be completed by more bytes. Invalid
// bytes are not held: waiting would not make them valid.
func completeUTF8(buf string) int {
	// A character is at most utf8.UTFMax bytes, so its start is among the
	// last UTFMax-1 bytes if it is unfinished.
	for i := len(buf) - 1; i >= 0 && i >= len(buf)-(utf8.UTFMax-1); i-- {
		if utf8.RuneStart(buf[i]) {
			if !utf8.FullRuneInString(buf[i:]) {
				return i
			}
			return len(buf)
		}
	}
	return len(buf)
}

// runeBoundary moves cut back to the start of the character that contains
// buf[cut], if cut falls inside one. This matters only for stop strings that
// are not valid UTF-8 themselves; holding back more is always safe.
func runeBoundary(buf string, cut int) int {
	for i := cut; i >= 0 && i > cut-utf8.UTFMax && i < len(buf); i-- {
		if utf8.RuneStart(buf[i]) {
			if _, size := utf8.DecodeRuneInString(buf[i:]); i+size > cut {
				return i
			}
			return cut
		}
	}
	return cut
}
