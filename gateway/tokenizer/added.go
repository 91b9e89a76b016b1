package tokenizer

import (
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// addedToken is an entry of tokenizer.json's added_tokens.
type addedToken struct {
	id         int32
	content    string
	special    bool
	singleWord bool
	lstrip     bool
	rstrip     bool
	normalized bool
	// match is what is searched for: content, or for a normalized token the
	// normalizer's output for it (searched in normalized text).
	match string
	// decodeAs is the string the decoder gets for this id: HF decodes a
	// normalized token from its normalized form.
	decodeAs string
}

// addedMatcher finds added tokens in text the way HF's AddedVocabulary
// does: leftmost-longest, non-overlapping, then single_word, lstrip and
// rstrip adjust or discard each match. Few tokens and short patterns make a
// per-byte candidate list as fast as an Aho-Corasick automaton here.
type addedMatcher struct {
	byFirst [256][]*addedToken // by first byte of match, longest first
	any     bool
}

func newAddedMatcher(toks []*addedToken) *addedMatcher {
	m := &addedMatcher{}
	for _, t := range toks {
		if t.match == "" {
			continue
		}
		b := t.match[0]
		m.byFirst[b] = append(m.byFirst[b], t)
		m.any = true
	}
	for b := range m.byFirst {
		l := m.byFirst[b]
		sort.SliceStable(l, func(i, j int) bool { return len(l[i].match) > len(l[j].match) })
	}
	return m
}

// segment is a span of text, with the added token it is (nil for text).
type segment struct {
	piece
	tok *addedToken
}

// split cuts p into text and added-token segments; empty text is dropped.
func (m *addedMatcher) split(dst []segment, p piece) []segment {
	s := p.s
	if !m.any {
		if s != "" {
			dst = append(dst, segment{piece: p})
		}
		return dst
	}
	text := func(a, b int) {
		if a < b {
			dst = append(dst, segment{piece: piece{s: s[a:b], first: p.first && a == 0}})
		}
	}
	startOffset := 0
	for i := 0; i < len(s); {
		t := m.longestAt(s, i)
		if t == nil {
			i++
			continue
		}
		start, stop := i, i+len(t.match)
		i = stop // the scan resumes after the raw match, whatever happens to it
		if t.singleWord {
			startOK := start == 0 || !endsWithWord(s[:start])
			stopOK := stop == len(s) || !startsWithWord(s[stop:])
			if !startOK || !stopOK {
				continue
			}
		}
		if t.lstrip {
			start = max(len(strings.TrimRightFunc(s[:start], unicode.IsSpace)), startOffset)
		}
		if t.rstrip {
			stop += len(s[stop:]) - len(strings.TrimLeftFunc(s[stop:], unicode.IsSpace))
		}
		text(startOffset, start)
		dst = append(dst, segment{piece: piece{s: s[start:stop], first: p.first && start == 0}, tok: t})
		startOffset = stop
	}
	text(startOffset, len(s))
	return dst
}

func (m *addedMatcher) longestAt(s string, i int) *addedToken {
	for _, t := range m.byFirst[s[i]] {
		if strings.HasPrefix(s[i:], t.match) {
			return t
		}
	}
	return nil
}

// isWordRune is the Unicode \w of Rust's regex crate, which HF uses for
// single_word: Alphabetic (letters, Nl, Other_Alphabetic), marks, decimal
// digits, connector punctuation and the join controls.
func isWordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsMark(r) || unicode.Is(unicode.Nd, r) ||
		unicode.Is(unicode.Nl, r) || unicode.Is(unicode.Pc, r) ||
		unicode.Is(unicode.Other_Alphabetic, r) || r == 0x200C || r == 0x200D
}

func endsWithWord(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && isWordRune(r)
}

func startsWithWord(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && isWordRune(r)
}
