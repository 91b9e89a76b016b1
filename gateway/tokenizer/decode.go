package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Decoding follows HF's decoders: each step maps a list of strings to a
// list of strings (decode_chain) and the result is joined. The same code
// decodes a whole text and the window of a StreamDecoder; a decodeCtx tells
// the steps which of the two they see.

// elem is one string of the decode chain.
type elem struct {
	s string
	// cont: a fused string whose start lies before the window; steps that
	// act on the start of the text (Strip's start) leave it alone.
	cont bool
	// open: a fused string that tokens not yet seen may extend; steps that
	// act on the end of the text (Strip's stop) hold its end back.
	open bool
}

type decodeCtx struct {
	first   bool // the window starts at the first (unskipped) token
	final   bool // no token follows the window
	stream  bool // a StreamDecoder's window (see decByteFallback)
	pending bool // set by steps that held something back for later tokens
}

type decStep interface {
	apply(el []elem, c *decodeCtx) []elem
}

// ---- Steps ----

type decReplace struct {
	pat     pattern
	content string
}

func (d decReplace) apply(el []elem, _ *decodeCtx) []elem {
	for i := range el {
		// Patterns are validated at load; a regex that fails at run time
		// leaves the string alone rather than failing a decode.
		if s, err := replaceAll(d.pat, el[i].s, d.content); err == nil {
			el[i].s = s
		}
	}
	return el
}

// byteToken parses a "<0xNN>" token as HF's ByteFallback does (six bytes,
// two characters of u8::from_str_radix, which also takes a leading '+').
func byteToken(s string) (byte, bool) {
	if len(s) != 6 || !strings.HasPrefix(s, "<0x") || s[5] != '>' {
		return 0, false
	}
	hex := func(c byte) (byte, bool) {
		switch {
		case c >= '0' && c <= '9':
			return c - '0', true
		case c >= 'a' && c <= 'f':
			return c - 'a' + 10, true
		case c >= 'A' && c <= 'F':
			return c - 'A' + 10, true
		}
		return 0, false
	}
	if s[3] == '+' {
		return hex(s[4])
	}
	hi, ok1 := hex(s[3])
	lo, ok2 := hex(s[4])
	return hi<<4 | lo, ok1 && ok2
}

// decByteFallback turns runs of <0xNN> tokens into text. HF makes a run
// that is valid UTF-8 into its text and any other run into one U+FFFD per
// byte, which depends on the whole run. A stream cannot wait for the end of
// every run, so it shows complete characters as they come; for a run that
// turns ill-formed after some were shown, the stream rendering keeps them
// and puts U+FFFD for each byte after them (HF's DecodeStream fails there).
type decByteFallback struct{}

func (decByteFallback) apply(el []elem, c *decodeCtx) []elem {
	out := el[:0:0]
	var run []byte
	replace := func(n int) {
		for range n {
			out = append(out, elem{s: "\uFFFD"})
		}
	}
	flush := func(atEnd bool) {
		if len(run) == 0 {
			return
		}
		if utf8.Valid(run) {
			out = append(out, elem{s: string(run)})
		} else {
			// v: the complete characters before the first problem.
			v := 0
			for v < len(run) {
				n, st := utf8Prefix(run[v:])
				if st != utf8OK {
					break
				}
				v += n
			}
			switch {
			case atEnd && !c.final && v+incompleteTail(run[v:]) == len(run):
				// Valid so far: show the complete characters, hold the rest.
				c.pending = true
				if v > 0 {
					out = append(out, elem{s: string(run[:v])})
				}
			case c.stream:
				if v > 0 {
					out = append(out, elem{s: string(run[:v])})
				}
				replace(len(run) - v)
			default:
				replace(len(run))
			}
		}
		if atEnd && !c.final {
			c.pending = true // the run may go on
		}
		run = run[:0]
	}
	for _, e := range el {
		if b, ok := byteToken(e.s); ok {
			run = append(run, b)
			continue
		}
		flush(false)
		out = append(out, e)
	}
	flush(true)
	return out
}

type decFuse struct{}

func (decFuse) apply(el []elem, c *decodeCtx) []elem {
	var sb strings.Builder
	for _, e := range el {
		sb.WriteString(e.s)
	}
	return []elem{{s: sb.String(), cont: !c.first, open: !c.final}}
}

