package tokenizer

import (
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// randomText draws strings that stress the split patterns: every class of
// character, runs of each, line breaks and contractions.
func randomText(rng *rand.Rand, n int) string {
	pieces := []string{
		"a", "Z", "é", "ß", "Ω", "ж", "字", "ー", "ℵ", // letters
		"0", "7", "٣", "²", "Ⅻ", "①", // numbers
		" ", " ", " ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\u2028", "\u0085", "\v", "\f", // whitespace
		".", "!", "'", "\"", "-", "_", "🙂", "👍🏽", "\u0301", "\u200d", "€", "<", ">", "|", // other
		"'s", "'S", "'t", "'re", "'VE", "'m", "'Ll", "'d", "'x", "’s", // contractions
	}
	var sb strings.Builder
	for range n {
		p := pieces[rng.IntN(len(pieces))]
		for k := rng.IntN(3); k >= 0; k-- {
			sb.WriteString(p)
		}
	}
	return sb.String()
}

func TestFastSplitMatchesRegexp2(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	corpus, err := os.ReadFile("testdata/corpus.txt")
	if err != nil {
		t.Fatal(err)
	}
	inputs := []string{"", " ", "  ", "a", "\n", " \n ", "x  \n\n  y", "I'M don't you'LL", string(corpus)}
	for range 400 {
		inputs = append(inputs, randomText(rng, 1+rng.IntN(40)))
	}
	for _, tc := range []struct {
		name string
		expr string
	}{
		{"llama3", Llama3Pattern},
		{"gpt2", gpt2Pattern},
	} {
		t.Run(tc.name, func(t *testing.T) {
			re, err := compileRegex(tc.expr)
			if err != nil {
				t.Fatal(err)
			}
			if re.fast == nil {
				t.Fatal("no fast matcher for the pattern")
			}
			for _, s := range inputs {
				want, err := re.slowFind(s)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := re.find(s)
				if !slices.Equal(got, want) {
					t.Fatalf("%q:\nfast    %v\nregexp2 %v", s, pieces(s, got), pieces(s, want))
				}
			}
		})
	}
}

// TestFastSplitLongS pins the one intended difference from regexp2: case
// folding maps ſ to s, so Oniguruma matches "'ſ" as a contraction.
func TestFastSplitLongS(t *testing.T) {
	collect := func(split func(string, func(a, b int) bool), s string) []string {
		var out []string
		split(s, func(a, b int) bool { out = append(out, s[a:b]); return true })
		return out
	}
	got := collect(splitLlama3, "it'ſ")
	if want := []string{"it", "'ſ"}; !slices.Equal(got, want) {
		t.Fatalf("llama3 split of it'ſ = %q, want %q", got, want)
	}
	got = collect(splitGPT2, "it'ſ")
	if want := []string{"it", "'", "ſ"}; !slices.Equal(got, want) {
		t.Fatalf("gpt2 split of it'ſ = %q, want %q (its contractions are case-sensitive)", got, want)
	}
}

func pieces(s string, ms [][2]int) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = s[m[0]:m[1]]
	}
	return out
}
