package tokenizer

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

var update = flag.Bool("update", false, "rewrite the generated tokenizers under testdata/")

// The test tokenizers under testdata/, as TestGenerateTestTokenizers makes
// them from testdata/corpus.txt.
var (
	llama3Specials = []string{
		"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
		"<|reserved_special_token_0|>", "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
	}
	testFamilies = []struct {
		name      string
		vocabSize int
		train     func(corpus string) ([]byte, error)
	}{
		{FamilyLlama3, 1024, func(c string) ([]byte, error) { return TrainByteLevel(c, 1024, llama3Specials) }},
		{FamilyLlama2, 800, func(c string) ([]byte, error) { return TrainSentencePiece(c, 800) }},
	}
)

func readCorpus(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("testdata/corpus.txt")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestGenerateTestTokenizers trains the testdata tokenizers from the corpus
// and checks the committed files are what training gives today; with
// -update it writes them.
func TestGenerateTestTokenizers(t *testing.T) {
	corpus := readCorpus(t)
	for _, fam := range testFamilies {
		t.Run(fam.name, func(t *testing.T) {
			tj, err := fam.train(corpus)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := TokenizerConfig(fam.name, llama3Specials)
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join("testdata", fam.name)
			files := map[string][]byte{TokenizerFile: tj, ConfigFile: cfg}
			for name, want := range files {
				path := filepath.Join(dir, name)
				if *update {
					if err := os.MkdirAll(dir, 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(path, want, 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				got, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test -run TestGenerateTestTokenizers -update)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs from what training gives now; rerun with -update if that is intended", path)
				}
			}
			tok, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if tok.VocabSize() != fam.vocabSize {
				t.Errorf("vocab size %d, want %d", tok.VocabSize(), fam.vocabSize)
			}
		})
	}
}

// loadFamily loads a testdata tokenizer.
func loadFamily(t testing.TB, name string) *Tokenizer {
	t.Helper()
	tok, err := Load(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func mustID(t testing.TB, tok *Tokenizer, s string) int {
	t.Helper()
	id, ok := tok.TokenID(s)
	if !ok {
		t.Fatalf("token %q not in vocab", s)
	}
	return id
}

func tokenStrings(tok *Tokenizer, ids []int) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i], _ = tok.TokenString(id)
	}
	return out
}

func TestEncodeExamples(t *testing.T) {
	l3 := loadFamily(t, FamilyLlama3)
	l2 := loadFamily(t, FamilyLlama2)
	for _, tc := range []struct {
		name string
		tok  *Tokenizer
		text string
		add  bool
		want []string
	}{
		{"llama3 words", l3, "The lamp", false, []string{"The", "Ġlamp"}},
		{"llama3 bos", l3, "The lamp", true, []string{"<|begin_of_text|>", "The", "Ġlamp"}},
		{"llama3 empty", l3, "", false, []string{}},
		{"llama3 empty bos", l3, "", true, []string{"<|begin_of_text|>"}},
		{"llama3 special in text", l3, "The<|eot_id|>The", false, []string{"The", "<|eot_id|>", "The"}},
		{"llama3 newline run", l3, "a\n\nb", false, []string{"a", "ĊĊ", "b"}},
		{"llama3 contraction", l3, " keeper's", false, []string{"Ġkeeper", "'s"}},
		{"llama2 words", l2, "the lamp", false, []string{"▁the", "▁lamp"}},
		{"llama2 bos", l2, "the lamp", true, []string{"<s>", "▁the", "▁lamp"}},
		{"llama2 byte fallback", l2, "世", false, []string{"▁", "<0xE4>", "<0xB8>", "<0x96>"}},
		{"llama2 special in text", l2, "a<s>b", false, []string{"▁a", "<s>", "▁b"}},
		{"llama2 newline", l2, "\n", false, []string{"▁", "<0x0A>"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, err := tc.tok.Encode(tc.text, tc.add)
			if err != nil {
				t.Fatal(err)
			}
			if got := tokenStrings(tc.tok, ids); !slices.Equal(got, tc.want) {
				t.Fatalf("Encode(%q) = %q, want %q", tc.text, got, tc.want)
			}
		})
	}
	// Digits split in threes before BPE: no token spans two groups.
	ids, err := l3.Encode("1234567", false)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range tokenStrings(l3, ids) {
		if n%3+len(s) > 3 {
			t.Fatalf("1234567 as %q: a token crosses a group of three", tokenStrings(l3, ids))
		}
		n += len(s)
	}
}

func TestRoundTrip(t *testing.T) {
	seed := seedFor(t)
	rng := newRand(seed)
	corpus := readCorpus(t)
	inputs := strings.Split(corpus, "\n\n")
	inputs = append(inputs, corpus, "", " ", "  x", "x  ", "\n", " \n\t ")
	for range 300 {
		inputs = append(inputs, randomUnicode(rng, 1+rng.IntN(30)))
	}
	for _, name := range []string{FamilyLlama3, FamilyLlama2} {
		tok := loadFamily(t, name)
		t.Run(name, func(t *testing.T) {
			for _, s := range inputs {
				ids, err := tok.Encode(s, false)
				if err != nil {
					t.Fatal(err)
				}
				if got := tok.Decode(ids, false); got != s {
					t.Fatalf("Decode(Encode(%q)) = %q", s, got)
				}
				withBOS, err := tok.Encode(s, true)
				if err != nil {
					t.Fatal(err)
				}
				bos, _ := tok.BOS()
				if len(withBOS) != len(ids)+1 || withBOS[0] != bos || !slices.Equal(withBOS[1:], ids) {
					t.Fatalf("Encode(%q, true) = %v, want BOS then %v", s, withBOS, ids)
				}
				if got := tok.Decode(withBOS, true); got != s {
					t.Fatalf("Decode(Encode(%q, true), skip) = %q", s, got)
				}
			}
		})
	}
}

func TestIgnoreMerges(t *testing.T) {
	// "abc" is in the vocab but merging a+b first gives ab, c.
	vocab := `{"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4}`
	for _, tc := range []struct {
		name   string
		ignore bool
		want   []int
	}{
		{"ignore_merges takes the whole word", true, []int{4}},
		{"merges decide without it", false, []int{3, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := tinyTokenizer(t, vocab, `[["a", "b"]]`, tc.ignore, "")
			got, err := tok.Encode("abc", false)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Encode(abc) = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMergesBothForms(t *testing.T) {
	vocab := `{"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4}`
	pairs := tinyTokenizer(t, vocab, `[["a", "b"], ["ab", "c"]]`, false, "")
	strs := tinyTokenizer(t, vocab, `["a b", "ab c"]`, false, "")
	for _, s := range []string{"abc", "cab", "abcabc", "ba"} {
		a, _ := pairs.Encode(s, false)
		b, _ := strs.Encode(s, false)
		if !slices.Equal(a, b) {
			t.Errorf("%q: pair merges give %v, string merges %v", s, a, b)
		}
	}
	if got, _ := pairs.Encode("abcab", false); !slices.Equal(got, []int{4, 3}) {
		t.Errorf("Encode(abcab) = %v, want [4 3]", got)
	}
}

// tinyTokenizer builds a byte-level tokenizer with no pre-tokenizer regex
// over the given vocab (ASCII letters stand for themselves), plus added
// tokens (a JSON list body, may be empty).
func tinyTokenizer(t testing.TB, vocab, merges string, ignoreMerges bool, added string) *Tokenizer {
	t.Helper()
	ig := "false"
	if ignoreMerges {
		ig = "true"
	}
	j := `{"version": "1.0", "added_tokens": [` + added + `], "normalizer": null,
		"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
		"post_processor": null, "decoder": {"type": "ByteLevel"},
		"model": {"type": "BPE", "ignore_merges": ` + ig + `, "vocab": ` + vocab + `, "merges": ` + merges + `}}`
	return writeAndLoad(t, j, "")
}

func writeAndLoad(t testing.TB, tokenizerJSON, configJSON string) *Tokenizer {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, TokenizerFile), []byte(tokenizerJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	if configJSON != "" {
		if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(configJSON), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAddedTokens(t *testing.T) {
	// Every printable ASCII byte-level character is its own token, so the
	// expected ids are plain: byte value, or 1000+ for added tokens.
	var vb strings.Builder
	vb.WriteString("{")
	for c := 0; c < 256; c++ {
		if c > 0 {
			vb.WriteString(", ")
		}
		vb.WriteString(jstr(string(byteToRune[c])) + ": " + strconv.Itoa(c))
	}
	vb.WriteString("}")
	added := `{"id": 256, "content": "[X]", "lstrip": true, "rstrip": false, "single_word": false, "normalized": false, "special": true},
		{"id": 257, "content": "[Y]", "lstrip": false, "rstrip": true, "single_word": false, "normalized": false, "special": false},
		{"id": 258, "content": "cat", "lstrip": false, "rstrip": false, "single_word": true, "normalized": false, "special": false},
		{"id": 259, "content": "[X]]", "lstrip": false, "rstrip": false, "single_word": false, "normalized": false, "special": true}`
	tok := tinyTokenizer(t, vb.String(), "[]", false, added)
	bytesOf := func(s string) []int {
		var out []int
		for i := 0; i < len(s); i++ {
			out = append(out, int(s[i]))
		}
		return out
	}
	cat := func(parts ...[]int) []int { return slices.Concat(parts...) }
	for _, tc := range []struct {
		name string
		text string
		want []int
	}{
		{"lstrip eats spaces before", "a  [X]b", cat(bytesOf("a"), []int{256}, bytesOf("b"))},
		{"rstrip eats spaces after", "a[Y]  b", cat(bytesOf("a"), []int{257}, bytesOf("b"))},
		{"longest match wins", "[X]]", []int{259}},
		{"single word alone", "a cat b", cat(bytesOf("a "), []int{258}, bytesOf(" b"))},
		{"single word inside a word is text", "concatenate", bytesOf("concatenate")},
		{"adjacent tokens", "[Y][X]", []int{257, 256}},
		{"at both ends", "[X]mid[Y]", cat([]int{256}, bytesOf("mid"), []int{257})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tok.Encode(tc.text, false)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
			}
		})
	}
	if !tok.IsSpecial(256) || tok.IsSpecial(257) || tok.IsSpecial(65) {
		t.Error("IsSpecial wrong for [X] (special), [Y] (not), 'A' (model token)")
	}
	if got := tok.Decode([]int{65, 256, 257, 66}, true); got != "A[Y]B" {
		t.Errorf("Decode skipping specials = %q, want A[Y]B", got)
	}
}

func TestNormalizedAddedToken(t *testing.T) {
	// A normalized added token is matched in normalized text: with the
	// Llama 2 normalizer, "foo" is looked for as "▁foo".
	tj := `{"version": "1.0", "added_tokens": [
			{"id": 5, "content": "foo", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": false}],
		"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
		"pre_tokenizer": null, "post_processor": null,
		"decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
		"model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": false,
			"vocab": {"<unk>": 0, "▁": 1, "f": 2, "o": 3, "x": 4}, "merges": []}}`
	tok := writeAndLoad(t, tj, "")
	for _, tc := range []struct {
		name string
		text string
		want []int
	}{
		{"after a space", "x foo", []int{1, 4, 5}},
		{"at the start (prepended ▁)", "foo", []int{5}},
		{"inside a word", "xfoo", []int{1, 4, 2, 3, 3}},
		{"unknown characters fuse into one unk", "x zzz", []int{1, 4, 1, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tok.Encode(tc.text, false)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
			}
		})
	}
	// HF decodes a normalized added token from its normalized form.
	if got := tok.Decode([]int{4, 5}, false); got != "x foo" {
		t.Errorf("Decode = %q, want %q", got, "x foo")
	}
}

func TestLoadErrors(t *testing.T) {
	good, err := os.ReadFile("testdata/llama2/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) string {
		if !strings.Contains(string(good), old) {
			t.Fatalf("testdata has no %q", old)
		}
		return strings.Replace(string(good), old, new, 1)
	}
	for _, tc := range []struct {
		name      string
		tokenizer string // "" for no file
		config    string
		is        error
		mention   []string
	}{
		{"missing file", "", "", os.ErrNotExist, []string{TokenizerFile}},
		{"corrupt JSON", `{"model": {"type": "BPE",`, "", ErrCorrupt, []string{TokenizerFile}},
		{"unigram model", `{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}`, "", ErrUnsupported, []string{TokenizerFile, `"Unigram"`}},
		{"unsupported normalizer", replace(`"normalizer": {"type": "Sequence"`, `"normalizer": {"type": "NFKC"}, "x": {"type": "Sequence"`), "", ErrUnsupported, []string{"normalizer", `"NFKC"`}},
		{"unsupported pre-tokenizer", replace(`"pre_tokenizer": null`, `"pre_tokenizer": {"type": "BertPreTokenizer"}`), "", ErrUnsupported, []string{"pre_tokenizer", "BertPreTokenizer"}},
		{"unsupported decoder", replace(`{"type": "Fuse"}`, `{"type": "WordPiece", "prefix": "##"}`), "", ErrUnsupported, []string{"decoder", "WordPiece"}},
		{"unsupported post-processor", replace(`"post_processor": {"type": "TemplateProcessing"`, `"post_processor": {"type": "BertProcessing"}, "x": {"type": "TemplateProcessing"`), "", ErrUnsupported, []string{"post_processor", "BertProcessing"}},
		{"merge outside vocab", replace(`"merges": [`, `"merges": [["zzz", "qqq"], `), "", ErrCorrupt, []string{"merge 0", "zzz"}},
		{"corrupt config", string(good), `{"bos_token": `, ErrCorrupt, []string{ConfigFile}},
		{"bos not in vocab", string(good), `{"bos_token": "<nope>"}`, ErrCorrupt, []string{ConfigFile, "<nope>"}},
		{"bad chat template", string(good), `{"chat_template": "{% for %}"}`, ErrTemplate, []string{ConfigFile, "chat_template"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.tokenizer != "" {
				if err := os.WriteFile(filepath.Join(dir, TokenizerFile), []byte(tc.tokenizer), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tc.config != "" {
				if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(tc.config), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Load(dir)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
}

func TestEncodeInvalidUTF8(t *testing.T) {
	tok := loadFamily(t, FamilyLlama3)
	if _, err := tok.Encode("ok \xff bad", false); !errors.Is(err, ErrInvalidUTF8) {
		t.Fatalf("Encode of invalid UTF-8: err = %v, want ErrInvalidUTF8", err)
	}
}

func TestSpecialTokenAccessors(t *testing.T) {
	l3 := loadFamily(t, FamilyLlama3)
	l2 := loadFamily(t, FamilyLlama2)
	for _, tc := range []struct {
		name    string
		tok     *Tokenizer
		bos     string
		eos     []string
		special []string
		plain   []string
	}{
		{"llama3", l3, "<|begin_of_text|>", []string{"<|eot_id|>"}, llama3Specials, []string{"Ġthe", "a"}},
		{"llama2", l2, "<s>", []string{"</s>"}, []string{"<unk>", "<s>", "</s>"}, []string{"▁the", "<0x0A>"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bos, ok := tc.tok.BOS()
			if !ok || bos != mustID(t, tc.tok, tc.bos) {
				t.Errorf("BOS() = %d, %v; want id of %q", bos, ok, tc.bos)
			}
			var eos []int
			for _, s := range tc.eos {
				eos = append(eos, mustID(t, tc.tok, s))
			}
			if !slices.Equal(tc.tok.EOS(), eos) {
				t.Errorf("EOS() = %v, want %v", tc.tok.EOS(), eos)
			}
			for _, s := range tc.special {
				id := mustID(t, tc.tok, s)
				if !tc.tok.IsSpecial(id) {
					t.Errorf("%q (%d) is not special", s, id)
				}
				if got, ok := tc.tok.TokenString(id); !ok || got != s {
					t.Errorf("TokenString(%d) = %q, %v; want %q", id, got, ok, s)
				}
			}
			for _, s := range tc.plain {
				if id := mustID(t, tc.tok, s); tc.tok.IsSpecial(id) {
					t.Errorf("%q is special", s)
				}
			}
			if _, ok := tc.tok.TokenString(-1); ok {
				t.Error("TokenString(-1) found a token")
			}
			if _, ok := tc.tok.TokenString(tc.tok.VocabSize()); ok {
				t.Error("TokenString(VocabSize()) found a token")
			}
		})
	}
	// AddEOS extends, without duplicates, and EOS returns a copy.
	eot := mustID(t, l3, "<|eot_id|>")
	eot2 := mustID(t, l3, "<|end_of_text|>")
	l3.AddEOS(eot2, eot, eot2)
	got := l3.EOS()
	if !slices.Equal(got, []int{eot, eot2}) {
		t.Errorf("after AddEOS, EOS() = %v, want [%d %d]", got, eot, eot2)
	}
	got[0] = -7
	if l3.EOS()[0] != eot {
		t.Error("EOS() returned the internal slice")
	}
}

func TestConfigTokenForms(t *testing.T) {
	tj, err := os.ReadFile("testdata/llama2/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		config string
		bos    int
		eos    []int
	}{
		{"strings", `{"bos_token": "<s>", "eos_token": "</s>"}`, 1, []int{2}},
		{"AddedToken objects", `{"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false}, "eos_token": {"content": "</s>"}}`, 1, []int{2}},
		{"null eos", `{"bos_token": "<s>", "eos_token": null}`, 1, nil},
		{"no config: BOS from the post-processor", "", 1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := writeAndLoad(t, string(tj), tc.config)
			if bos, ok := tok.BOS(); !ok || bos != tc.bos {
				t.Errorf("BOS() = %d, %v; want %d", bos, ok, tc.bos)
			}
			if !slices.Equal(tok.EOS(), tc.eos) {
				t.Errorf("EOS() = %v, want %v", tok.EOS(), tc.eos)
			}
		})
	}
}

func TestConcurrentEncode(t *testing.T) {
	corpus := readCorpus(t)
	paragraphs := strings.Split(corpus, "\n\n")
	for _, name := range []string{FamilyLlama3, FamilyLlama2} {
		t.Run(name, func(t *testing.T) {
			tok := loadFamily(t, name)
			// Expected ids from a fresh tokenizer, one goroutine.
			ref := loadFamily(t, name)
			want := make([][]int, len(paragraphs))
			for i, p := range paragraphs {
				var err error
				if want[i], err = ref.Encode(p, true); err != nil {
					t.Fatal(err)
				}
			}
			var wg sync.WaitGroup
			errs := make(chan string, 16)
			for g := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for k := range 3 * len(paragraphs) {
						i := (k*7 + g) % len(paragraphs)
						got, err := tok.Encode(paragraphs[i], true)
						if err != nil || !slices.Equal(got, want[i]) {
							errs <- paragraphs[i]
							return
						}
						if tok.Decode(got, true) != paragraphs[i] {
							errs <- "decode: " + paragraphs[i]
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for e := range errs {
				t.Errorf("concurrent encode differs for %q", e)
			}
		})
	}
}

func TestTrainer(t *testing.T) {
	corpus := readCorpus(t)
	a, err := TrainByteLevel(corpus, 400, []string{"<bos>", "<eos>"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := TrainByteLevel(corpus, 400, []string{"<bos>", "<eos>"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two trainings of the same corpus differ")
	}
	tok := writeAndLoad(t, string(a), "")
	if tok.VocabSize() != 400 || mustID(t, tok, "<bos>") != 398 || mustID(t, tok, "<eos>") != 399 {
		t.Fatalf("vocab %d, <bos> %d, <eos> %d; want 400, 398, 399", tok.VocabSize(), mustID(t, tok, "<bos>"), mustID(t, tok, "<eos>"))
	}
	for _, tc := range []struct {
		name string
		err  func() error
	}{
		{"vocab below 256 bytes", func() error { _, err := TrainByteLevel(corpus, 200, []string{"<s>"}); return err }},
		{"no specials", func() error { _, err := TrainByteLevel(corpus, 300, nil); return err }},
		{"repeated special", func() error { _, err := TrainByteLevel(corpus, 300, []string{"<s>", "<s>"}); return err }},
		{"corpus too small", func() error { _, err := TrainByteLevel("ab", 300, []string{"<s>"}); return err }},
		{"sentencepiece vocab too small", func() error { _, err := TrainSentencePiece(corpus, 259); return err }},
		{"unknown family", func() error { _, err := TokenizerConfig("gpt9", nil); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err() == nil {
				t.Fatal("no error")
			}
		})
	}
}

// TestMergeLoopMatchesReference checks the heap-based merge loop against a
// plain quadratic one on random words, and that a long single word (the
// whole text is one word in the Llama 2 family) stays fast.
func TestMergeLoopMatchesReference(t *testing.T) {
	seed := seedFor(t)
	rng := newRand(seed)
	tok := loadFamily(t, FamilyLlama2)
	m := tok.model
	corpus := readCorpus(t)
	for range 200 {
		start := rng.IntN(len(corpus) - 200)
		for !utf8.RuneStart(corpus[start]) {
			start++
		}
		end := start + 1 + rng.IntN(150)
		for end < len(corpus) && !utf8.RuneStart(corpus[end]) {
			end++
		}
		w := "▁" + strings.ReplaceAll(corpus[start:end], " ", "▁")
		var wd word
		if err := m.initText(&wd, w); err != nil {
			t.Fatal(err)
		}
		ref := referenceMerge(wd.appendIDs(nil), m.merges)
		wd.mergeAll(m.merges)
		if got := wd.appendIDs(nil); !slices.Equal(got, ref) {
			t.Fatalf("%q: heap %v, reference %v", w, got, ref)
		}
	}
	long := strings.Repeat(corpus, 30) // ~230 KB, one word
	ids, err := tok.Encode(long, false)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Decode(ids, false) != long {
		t.Fatal("long text does not round-trip")
	}
}

// referenceMerge applies the lowest-ranked adjacent merge, leftmost first,
// until none applies.
func referenceMerge(ids []int32, merges map[uint64]mergeRule) []int32 {
	ids = slices.Clone(ids)
	for {
		best, bestRank := -1, int32(0)
		for i := 0; i+1 < len(ids); i++ {
			if r, ok := merges[pairKey(ids[i], ids[i+1])]; ok && (best < 0 || r.rank < bestRank) {
				best, bestRank = i, r.rank
			}
		}
		if best < 0 {
			return ids
		}
		r := merges[pairKey(ids[best], ids[best+1])]
		ids = slices.Replace(ids, best, best+2, r.id)
	}
}

func TestUTF8Lossy(t *testing.T) {
	// Expected values are Python's bytes.decode("utf-8", "replace"), which
	// like Rust's from_utf8_lossy replaces each maximal ill-formed subpart.
	for _, tc := range []struct {
		name string
		in   string
		want string
	}{
		{"valid", "héllo 🙂", "héllo 🙂"},
		{"lone lead", "\xf0A", "\uFFFDA"},
		{"truncated 4-byte at end", "\xf0\x9f\x99", "\uFFFD"},
		{"truncated then ASCII", "\xe2\x82A", "\uFFFDA"},
		{"bad second byte after E0", "\xe0\x80\x80", "\uFFFD\uFFFD\uFFFD"},
		{"surrogate", "\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"},
		{"overlong C0", "\xc0\xaf", "\uFFFD\uFFFD"},
		{"above U+10FFFF", "\xf4\x90\x80\x80", "\uFFFD\uFFFD\uFFFD\uFFFD"},
		{"lone continuation", "a\x80b", "a\uFFFDb"},
		{"FF", "\xff\xfe", "\uFFFD\uFFFD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := utf8Lossy([]byte(tc.in)); got != tc.want {
				t.Errorf("utf8Lossy(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestChatTemplate(t *testing.T) {
	l3 := loadFamily(t, FamilyLlama3)
	l2 := loadFamily(t, FamilyLlama2)
	conv := []Message{
		{Role: "system", Content: "Be brief. "},
		{Role: "user", Content: " Hi!"},
		{Role: "assistant", Content: "Hello."},
		{Role: "user", Content: "Bye"},
	}
	for _, tc := range []struct {
		name string
		tok  *Tokenizer
		msgs []Message
		gen  bool
		want string
		err  string // substring of the error, "" for none
	}{
		{"llama3 with generation prompt", l3, conv, true,
			"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" +
				"<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>" +
				"<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>" +
				"<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>" +
				"<|start_header_id|>assistant<|end_header_id|>\n\n", ""},
		{"llama3 without", l3, conv[1:2], false,
			"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>", ""},
		{"llama3 no messages", l3, nil, false, "<|begin_of_text|>", ""},
		{"llama2 system folded into the first turn", l2, conv, true,
			"<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] Bye [/INST]", ""},
		{"llama2 no system", l2, conv[1:3], false, "<s>[INST] Hi! [/INST] Hello. </s>", ""},
		{"llama2 roles must alternate", l2, []Message{{Role: "user", Content: "a"}, {Role: "user", Content: "b"}}, false,
			"", "Conversation roles must alternate"},
		{"llama2 unknown role", l2, []Message{{Role: "tool", Content: "a"}}, false, "", "Conversation roles must alternate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.tok.ApplyChatTemplate(tc.msgs, tc.gen)
			if tc.err != "" {
				if err == nil || !errors.Is(err, ErrTemplate) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want ErrTemplate with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestChatTemplateForms(t *testing.T) {
	tj, err := os.ReadFile("testdata/llama2/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	msgs := []Message{{Role: "user", Content: "x"}}
	for _, tc := range []struct {
		name   string
		config string
		want   string
		err    error
	}{
		{"no config", "", "", ErrNoChatTemplate},
		{"no template", `{"bos_token": "<s>"}`, "", ErrNoChatTemplate},
		{"string", `{"chat_template": "{{ messages[0].content }}!"}`, "x!", nil},
		{"named list uses default", `{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ bos_token }}"}], "bos_token": "<s>"}`, "D<s>", nil},
		// Expected values from Jinja2 as transformers sets it up.
		{"one trailing newline dropped", `{"chat_template": "a{{ 1 }}\n\n"}`, "a1\n", nil},
		{"line breaks normalized", `{"chat_template": "a\rb\r\nc\r\n"}`, "a\nb\nc", nil},
		{"tools are none", `{"chat_template": "{% if tools is not none %}tools{% else %}none{% endif %}"}`, "none", nil},
		{"raise_exception", `{"chat_template": "{{ raise_exception('nope') }}"}`, "", ErrTemplate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := writeAndLoad(t, string(tj), tc.config)
			got, err := tok.ApplyChatTemplate(msgs, false)
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	// chat_template.jinja wins over the config, as in transformers.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, TokenizerFile), tj, 0o644)
	os.WriteFile(filepath.Join(dir, ConfigFile), []byte(`{"chat_template": "config"}`), 0o644)
	os.WriteFile(filepath.Join(dir, ChatTemplateFile), []byte("file {{ messages | length }}\n"), 0o644)
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tok.ApplyChatTemplate(msgs, false); err != nil || got != "file 1" {
		t.Fatalf("with %s: %q, %v; want %q", ChatTemplateFile, got, err, "file 1")
	}
	// A list without "default" is an error at load, naming the file.
	dir = t.TempDir()
	os.WriteFile(filepath.Join(dir, TokenizerFile), tj, 0o644)
	os.WriteFile(filepath.Join(dir, ConfigFile), []byte(`{"chat_template": [{"name": "rag", "template": "x"}]}`), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), ConfigFile) || !strings.Contains(err.Error(), "default") {
		t.Fatalf("Load with no default template: err = %v", err)
	}
}
