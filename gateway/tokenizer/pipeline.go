package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// piece is one span of text moving through the encode pipeline.
type piece struct {
	s string
	// mapped: s holds raw bytes that stand for their byte-level characters
	// (the ByteLevel pre-tokenizer ran). The model maps them itself; a later
	// pre-tokenizer that needs the characters maps them first.
	mapped bool
	// first: the piece starts at offset 0 of the original input, which is
	// what Metaspace's prepend_scheme "first" asks.
	first bool
}

// text returns the piece's characters, mapping a byte-level piece.
func (p piece) text() string {
	if p.mapped {
		return byteLevelEncode(p.s)
	}
	return p.s
}

// ---- Patterns ----

// pattern finds the non-overlapping matches of a Split or Replace pattern,
// as byte offsets [start, end) in order.
type pattern interface {
	find(s string) ([][2]int, error)
}

// literal is a String pattern.
type literal string

func (l literal) find(s string) ([][2]int, error) {
	var out [][2]int
	if l == "" {
		// HF compiles it to an empty regex, which matches between every
		// two characters.
		for i := range s {
			out = append(out, [2]int{i, i})
		}
		return append(out, [2]int{len(s), len(s)}), nil
	}
	for i := 0; ; {
		j := strings.Index(s[i:], string(l))
		if j < 0 {
			return out, nil
		}
		out = append(out, [2]int{i + j, i + j + len(l)})
		i += j + len(l)
	}
}

// regex is a Regex pattern run by regexp2, a backtracking engine like the
// Oniguruma that HF tokenizers uses: it has the look-ahead "\s+(?!\S)" of
// the GPT-2 and Llama 3 patterns, which Go's regexp lacks, and its \s,
// \p{L} and \p{N} are the Unicode ones. regexp2 reports positions in runes;
// find converts them to bytes.
type regex struct {
	re *regexp2.Regexp
	// fast, when set, is a hand-written matcher for a well-known pattern
	// that gives the same matches much faster (see fastsplit.go).
	fast func(s string, yield func(a, b int) bool)
}

func compileRegex(expr string) (*regex, error) {
	re, err := regexp2.Compile(expr, regexp2.None)
	if err != nil {
		return nil, err
	}
	return &regex{re: re, fast: fastSplitter(expr)}, nil
}

func (r *regex) find(s string) ([][2]int, error) {
	if r.fast != nil {
		var out [][2]int
		r.fast(s, func(a, b int) bool {
			out = append(out, [2]int{a, b})
			return true
		})
		return out, nil
	}
	return r.slowFind(s)
}

func (r *regex) slowFind(s string) ([][2]int, error) {
	if s == "" {
		return nil, nil
	}
	runes := []rune(s)
	// offs[i] is the byte offset of rune i; an invalid byte is one rune, as
	// in the []rune conversion.
	offs := make([]int, len(runes)+1)
	for i, b := 0, 0; i < len(runes); i++ {
		offs[i] = b
		_, n := utf8.DecodeRuneInString(s[b:])
		b += n
	}
	offs[len(runes)] = len(s)
	var out [][2]int
	m, err := r.re.FindRunesMatch(runes)
	for m != nil && err == nil {
		a, b := offs[m.Index], offs[m.Index+m.Length]
		// Like the onig crate's iterator, drop an empty match right where
		// the previous match ended.
		if a != b || len(out) == 0 || out[len(out)-1][1] != a {
			out = append(out, [2]int{a, b})
		}
		m, err = r.re.FindNextMatch(m)
	}
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", r.re.String(), err)
	}
	return out, nil
}

func parsePattern(raw json.RawMessage) (pattern, error) {
	var p patternJSON
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, err
	}
	switch {
	case p.String != nil:
		return literal(*p.String), nil
	case p.Regex != nil:
		r, err := compileRegex(*p.Regex)
		if err != nil {
			return nil, fmt.Errorf("regex %q: %w", *p.Regex, err)
		}
		return r, nil
	}
	return nil, fmt.Errorf("pattern %s is neither String nor Regex", abbrev(raw))
}