type decByteLevel struct{}

func (decByteLevel) apply(el []elem, c *decodeCtx) []elem {
	var b []byte
	for _, e := range el {
		b = byteLevelDecode(b, e.s)
	}
	if !c.final {
		if t := incompleteTail(b); t > 0 {
			c.pending = true
			b = b[:len(b)-t]
		}
	}
	return []elem{{s: utf8Lossy(b), cont: !c.first, open: !c.final}}
}

type decStrip struct {
	content     rune
	start, stop int
}

func (d decStrip) apply(el []elem, c *decodeCtx) []elem {
	for i := range el {
		s := el[i].s
		if !el[i].cont {
			for k := 0; k < d.start; k++ {
				r, n := utf8.DecodeRuneInString(s)
				if n == 0 || r != d.content {
					break
				}
				s = s[n:]
			}
		}
		cut := 0
		for k := 0; k < d.stop; k++ {
			r, n := utf8.DecodeLastRuneInString(s[:len(s)-cut])
			if n == 0 || r != d.content {
				break
			}
			cut += n
		}
		if cut > 0 && el[i].open {
			// Held back: stripped if the text ends here, shown otherwise.
			c.pending = true
		}
		el[i].s = s[:len(s)-cut]
	}
	return el
}

type decMetaspace struct {
	repl    rune
	prepend string
}

func (d decMetaspace) apply(el []elem, c *decodeCtx) []elem {
	for i := range el {
		dropFirst := i == 0 && c.first && !el[i].cont && d.prepend != prependNever
		el[i].s = strings.Map(func(r rune) rune {
			if r != d.repl {
				return r
			}
			if dropFirst {
				return -1
			}
			return ' '
		}, el[i].s)
	}
	return el
}

// decJoinSpaces is what HF does with no decoder: join tokens with spaces.
type decJoinSpaces struct{}

func (decJoinSpaces) apply(el []elem, c *decodeCtx) []elem {
	var sb strings.Builder
	for i, e := range el {
		if i > 0 || !c.first {
			sb.WriteByte(' ')
		}
		sb.WriteString(e.s)
	}
	return []elem{{s: sb.String(), cont: !c.first, open: !c.final}}
}

// decoder is a parsed decode chain.
type decoder struct {
	steps []decStep
	// separable: decoding a text in windows (each starting where the last
	// ended cleanly) gives the same text as decoding it whole. False for
	// chains that act on a fused text in ways that cross token boundaries;
	// their streams then re-decode from the start.
	separable bool
}

// run decodes toks as one window; it reports whether a step held
// something back for tokens to come.
func (d *decoder) run(toks []string, first, final, stream bool) (string, bool) {
	el := make([]elem, len(toks))
	for i, t := range toks {
		el[i].s = t
	}
	c := decodeCtx{first: first, final: final, stream: stream}
	for _, st := range d.steps {
		el = st.apply(el, &c)
	}
	if len(el) == 1 {
		return el[0].s, c.pending
	}
	var sb strings.Builder
	for _, e := range el {
		sb.WriteString(e.s)
	}
	return sb.String(), c.pending
}

