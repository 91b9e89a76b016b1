package tokenizer

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

var goldenDir = flag.String("goldens", "testdata", "directory with golden_<family>.json from tools/goldens/tokenizer_goldens.py")

// goldenFile is what tools/goldens/tokenizer_goldens.py writes: HF
// tokenizers' ids and decodings and transformers' chat templates for the
// testdata tokenizers.
type goldenFile struct {
	TokenizersVersion   string         `json:"tokenizers_version"`
	TransformersVersion string         `json:"transformers_version"`
	Family              string         `json:"family"`
	VocabSize           int            `json:"vocab_size"`
	AddedTokenIDs       map[string]int `json:"added_token_ids"`
	Warnings            []string       `json:"warnings"`
	Encode              []goldenEncode `json:"encode"`
	Decode              []goldenDecode `json:"decode"`
	Chat                []goldenChat   `json:"chat"`
}

type goldenEncode struct {
	Text             string `json:"text"`
	AddSpecialTokens bool   `json:"add_special_tokens"`
	IDs              []int  `json:"ids"`
	Decoded          string `json:"decoded"`
	DecodedSkip      string `json:"decoded_skip"`
}

type goldenDecode struct {
	IDs               []int  `json:"ids"`
	SkipSpecialTokens bool   `json:"skip_special_tokens"`
	Text              string `json:"text"`
}

type goldenChat struct {
	Name                string    `json:"name"`
	Messages            []Message `json:"messages"`
	AddGenerationPrompt bool      `json:"add_generation_prompt"`
	Text                *string   `json:"text"`
	Error               *string   `json:"error"`
}

// TestGoldens requires exact agreement with HF tokenizers and transformers
// on the inputs listed in tools/goldens/tokenizer_goldens.py.
func TestGoldens(t *testing.T) {
	for _, fam := range []string{FamilyLlama3, FamilyLlama2} {
		t.Run(fam, func(t *testing.T) {
			path := filepath.Join(*goldenDir, "golden_"+fam+".json")
			data, err := os.ReadFile(path)
			if errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s is missing: produce it with HF tokenizers 0.23 and transformers 5.17 by running, "+
					"from the repository root, python3 tools/goldens/tokenizer_goldens.py", path)
			}
			if err != nil {
				t.Fatal(err)
			}
			var g goldenFile
			if err := json.Unmarshal(data, &g); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			t.Logf("%s: tokenizers %s, transformers %s", path, g.TokenizersVersion, g.TransformersVersion)
			for _, w := range g.Warnings {
				t.Logf("generator warning: %s", w)
			}
			tok := loadFamily(t, fam)
			if g.VocabSize != tok.VocabSize() {
				t.Errorf("vocab size %d, HF %d", tok.VocabSize(), g.VocabSize)
			}
			for s, id := range g.AddedTokenIDs {
				if got, ok := tok.TokenID(s); !ok || got != id {
					t.Errorf("TokenID(%q) = %d, %v; HF %d", s, got, ok, id)
				}
			}
			checkGoldenEncode(t, tok, g.Encode)
			checkGoldenDecode(t, tok, g.Decode)
			checkGoldenChat(t, tok, g.Chat)
		})
	}
}

func checkGoldenEncode(t *testing.T, tok *Tokenizer, cases []goldenEncode) {
	if len(cases) == 0 {
		t.Error("no encode cases")
	}
	for _, c := range cases {
		ids, err := tok.Encode(c.Text, c.AddSpecialTokens)
		if err != nil {
			t.Errorf("Encode(%q, %v): %v", c.Text, c.AddSpecialTokens, err)
			continue
		}
		if !slices.Equal(ids, c.IDs) {
			t.Errorf("Encode(%q, %v):\n got %v %q\n HF  %v %q", c.Text, c.AddSpecialTokens,
				ids, tokenStrings(tok, ids), c.IDs, tokenStrings(tok, c.IDs))
			continue
		}
		if got := tok.Decode(c.IDs, false); got != c.Decoded {
			t.Errorf("Decode(%v, false) = %q, HF %q", c.IDs, got, c.Decoded)
		}
		if got := tok.Decode(c.IDs, true); got != c.DecodedSkip {
			t.Errorf("Decode(%v, true) = %q, HF %q", c.IDs, got, c.DecodedSkip)
		}
	}
}

func checkGoldenDecode(t *testing.T, tok *Tokenizer, cases []goldenDecode) {
	if len(cases) == 0 {
		t.Error("no decode cases")
	}
	for _, c := range cases {
		if got := tok.Decode(c.IDs, c.SkipSpecialTokens); got != c.Text {
			t.Errorf("Decode(%v %q, %v) = %q, HF %q", c.IDs, tokenStrings(tok, c.IDs), c.SkipSpecialTokens, got, c.Text)
		}
	}
}

func checkGoldenChat(t *testing.T, tok *Tokenizer, cases []goldenChat) {
	if len(cases) == 0 {
		t.Error("no chat cases")
	}
	for _, c := range cases {
		got, err := tok.ApplyChatTemplate(c.Messages, c.AddGenerationPrompt)
		switch {
		case c.Error != nil && err == nil:
			t.Errorf("chat %s (generation prompt %v): rendered %q, HF failed: %s", c.Name, c.AddGenerationPrompt, got, *c.Error)
		case c.Error != nil:
			if !errors.Is(err, ErrTemplate) {
				t.Errorf("chat %s: error %v is not ErrTemplate", c.Name, err)
			}
		case err != nil:
			t.Errorf("chat %s (generation prompt %v): %v", c.Name, c.AddGenerationPrompt, err)
		case c.Text == nil:
			t.Errorf("chat %s: golden has neither text nor error", c.Name)
		case got != *c.Text:
			t.Errorf("chat %s (generation prompt %v):\n got %q\n HF  %q", c.Name, c.AddGenerationPrompt, got, *c.Text)
		}
	}
}