// replaceAll replaces every match of p in s with content.
func replaceAll(p pattern, s, content string) (string, error) {
	if l, ok := p.(literal); ok {
		return strings.ReplaceAll(s, string(l), content), nil
	}
	ms, err := p.find(s)
	if err != nil || len(ms) == 0 {
		return s, err
	}
	var sb strings.Builder
	prev := 0
	for _, m := range ms {
		sb.WriteString(s[prev:m[0]])
		sb.WriteString(content)
		prev = m[1]
	}
	sb.WriteString(s[prev:])
	return sb.String(), nil
}

// ---- Normalizers ----

type normalizer interface {
	normalize(s string) (string, error)
}

type normSequence []normalizer

func (q normSequence) normalize(s string) (string, error) {
	var err error
	for _, n := range q {
		if s, err = n.normalize(s); err != nil {
			return "", err
		}
	}
	return s, nil
}

// normPrepend prepends to non-empty text.
type normPrepend string

func (p normPrepend) normalize(s string) (string, error) {
	if s == "" {
		return s, nil
	}
	return string(p) + s, nil
}

type normReplace struct {
	pat     pattern
	content string
}

func (r normReplace) normalize(s string) (string, error) { return replaceAll(r.pat, s, r.content) }

// parseSequence parses the parts listed under field of a Sequence
// component with parse, leaving out parts that parse to nothing (nil).
func parseSequence[T comparable](raw json.RawMessage, field string, parse func(json.RawMessage) (T, error)) ([]T, error) {
	var q map[string]json.RawMessage
	if err := json.Unmarshal(raw, &q); err != nil {
		return nil, err
	}
	var parts []json.RawMessage
	if list, ok := q[field]; ok {
		if err := json.Unmarshal(list, &parts); err != nil {
			return nil, err
		}
	}
	var seq []T
	var none T
	for _, r := range parts {
		p, err := parse(r)
		if err != nil {
			return nil, err
		}
		if p != none {
			seq = append(seq, p)
		}
	}
	return seq, nil
}

func parseNormalizer(raw json.RawMessage) (normalizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	var t typed
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, err
	}
	switch t.Type {
	case "Sequence":
		seq, err := parseSequence(raw, "normalizers", parseNormalizer)
		return normSequence(seq), err
	case "Prepend":
		var p struct {
			Prepend string `json:"prepend"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, err
		}
		return normPrepend(p.Prepend), nil
	case "Replace":
		var r struct {
			Pattern json.RawMessage `json:"pattern"`
			Content string          `json:"content"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, err
		}
		pat, err := parsePattern(r.Pattern)
		if err != nil {
			return nil, fmt.Errorf("Replace: %w", err)
		}
		return normReplace{pat: pat, content: r.Content}, nil
	}
	return nil, fmt.Errorf("normalizer type %q: %w", t.Type, ErrUnsupported)
}

// ---- Pre-tokenizers ----

// preTokenizer cuts a piece into words, calling emit for each non-empty
// one in order; an error from emit stops it and is returned.
type preTokenizer interface {
	each(p piece, emit func(piece) error) error
}

type preSequence []preTokenizer

func (q preSequence) each(p piece, emit func(piece) error) error {
	if len(q) == 0 {
		return emit(p)
	}
	rest := q[1:]
	return q[0].each(p, func(x piece) error { return rest.each(x, emit) })
}

// Split delimiter behaviours, named as in tokenizer.json.
const (
	behRemoved            = "Removed"
	behIsolated           = "Isolated"
	behMergedWithPrevious = "MergedWithPrevious"
	behMergedWithNext     = "MergedWithNext"
	behContiguous         = "Contiguous"
)

type preSplit struct {
	pat      pattern
	behavior string
	invert   bool
}

func (sp preSplit) each(p piece, emit func(piece) error) error {
	s := p.text()
	q := piece{s: s, first: p.first}
	if r, ok := sp.pat.(*regex); ok && r.fast != nil && !sp.invert &&
		(sp.behavior == behIsolated || sp.behavior == behRemoved) {
		// The fast matchers cover the text with matches: Isolated emits
		// each, Removed none.
		if sp.behavior == behRemoved {
			return nil
		}
		return eachFast(r, q, emit)
	}
	ms, err := sp.pat.find(s)
	if err != nil {
		return err
	}
	for _, w := range splitBy(nil, q, ms, sp.behavior, sp.invert) {
		if err := emit(w); err != nil {
			return err
		}
	}
	return nil
}