func parseDecoder(raw json.RawMessage) (*decoder, error) {
	d := &decoder{separable: true}
	if isNull(raw) {
		d.steps = []decStep{decJoinSpaces{}}
		return d, nil
	}
	fused := false
	if err := d.add(raw, &fused); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *decoder) add(raw json.RawMessage, fused *bool) error {
	var t typed
	if err := json.Unmarshal(raw, &t); err != nil {
		return err
	}
	switch t.Type {
	case "Sequence":
		var q struct {
			Decoders []json.RawMessage `json:"decoders"`
		}
		if err := json.Unmarshal(raw, &q); err != nil {
			return err
		}
		for _, r := range q.Decoders {
			if err := d.add(r, fused); err != nil {
				return err
			}
		}
		return nil
	case "Replace":
		var r struct {
			Pattern json.RawMessage `json:"pattern"`
			Content string          `json:"content"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		pat, err := parsePattern(r.Pattern)
		if err != nil {
			return fmt.Errorf("Replace decoder: %w", err)
		}
		if l, ok := pat.(literal); *fused && (!ok || utf8.RuneCountInString(string(l)) > 1) {
			d.separable = false
		}
		d.steps = append(d.steps, decReplace{pat: pat, content: r.Content})
	case "ByteFallback":
		if *fused {
			d.separable = false
		}
		d.steps = append(d.steps, decByteFallback{})
	case "Fuse":
		*fused = true
		d.steps = append(d.steps, decFuse{})
	case "ByteLevel":
		*fused = true
		d.steps = append(d.steps, decByteLevel{})
	case "Strip":
		var s struct {
			Content string `json:"content"`
			Start   int    `json:"start"`
			Stop    int    `json:"stop"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return err
		}
		r, n := utf8.DecodeRuneInString(s.Content)
		if n == 0 || n != len(s.Content) || s.Start < 0 || s.Stop < 0 {
			return fmt.Errorf("Strip decoder %s: %w", abbrev(raw), ErrCorrupt)
		}
		d.steps = append(d.steps, decStrip{content: r, start: s.Start, stop: s.Stop})
	case "Metaspace":
		ms, err := parseMetaspace(raw)
		if err != nil {
			return err
		}
		if *fused {
			d.separable = false
		}
		r, _ := utf8.DecodeRuneInString(ms.repl)
		d.steps = append(d.steps, decMetaspace{repl: r, prepend: ms.prepend})
	default:
		return fmt.Errorf("decoder type %q: %w", t.Type, ErrUnsupported)
	}
	return nil
}

// StreamDecoder turns ids into text one id at a time, for streaming a
// generation. Each Add returns the text that id completes: never half a
// UTF-8 character, and never text that a later id could change. The
// concatenation of every Add and the final Flush equals Decode of all the
// ids, with one exception that no streaming decoder can avoid: HF's
// ByteFallback turns a run of <0xNN> tokens that is ill-formed anywhere into
// one U+FFFD per byte, so when a run has already shown complete characters
// and then turns ill-formed, the stream keeps what it showed and puts one
// U+FFFD for each later byte of the run (HF's own DecodeStream fails
// there). Valid UTF-8 from a model never meets this.
//
// A StreamDecoder is not safe for concurrent use; its Tokenizer is.
type StreamDecoder struct {
	t    *Tokenizer
	skip bool

	// The window: tokens since the last clean boundary, whether it starts
	// the text, and what of its decoding has been returned.
	toks    []string
	first   bool
	emitted string
}

// NewStreamDecoder starts a stream; skipSpecialTokens is as for Decode.
func (t *Tokenizer) NewStreamDecoder(skipSpecialTokens bool) *StreamDecoder {
	return &StreamDecoder{t: t, skip: skipSpecialTokens, first: true}
}

// Add takes the next id and returns the text it completes, often "".
func (d *StreamDecoder) Add(id int) string {
	tok, ok := d.t.decodeToken(id, d.skip)
	if !ok {
		return ""
	}
	d.toks = append(d.toks, tok)
	s, pending := d.t.decoder.run(d.toks, d.first, false, true)
	out := d.advance(s)
	if !pending && d.t.decoder.separable && (!d.first || s != "") {
		d.toks, d.emitted, d.first = d.toks[:0], "", false
	}
	return out
}

// Flush ends the text: it returns what was held back (an incomplete
// character becomes U+FFFD, as in Decode) and resets the decoder for a new
// text.
func (d *StreamDecoder) Flush() string {
	var out string
	if len(d.toks) > 0 {
		s, _ := d.t.decoder.run(d.toks, d.first, true, true)
		out = d.advance(s)
	}
	d.toks, d.emitted, d.first = d.toks[:0], "", true
	return out
}

// advance returns the part of the window's decoding s not yet returned.
func (d *StreamDecoder) advance(s string) string {
	var out string
	switch {
	case strings.HasPrefix(s, d.emitted):
		out = s[len(d.emitted):]
	case len(s) > len(d.emitted):
		// Not expected: every step renders a window so that it extends
		// what was shown. Should it happen, resume at a character
		// boundary so that the output stays valid UTF-8.
		k := len(d.emitted)
		for k < len(s) && !utf8.RuneStart(s[k]) {
			k++
		}
		out = s[k:]
	}
	d.emitted = s
	return out
}
