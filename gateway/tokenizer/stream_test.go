package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// seedFor returns a fresh seed and logs it, so that a failure can be
// replayed by pinning it here.
func seedFor(t testing.TB) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return seed
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x746f6b)) }

// randomUnicode draws n characters from ranges that matter to tokenizers:
// ASCII, whitespace, Latin-1, Greek and Cyrillic, CJK, kana, combining
// marks, emoji (with ZWJ and variation selectors) and rarer planes.
func randomUnicode(rng *rand.Rand, n int) string {
	ranges := [][2]rune{
		{'a', 'z'}, {'A', 'Z'}, {'0', '9'}, {' ', '/'}, {':', '@'},
		{0x00A0, 0x00FF}, {0x0370, 0x03FF}, {0x0400, 0x04FF}, {0x0300, 0x036F},
		{0x3040, 0x30FF}, {0x4E00, 0x4FFF}, {0xAC00, 0xAC40}, {0x1F300, 0x1F64F},
		{0x1F1E6, 0x1F1FF}, {0x2000, 0x206F}, {0xFE00, 0xFE0F}, {0x10400, 0x1044F},
	}
	ws := []string{" ", "  ", "\n", "\t", "\r\n", "\u200d", "'s", "'LL"}
	var sb strings.Builder
	for range n {
		if rng.IntN(5) == 0 {
			sb.WriteString(ws[rng.IntN(len(ws))])
			continue
		}
		r := ranges[rng.IntN(len(ranges))]
		sb.WriteRune(r[0] + rune(rng.IntN(int(r[1]-r[0]+1))))
	}
	return sb.String()
}

// streamAll feeds ids to a stream decoder and returns each Add's output
// and the Flush output last.
func streamAll(tok *Tokenizer, ids []int, skip bool) []string {
	d := tok.NewStreamDecoder(skip)
	var out []string
	for _, id := range ids {
		out = append(out, d.Add(id))
	}
	return append(out, d.Flush())
}

func TestStreamDecoderExamples(t *testing.T) {
	l3 := loadFamily(t, FamilyLlama3)
	l2 := loadFamily(t, FamilyLlama2)
	ids := func(tok *Tokenizer, toks ...string) []int {
		var out []int
		for _, s := range toks {
			out = append(out, mustID(t, tok, s))
		}
		return out
	}
	for _, tc := range []struct {
		name string
		tok  *Tokenizer
		ids  []int
		skip bool
		want []string // each Add, then Flush
	}{
		{"llama3 emoji over four byte tokens", l3, ids(l3, "ð", "Ł", "Ļ", "Ĥ"), false, []string{"", "", "", "🙂", ""}},
		{"llama3 é over two tokens", l3, ids(l3, "Ã", "©"), false, []string{"", "é", ""}},
		{"llama3 emoji over three tokens", l3, ids(l3, "ðŁ", "Ļ", "Ĥ"), false, []string{"", "", "🙂", ""}},
		{"llama3 truncated emoji flushed", l3, ids(l3, "The", "ðŁ"), false, []string{"The", "", "\uFFFD"}},
		{"llama3 words", l3, ids(l3, "The", "Ġlamp"), false, []string{"The", " lamp", ""}},
		{"llama3 special kept", l3, ids(l3, "<|begin_of_text|>", "The"), false, []string{"<|begin_of_text|>", "The", ""}},
		{"llama3 special skipped", l3, ids(l3, "<|begin_of_text|>", "The"), true, []string{"", "The", ""}},
		{"llama2 emoji over byte tokens", l2, ids(l2, "<0xF0>", "<0x9F>", "<0x99>", "<0x82>", "▁the"), false, []string{"", "", "", "🙂", " the", ""}},
		{"llama2 leading space stripped once", l2, ids(l2, "▁the", "▁lamp"), false, []string{"the", " lamp", ""}},
		{"llama2 after skipped BOS", l2, ids(l2, "<s>", "▁the", "▁lamp"), true, []string{"", "the", " lamp", ""}},
		{"llama2 BOS kept", l2, ids(l2, "<s>", "▁the"), false, []string{"<s>", " the", ""}},
		{"llama2 lone spaces", l2, ids(l2, "▁", "▁", "▁the"), false, []string{"", " ", " the", ""}},
		{"llama2 truncated run flushed", l2, ids(l2, "▁the", "<0xE4>", "<0xB8>"), false, []string{"the", "", "", "\uFFFD\uFFFD"}},
		{"llama2 ill-formed run", l2, ids(l2, "<0xFF>", "<0x41>"), false, []string{"\uFFFD", "\uFFFD", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := streamAll(tc.tok, tc.ids, tc.skip)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("stream of %q = %q, want %q", tokenStrings(tc.tok, tc.ids), got, tc.want)
			}
			if j := strings.Join(got, ""); j != tc.tok.Decode(tc.ids, tc.skip) {
				t.Fatalf("stream %q != Decode %q", j, tc.tok.Decode(tc.ids, tc.skip))
			}
		})
	}
}