// eachFast emits the matches of a fast matcher as pieces of p.
func eachFast(r *regex, p piece, emit func(piece) error) error {
	var err error
	r.fast(p.s, func(a, b int) bool {
		err = emit(piece{s: p.s[a:b], mapped: p.mapped, first: p.first && a == 0})
		return err == nil
	})
	return err
}

// splitBy cuts p at the matches ms following HF's NormalizedString::split.
func splitBy(dst []piece, p piece, ms [][2]int, behavior string, invert bool) []piece {
	s := p.s
	if s == "" {
		return dst
	}
	// Cover the string with (span, isMatch) as HF's find_matches does.
	type span struct {
		a, b  int
		match bool
	}
	spans := make([]span, 0, 2*len(ms)+1)
	prev := 0
	for _, m := range ms {
		if prev != m[0] {
			spans = append(spans, span{prev, m[0], false})
		}
		spans = append(spans, span{m[0], m[1], true})
		prev = m[1]
	}
	if prev != len(s) {
		spans = append(spans, span{prev, len(s), false})
	}
	if invert {
		for i := range spans {
			spans[i].match = !spans[i].match
		}
	}
	type cut struct {
		a, b   int
		remove bool
	}
	var cuts []cut
	switch behavior {
	case behIsolated:
		for _, sp := range spans {
			cuts = append(cuts, cut{sp.a, sp.b, false})
		}
	case behRemoved:
		for _, sp := range spans {
			cuts = append(cuts, cut{sp.a, sp.b, sp.match})
		}
	case behContiguous:
		prevMatch := false
		for _, sp := range spans {
			if sp.match == prevMatch && len(cuts) > 0 {
				cuts[len(cuts)-1].b = sp.b
			} else {
				cuts = append(cuts, cut{sp.a, sp.b, false})
			}
			prevMatch = sp.match
		}
	case behMergedWithPrevious:
		prevMatch := false
		for _, sp := range spans {
			if sp.match && !prevMatch && len(cuts) > 0 {
				cuts[len(cuts)-1].b = sp.b
			} else {
				cuts = append(cuts, cut{sp.a, sp.b, false})
			}
			prevMatch = sp.match
		}
	case behMergedWithNext:
		prevMatch := false
		for i := len(spans) - 1; i >= 0; i-- {
			sp := spans[i]
			if sp.match && !prevMatch && len(cuts) > 0 {
				cuts[len(cuts)-1].a = sp.a
			} else {
				cuts = append(cuts, cut{sp.a, sp.b, false})
			}
			prevMatch = sp.match
		}
		for i, j := 0, len(cuts)-1; i < j; i, j = i+1, j-1 {
			cuts[i], cuts[j] = cuts[j], cuts[i]
		}
	}
	for _, c := range cuts {
		if c.remove || c.a == c.b {
			continue
		}
		dst = append(dst, piece{s: s[c.a:c.b], mapped: p.mapped, first: p.first && c.a == 0})
	}
	return dst
}

// gpt2Pattern is the split of HF's ByteLevel pre-tokenizer with use_regex.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

type preByteLevel struct {
	addPrefixSpace bool
	re             *regex // nil without use_regex
}

func (bl preByteLevel) each(p piece, emit func(piece) error) error {
	s := p.s
	if p.mapped {
		// Already byte-level: map again, as HF would (the characters of
		// the mapped text are what it sees).
		s = byteLevelEncode(s)
	}
	if bl.addPrefixSpace && s != "" && s[0] != ' ' {
		s = " " + s
	}
	if s == "" {
		return nil
	}
	q := piece{s: s, mapped: true, first: p.first}
	if bl.re == nil {
		return emit(q)
	}
	if bl.re.fast != nil {
		return eachFast(bl.re, q, emit)
	}
	ms, err := bl.re.find(s)
	if err != nil {
		return err
	}
	for _, w := range splitBy(nil, q, ms, behIsolated, false) {
		if err := emit(w); err != nil {
			return err
		}
	}
	return nil
}

// Metaspace prepend schemes.
const (
	prependAlways = "always"
	prependFirst  = "first"
	prependNever  = "never"
)

type preMetaspace struct {
	repl    string
	prepend string
	splitOn bool
}

