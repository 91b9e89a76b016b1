package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Hand-written matchers for the two split patterns that nearly every
// byte-level tokenizer uses. A backtracking engine spends most of the encode
// time on them; these give the same matches in one pass. Each follows the
// pattern's alternatives in order at each position, as the regex engine
// does, and fastsplit_test.go checks them against regexp2 on random text.
//
// One difference from regexp2 is deliberate: the case-insensitive
// contractions of the Llama 3 pattern match "'ſ" (U+017F, which Unicode
// case folding maps to "s") as Oniguruma, the engine HF tokenizers uses,
// does; regexp2 does not.

func fastSplitter(expr string) func(s string, yield func(a, b int) bool) {
	switch expr {
	case Llama3Pattern:
		return splitLlama3
	case gpt2Pattern:
		return splitGPT2
	}
	return nil
}

// Character classes of the patterns: \p{L}, \p{N}, \s and everything else.
const (
	clsOther = iota
	clsLetter
	clsNumber
	clsSpace
)

var asciiClass [128]uint8

func init() {
	for c := range 128 {
		asciiClass[c] = classOf(rune(c))
	}
}

func classOf(r rune) uint8 {
	switch {
	case unicode.IsLetter(r):
		return clsLetter
	case unicode.IsNumber(r):
		return clsNumber
	case unicode.IsSpace(r):
		return clsSpace
	}
	return clsOther
}

// at returns the class and width of the character at s[i].
func at(s string, i int) (uint8, int) {
	if c := s[i]; c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	return classOf(r), n
}

// runOf returns the end of the run of class cls starting at i.
func runOf(s string, i int, cls uint8) int {
	for i < len(s) {
		c, n := at(s, i)
		if c != cls {
			break
		}
		i += n
	}
	return i
}

// classAt is at for a position that may be the end of s.
func classAt(s string, i int) (uint8, int, bool) {
	if i >= len(s) {
		return 0, 0, false
	}
	c, n := at(s, i)
	return c, n, true
}

// contraction returns the length of a contraction at s[i] (which is '\”),
// or 0. fold makes the letters case-insensitive.
func contraction(s string, i int, fold bool) int {
	rest := s[i+1:]
	letter := func(k int, want byte) (int, bool) {
		if k >= len(rest) {
			return 0, false
		}
		c := rest[k]
		if c == want || (fold && c == want-'a'+'A') {
			return 1, true
		}
		if fold && want == 's' && k+1 < len(rest) && c == 0xC5 && rest[k+1] == 0xBF { // ſ
			return 2, true
		}
		return 0, false
	}
	try := func(word string) int {
		k := 0
		for j := 0; j < len(word); j++ {
			n, ok := letter(k, word[j])
			if !ok {
				return 0
			}
			k += n
		}
		return 1 + k
	}
	for _, w := range [...]string{"s", "t", "re", "ve", "m", "ll", "d"} {
		if n := try(w); n > 0 {
			return n
		}
	}
	return 0
}

// spaceEnd matches \s+(?!\S) then \s+ at a whitespace run [i, j).
func spaceEnd(s string, i, j, firstWidth int) int {
	if j == len(s) || j-i == firstWidth {
		// At the end the look-ahead holds; a single character falls to \s+.
		return j
	}
	// Give back the last character so that whitespace follows.
	_, n := utf8.DecodeLastRuneInString(s[:j])
	return j - n
}

// splitLlama3 matches
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
func splitLlama3(s string, yield func(a, b int) bool) {
	for i := 0; i < len(s); {
		end := llama3At(s, i)
		if !yield(i, end) {
			return
		}
		i = end
	}
}

func llama3At(s string, i int) int {
	c := s[i]
	cls, n := at(s, i)
	if c == '\'' {
		if k := contraction(s, i, true); k > 0 {
			return i + k
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if cls == clsLetter {
		return runOf(s, i, clsLetter)
	}
	if cls != clsNumber && c != '\r' && c != '\n' {
		if nc, _, ok := classAt(s, i+n); ok && nc == clsLetter {
			return runOf(s, i+n, clsLetter)
		}
	}
	// \p{N}{1,3}
	if cls == clsNumber {
		j := i + n
		for k := 1; k < 3 && j < len(s); k++ {
			nc, nn := at(s, j)
			if nc != clsNumber {
				break
			}
			j += nn
		}
		return j
	}
	// ' ?[^\s\p{L}\p{N}]+[\r\n]*'
	start := -1
	if c == ' ' {
		if nc, _, ok := classAt(s, i+1); ok && nc == clsOther {
			start = i + 1
		}
	} else if cls == clsOther {
		start = i
	}
	if start >= 0 {
		j := runOf(s, start, clsOther)
		for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
			j++
		}
		return j
	}
	// Whitespace from here on.
	j := runOf(s, i, clsSpace)
	// \s*[\r\n]+: up to the last line break of the run.
	for k := j - 1; k >= i; k-- {
		if s[k] == '\r' || s[k] == '\n' {
			return k + 1
		}
	}
	return spaceEnd(s, i, j, n)
}

// splitGPT2 matches
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
func splitGPT2(s string, yield func(a, b int) bool) {
	for i := 0; i < len(s); {
		end := gpt2At(s, i)
		if !yield(i, end) {
			return
		}
		i = end
	}
}

func gpt2At(s string, i int) int {
	c := s[i]
	cls, n := at(s, i)
	if c == '\'' {
		if k := contraction(s, i, false); k > 0 {
			return i + k
		}
	}
	// ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+' in that order.
	if c == ' ' {
		if nc, _, ok := classAt(s, i+1); ok && nc != clsSpace {
			return runOf(s, i+1, nc)
		}
	}
	if cls != clsSpace {
		return runOf(s, i, cls)
	}
	return spaceEnd(s, i, runOf(s, i, clsSpace), n)
}