// streamException reports whether ids contain the case the StreamDecoder
// documents: a ByteFallback run that is ill-formed as a whole after a
// complete character.
func streamException(tok *Tokenizer, ids []int, skip bool) bool {
	var run []byte
	check := func() bool {
		if len(run) == 0 || utf8.Valid(run) {
			return false
		}
		_, st := utf8Prefix(run)
		return st == utf8OK
	}
	for _, id := range ids {
		s, ok := tok.decodeToken(id, skip)
		if !ok {
			continue
		}
		if b, ok := byteToken(s); ok {
			run = append(run, b)
			continue
		}
		if check() {
			return true
		}
		run = run[:0]
	}
	return check()
}

func TestStreamDecoderRandom(t *testing.T) {
	seed := seedFor(t)
	rng := newRand(seed)
	corpus := readCorpus(t)
	for _, name := range []string{FamilyLlama3, FamilyLlama2} {
		tok := loadFamily(t, name)
		t.Run(name, func(t *testing.T) {
			var seqs [][]int
			for range 400 {
				ids := make([]int, 1+rng.IntN(25))
				for i := range ids {
					ids[i] = rng.IntN(tok.VocabSize() + 3) // a few unknown ids too
				}
				seqs = append(seqs, ids)
			}
			// Byte tokens in runs, where UTF-8 boundaries matter most.
			byteIDs := []int{}
			for b := range 256 {
				if id, ok := tok.TokenID(string(byteToRune[b])); ok && name == FamilyLlama3 {
					byteIDs = append(byteIDs, id)
				}
				if id, ok := tok.TokenID(byteName(b)); ok && name == FamilyLlama2 {
					byteIDs = append(byteIDs, id)
				}
			}
			for range 300 {
				ids := make([]int, 1+rng.IntN(12))
				for i := range ids {
					if rng.IntN(4) == 0 {
						ids[i] = rng.IntN(tok.VocabSize())
					} else {
						ids[i] = byteIDs[rng.IntN(len(byteIDs))]
					}
				}
				seqs = append(seqs, ids)
			}
			for _, p := range strings.Split(corpus, "\n\n")[:12] {
				ids, err := tok.Encode(p+" 🙂 灯台 👨‍👩‍👧", true)
				if err != nil {
					t.Fatal(err)
				}
				seqs = append(seqs, ids)
			}
			exceptions := 0
			for _, ids := range seqs {
				for _, skip := range []bool{false, true} {
					outs := streamAll(tok, ids, skip)
					for _, o := range outs {
						if !utf8.ValidString(o) {
							t.Fatalf("ids %v: stream yielded invalid UTF-8 %q", ids, o)
						}
					}
					got, want := strings.Join(outs, ""), tok.Decode(ids, skip)
					if streamException(tok, ids, skip) {
						// Then the stream must still be exactly the stream
						// rendering of the whole sequence.
						exceptions++
						want = streamRendering(tok, ids, skip)
					}
					if got != want {
						t.Fatalf("ids %v (%q), skip %v:\nstream %q\nwant   %q", ids, tokenStrings(tok, ids), skip, got, want)
					}
				}
			}
			t.Logf("%d sequences, %d with the documented byte-fallback exception", 2*len(seqs), exceptions)
		})
	}
}

// streamRendering decodes ids whole with the StreamDecoder's rendering of
// ill-formed byte-fallback runs.
func streamRendering(tok *Tokenizer, ids []int, skip bool) string {
	var toks []string
	for _, id := range ids {
		if s, ok := tok.decodeToken(id, skip); ok {
			toks = append(toks, s)
		}
	}
	s, _ := tok.decoder.run(toks, true, true, true)
	return s
}

func byteName(b int) string {
	const hex = "0123456789ABCDEF"
	return "<0x" + string(hex[b>>4]) + string(hex[b&15]) + ">"
}