func (ms preMetaspace) each(p piece, emit func(piece) error) error {
	s := strings.ReplaceAll(p.text(), " ", ms.repl)
	switch ms.prepend {
	case prependAlways:
		if !strings.HasPrefix(s, ms.repl) && s != "" {
			s = ms.repl + s
		}
	case prependFirst:
		if !strings.HasPrefix(s, ms.repl) && s != "" && p.first {
			s = ms.repl + s
		}
	}
	if s == "" {
		return nil
	}
	q := piece{s: s, first: p.first}
	if !ms.splitOn {
		return emit(q)
	}
	found, _ := literal(ms.repl).find(s)
	for _, w := range splitBy(nil, q, found, behMergedWithNext, false) {
		if err := emit(w); err != nil {
			return err
		}
	}
	return nil
}

// parseMetaspace reads the Metaspace options shared by the pre-tokenizer
// and the decoder, with HF's defaults and its legacy add_prefix_space.
func parseMetaspace(raw json.RawMessage) (preMetaspace, error) {
	var m struct {
		Replacement    string  `json:"replacement"`
		PrependScheme  *string `json:"prepend_scheme"`
		AddPrefixSpace *bool   `json:"add_prefix_space"`
		Split          *bool   `json:"split"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return preMetaspace{}, err
	}
	if utf8.RuneCountInString(m.Replacement) != 1 {
		return preMetaspace{}, fmt.Errorf("Metaspace replacement %q is not one character: %w", m.Replacement, ErrCorrupt)
	}
	ms := preMetaspace{repl: m.Replacement, prepend: prependAlways, splitOn: true}
	if m.PrependScheme != nil {
		ms.prepend = *m.PrependScheme
	}
	switch ms.prepend {
	case prependAlways, prependFirst, prependNever:
	default:
		return preMetaspace{}, fmt.Errorf("Metaspace prepend_scheme %q: %w", ms.prepend, ErrUnsupported)
	}
	if m.AddPrefixSpace != nil && !*m.AddPrefixSpace {
		if m.PrependScheme != nil && ms.prepend != prependNever {
			return preMetaspace{}, fmt.Errorf("Metaspace: add_prefix_space does not match declared prepend_scheme: %w", ErrCorrupt)
		}
		ms.prepend = prependNever
	}
	if m.Split != nil {
		ms.splitOn = *m.Split
	}
	return ms, nil
}

func parsePreTokenizer(raw json.RawMessage) (preTokenizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	var t typed
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, err
	}
	switch t.Type {
	case "Sequence":
		seq, err := parseSequence(raw, "pretokenizers", parsePreTokenizer)
		return preSequence(seq), err
	case "Split":
		var sp struct {
			Pattern  json.RawMessage `json:"pattern"`
			Behavior string          `json:"behavior"`
			Invert   bool            `json:"invert"`
		}
		if err := json.Unmarshal(raw, &sp); err != nil {
			return nil, err
		}
		switch sp.Behavior {
		case behRemoved, behIsolated, behMergedWithPrevious, behMergedWithNext, behContiguous:
		default:
			return nil, fmt.Errorf("Split behavior %q: %w", sp.Behavior, ErrUnsupported)
		}
		pat, err := parsePattern(sp.Pattern)
		if err != nil {
			return nil, fmt.Errorf("Split: %w", err)
		}
		return preSplit{pat: pat, behavior: sp.Behavior, invert: sp.Invert}, nil
	case "ByteLevel":
		var bl struct {
			AddPrefixSpace *bool `json:"add_prefix_space"`
			UseRegex       *bool `json:"use_regex"`
		}
		if err := json.Unmarshal(raw, &bl); err != nil {
			return nil, err
		}
		p := preByteLevel{addPrefixSpace: bl.AddPrefixSpace == nil || *bl.AddPrefixSpace}
		if bl.UseRegex == nil || *bl.UseRegex {
			re, err := compileRegex(gpt2Pattern)
			if err != nil {
				return nil, err
			}
			p.re = re
		}
		return p, nil
	case "Metaspace":
		return parseMetaspace(raw)
	}
	return nil, fmt.Errorf("pre_tokenizer type %q: %w", t.Type, ErrUnsupported)
}
