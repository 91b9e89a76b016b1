// Package tokenizer encodes and decodes text exactly as Hugging Face
// tokenizers (0.23) does for the two BPE families that Llama-style models
// ship, reading the same tokenizer.json and tokenizer_config.json:
//
//   - byte-level BPE (Llama 3, GPT-2): a Split regex and the ByteLevel
//     pre-tokenizer, ignore_merges, the ByteLevel decoder;
//   - SentencePiece-style BPE (Llama 2, Mistral): the Prepend/Replace
//     normalizer or the Metaspace pre-tokenizer, byte fallback to <0xNN>
//     tokens, and the Replace/ByteFallback/Fuse/Strip decoder.
//
// The pipeline is HF's: added tokens are split out of the raw text first,
// the rest is normalized, pre-tokenized into words and each word is merged
// by the BPE model; the post-processor adds BOS. Parts of tokenizer.json
// outside these families fail Load with ErrUnsupported rather than encode
// differently.
//
// A Tokenizer is immutable after Load, except for a bounded word cache that
// locks itself, so Encode, Decode and ApplyChatTemplate may be called from
// any number of goroutines. A StreamDecoder belongs to one goroutine.
//
// Known limits: only single sequences are encoded (no pairs); truncation
// and padding settings in tokenizer.json are ignored (a server decides
// those); character classes (\p{L}, \p{N}, \s, \w) come from Go's Unicode
// tables (15.0), so the few characters that later Unicode versions
// assigned, which HF's Oniguruma knows, may split differently.
//
// The package also trains small deterministic tokenizers of both families
// (TrainByteLevel, TrainSentencePiece) for test models.
package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/ardanlabs/jinja"
)

// File names in a model directory.
const (
	TokenizerFile    = "tokenizer.json"
	ConfigFile       = "tokenizer_config.json"
	ChatTemplateFile = "chat_template.jinja"
)

// Errors are wrapped with the file, the part of it or the token at fault.
var (
	ErrUnsupported    = errors.New("unsupported tokenizer feature")
	ErrCorrupt        = errors.New("corrupt tokenizer file")
	ErrInvalidUTF8    = errors.New("text is not valid UTF-8")
	ErrNoChatTemplate = errors.New("no chat template")
	ErrTemplate       = errors.New("chat template failed")
	// ErrNoTokenizer is an IDsOnly tokenizer's answer to text.
	ErrNoTokenizer = errors.New("the server runs without a tokenizer (--skip-tokenizer-init): send prompts as token ids")
)

// IDsOnly is a Tokenizer for a model served without tokenizer files
// (vLLM's --skip-tokenizer-init, for benchmarks on --load-format dummy
// shapes): prompts must be token ids, and outputs carry ids with empty
// text. Encode and ApplyChatTemplate fail with ErrNoTokenizer; Decode and
// stream decoding give "". bos < 0 means none.
func IDsOnly(vocabSize, bos int, eos []int) *Tokenizer {
	return &Tokenizer{vocabSize: vocabSize, bos: int32(bos), eos: slices.Clone(eos)}
}

// Tokenizer is a loaded tokenizer. See the package comment for what may be
// called concurrently.
type Tokenizer struct {
	model          *bpeModel
	norm           normalizer   // nil: none
	pre            preTokenizer // nil: none
	post           []postStep
	decoder        *decoder
	added          []*addedToken
	addedByID      map[int32]*addedToken
	addedByContent map[string]*addedToken
	rawMatch       *addedMatcher   // added tokens with normalized=false, on raw text
	normMatch      *addedMatcher   // the others, on normalized text
	specials       map[string]bool // contents of special added tokens
	vocabSize      int

	bos      int32 // -1: none
	eos      []int
	tokens   map[string]string // bos_token etc. from the config, for templates
	template *jinja.Template
}

// Load reads dir/tokenizer.json and, if present, dir/tokenizer_config.json
// and dir/chat_template.jinja, whose template wins over the config's as in
// transformers.
func Load(dir string) (*Tokenizer, error) {
	path := filepath.Join(dir, TokenizerFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := parseTokenizer(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cpath := filepath.Join(dir, ConfigFile)
	cdata, err := os.ReadFile(cpath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		cdata = nil
	case err != nil:
		return nil, err
	}
	if err := t.applyConfig(cdata); err != nil {
		return nil, fmt.Errorf("%s: %w", cpath, err)
	}
	tpath := filepath.Join(dir, ChatTemplateFile)
	tdata, err := os.ReadFile(tpath)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if t.template, err = compileTemplate(string(tdata)); err != nil {
			return nil, fmt.Errorf("%s: %w: %w", tpath, ErrTemplate, err)
		}
	}
	return t, nil
}

// parseTokenizer builds a Tokenizer from tokenizer.json's contents.
func parseTokenizer(data []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if isNull(f.Model) {
		return nil, fmt.Errorf("no model: %w", ErrCorrupt)
	}
	t := &Tokenizer{bos: -1}
	var err error
	if t.model, err = parseBPE(f.Model); err != nil {
		return nil, corrupt(err)
	}
	if t.norm, err = parseNormalizer(f.Normalizer); err != nil {
		return nil, fmt.Errorf("normalizer: %w", corrupt(err))
	}
	if t.pre, err = parsePreTokenizer(f.PreTokenizer); err != nil {
		return nil, fmt.Errorf("pre_tokenizer: %w", corrupt(err))
	}
	if t.decoder, err = parseDecoder(f.Decoder); err != nil {
		return nil, fmt.Errorf("decoder: %w", corrupt(err))
	}
	if err := t.addTokens(f.AddedTokens); err != nil {
		return nil, corrupt(err)
	}
	if t.post, err = t.parsePostProcessor(f.PostProcessor); err != nil {
		return nil, fmt.Errorf("post_processor: %w", corrupt(err))
	}
	t.vocabSize = len(t.model.idToTok)
	for id := range t.addedByID {
		t.vocabSize = max(t.vocabSize, int(id)+1)
	}
	return t, nil
}

// corrupt marks an error that is neither ErrUnsupported nor ErrCorrupt (a
// JSON shape error, a bad regex) as ErrCorrupt.
func corrupt(err error) error {
	if errors.Is(err, ErrUnsupported) || errors.Is(err, ErrCorrupt) {
		return err
	}
	return fmt.Errorf("%w: %w", err, ErrCorrupt)
}

// addTokens registers added tokens as HF's deserializer does: an id comes
// from the model's vocab when the content is there, else the next free id
// after the vocab. HF only warns when the id written in the file differs,
// and so does this (silently): the loaded id is the one HF uses.
func (t *Tokenizer) addTokens(list []addedTokenJSON) error {
	t.addedByID = make(map[int32]*addedToken)
	t.addedByContent = make(map[string]*addedToken)
	t.specials = make(map[string]bool)
	next := int32(len(t.model.vocab))
	for _, a := range list {
		if a.Content == "" {
			continue
		}
		var id int32
		if old, ok := t.addedByContent[a.Content]; ok {
			id = old.id
		} else if mid, ok := t.model.vocab[a.Content]; ok {
			id = mid
		} else {
			id = next
			next++
		}
		tok := &addedToken{
			id: id, content: a.Content, special: a.Special, singleWord: a.SingleWord,
			lstrip: a.LStrip, rstrip: a.RStrip, normalized: a.Normalized,
			match: a.Content, decodeAs: a.Content,
		}
		if a.Normalized && t.norm != nil {
			n, err := t.norm.normalize(a.Content)
			if err != nil {
				return fmt.Errorf("added token %q: %w", a.Content, err)
			}
			tok.match, tok.decodeAs = n, n
		}
		if old, ok := t.addedByID[id]; ok {
			t.added = slices.DeleteFunc(t.added, func(x *addedToken) bool { return x == old })
		}
		t.added = append(t.added, tok)
		t.addedByID[id] = tok
		t.addedByContent[a.Content] = tok
		if a.Special {
			t.specials[a.Content] = true
		}
	}
	var raw, norm []*addedToken
	for _, a := range t.added {
		if a.normalized {
			norm = append(norm, a)
		} else {
			raw = append(raw, a)
		}
	}
	t.rawMatch = newAddedMatcher(raw)
	t.normMatch = newAddedMatcher(norm)
	return nil
}

// applyConfig reads tokenizer_config.json (data may be nil).
func (t *Tokenizer) applyConfig(data []byte) error {
	t.tokens = map[string]string{}
	if data != nil {
		var c configJSON
		if err := json.Unmarshal(data, &c); err != nil {
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		for name, raw := range map[string]json.RawMessage{
			"bos_token": c.BOSToken, "eos_token": c.EOSToken,
			"unk_token": c.UnkToken, "pad_token": c.PadToken,
		} {
			s, ok, err := tokenContent(raw)
			if err != nil {
				return fmt.Errorf("%s: %w: %w", name, err, ErrCorrupt)
			}
			if ok {
				t.tokens[name] = s
			}
		}
		src, ok, err := chatTemplate(c.ChatTemplate)
		if err != nil {
			return fmt.Errorf("%w: %w", err, ErrCorrupt)
		}
		if ok {
			if t.template, err = compileTemplate(src); err != nil {
				return fmt.Errorf("chat_template: %w: %w", ErrTemplate, err)
			}
		}
	}
	if s, ok := t.tokens["bos_token"]; ok {
		id, ok := t.TokenID(s)
		if !ok {
			return fmt.Errorf("bos_token %q is not in the vocab: %w", s, ErrCorrupt)
		}
		t.bos = int32(id)
	} else {
		// No config: the first token the post-processor adds.
		for _, st := range t.post {
			for _, it := range st.single {
				if !it.seq && len(it.ids) > 0 && t.bos < 0 {
					t.bos = it.ids[0]
				}
			}
		}
	}
	if s, ok := t.tokens["eos_token"]; ok {
		id, ok := t.TokenID(s)
		if !ok {
			return fmt.Errorf("eos_token %q is not in the vocab: %w", s, ErrCorrupt)
		}
		t.eos = []int{id}
	}
	return nil
}

// Encode turns text into ids like HF's tokenizer.encode(text,
// add_special_tokens=addSpecialTokens).ids.
func (t *Tokenizer) Encode(text string, addSpecialTokens bool) ([]int, error) {
	if t.model == nil {
		return nil, ErrNoTokenizer
	}
	if !utf8.ValidString(text) {
		return nil, ErrInvalidUTF8
	}
	ids := make([]int32, 0, len(text)/3+4)
	var wd word // BPE scratch, reused for every word
	var err error
	word := func(w piece) error {
		ids, err = t.model.tokenize(ids, w.s, w.mapped, &wd)
		return err
	}
	var sub []segment
	for _, sg := range t.rawMatch.split(nil, piece{s: text, first: true}) {
		if sg.tok != nil {
			ids = append(ids, sg.tok.id)
			continue
		}
		p := sg.piece
		if t.norm != nil {
			if p.s, err = t.norm.normalize(p.s); err != nil {
				return nil, err
			}
		}
		sub = t.normMatch.split(sub[:0], p)
		for _, ss := range sub {
			switch {
			case ss.tok != nil:
				ids = append(ids, ss.tok.id)
			case t.pre != nil:
				if err := t.pre.each(ss.piece, word); err != nil {
					return nil, err
				}
			default:
				if err := word(ss.piece); err != nil {
					return nil, err
				}
			}
		}
	}
	if addSpecialTokens {
		for _, st := range t.post {
			ids = st.apply(ids)
		}
	}
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out, nil
}

// decodeToken returns the string the decoder gets for id, and false for an
// id that is unknown or skipped.
func (t *Tokenizer) decodeToken(id int, skipSpecial bool) (string, bool) {
	if t.model == nil {
		return "", false
	}
	var s string
	if a, ok := t.addedByID[int32(id)]; ok && id >= 0 && id <= 1<<31-1 {
		s = a.decodeAs
	} else if m, ok := t.model.token(id); ok {
		s = m
	} else {
		return "", false
	}
	// HF skips by string, against the contents of special tokens.
	if skipSpecial && t.specials[s] {
		return "", false
	}
	return s, true
}

// Decode turns ids into text like HF's tokenizer.decode(ids,
// skip_special_tokens=skipSpecialTokens). Unknown ids are ignored.
func (t *Tokenizer) Decode(ids []int, skipSpecialTokens bool) string {
	if t.model == nil {
		return ""
	}
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if s, ok := t.decodeToken(id, skipSpecialTokens); ok {
			toks = append(toks, s)
		}
	}
	s, _ := t.decoder.run(toks, true, true, false)
	return s
}

// VocabSize is the number of ids, added tokens included: one more than
// the largest id (the rows an embedding needs).
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// HasVocab reports whether t can turn text into ids and back (false for
// IDsOnly).
func (t *Tokenizer) HasVocab() bool { return t.model != nil }

// TokenString returns the vocabulary string of id ("Ġhello", "<0x0A>",
// "<|eot_id|>"), as HF's id_to_token.
func (t *Tokenizer) TokenString(id int) (string, bool) {
	if id < 0 || id > 1<<31-1 {
		return "", false
	}
	if a, ok := t.addedByID[int32(id)]; ok {
		return a.decodeAs, true
	}
	if t.model == nil {
		return "", false
	}
	return t.model.token(id)
}

// TokenID returns the id of a vocabulary string, added tokens first, as
// HF's token_to_id.
func (t *Tokenizer) TokenID(s string) (int, bool) {
	if a, ok := t.addedByContent[s]; ok {
		return int(a.id), true
	}
	if t.model == nil {
		return 0, false
	}
	id, ok := t.model.vocab[s]
	return int(id), ok
}

// BOS returns the beginning-of-sequence id: tokenizer_config's bos_token,
// else the first token the post-processor adds.
func (t *Tokenizer) BOS() (int, bool) { return int(t.bos), t.bos >= 0 }

// EOS returns the ids that end a generation: tokenizer_config's eos_token
// and any added with AddEOS.
func (t *Tokenizer) EOS() []int { return slices.Clone(t.eos) }

// AddEOS adds end-of-generation ids (from generation_config.json, say).
// It is not safe to call concurrently with EOS; call it after Load.
func (t *Tokenizer) AddEOS(ids ...int) {
	for _, id := range ids {
		if !slices.Contains(t.eos, id) {
			t.eos = append(t.eos, id)
		}
	}
}

// IsSpecial reports whether id is a special added token (one that
// Decode(..., true) skips).
func (t *Tokenizer) IsSpecial(id int) bool {
	if id < 0 || id > 1<<31-1 {
		return false
	}
	a, ok := t.addedByID[int32(id)]
	return ok && a.special
}

// ---- Post-processor ----

// postStep is one TemplateProcessing (or a ByteLevel one, which adds
// nothing: single is nil).
type postStep struct {
	single []tmplItem
}

// tmplItem is the sequence itself ($A) or the ids of a special token.
type tmplItem struct {
	seq bool
	ids []int32
}

func (st postStep) apply(ids []int32) []int32 {
	if st.single == nil {
		return ids
	}
	out := make([]int32, 0, len(ids)+4)
	for _, it := range st.single {
		if it.seq {
			out = append(out, ids...)
		} else {
			out = append(out, it.ids...)
		}
	}
	return out
}

func (t *Tokenizer) parsePostProcessor(raw json.RawMessage) ([]postStep, error) {
	if isNull(raw) {
		return nil, nil
	}
	var ty typed
	if err := json.Unmarshal(raw, &ty); err != nil {
		return nil, err
	}
	switch ty.Type {
	case "Sequence":
		var q struct {
			Processors []json.RawMessage `json:"processors"`
		}
		if err := json.Unmarshal(raw, &q); err != nil {
			return nil, err
		}
		var out []postStep
		for _, r := range q.Processors {
			st, err := t.parsePostProcessor(r)
			if err != nil {
				return nil, err
			}
			out = append(out, st...)
		}
		return out, nil
	case "ByteLevel":
		return nil, nil
	case "TemplateProcessing":
		var tp struct {
			Single        json.RawMessage `json:"single"`
			SpecialTokens map[string]struct {
				ID  string  `json:"id"`
				IDs []int32 `json:"ids"`
			} `json:"special_tokens"`
		}
		if err := json.Unmarshal(raw, &tp); err != nil {
			return nil, err
		}
		names, err := templatePieces(tp.Single)
		if err != nil {
			return nil, err
		}
		st := postStep{single: []tmplItem{}}
		for _, n := range names {
			if n == "" {
				st.single = append(st.single, tmplItem{seq: true})
				continue
			}
			sp, ok := tp.SpecialTokens[n]
			if !ok {
				return nil, fmt.Errorf("template token %q missing from special_tokens: %w", n, ErrCorrupt)
			}
			st.single = append(st.single, tmplItem{ids: sp.IDs})
		}
		return []postStep{st}, nil
	}
	return nil, fmt.Errorf("post_processor type %q: %w", ty.Type, ErrUnsupported)
}

// templatePieces reads a TemplateProcessing template in its list-of-pieces
// form ({"Sequence": {"id": "A"}}, {"SpecialToken": {"id": "<s>"}}) or its
// string form ("<s> $A"). A sequence comes back as "".
func templatePieces(raw json.RawMessage) ([]string, error) {
	var str string
	var list []json.RawMessage
	if json.Unmarshal(raw, &str) == nil {
		for _, p := range strings.Split(str, " ") {
			list = append(list, json.RawMessage(mustJSON(p)))
		}
	} else if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("template %s: %w", abbrev(raw), ErrCorrupt)
	}
	var out []string
	for _, r := range list {
		var s string
		if json.Unmarshal(r, &s) == nil {
			name, _, _ := strings.Cut(s, ":")
			switch name {
			case "$", "$A", "$a", "$0":
				out = append(out, "")
			case "$B", "$b", "$1":
				// The pair sequence never appears in a single template.
				return nil, fmt.Errorf("template piece %q: %w", s, ErrUnsupported)
			default:
				out = append(out, name)
			}
			continue
		}
		var p struct {
			Sequence *struct {
				ID string `json:"id"`
			} `json:"Sequence"`
			SpecialToken *struct {
				ID string `json:"id"`
			} `json:"SpecialToken"`
		}
		if err := json.Unmarshal(r, &p); err != nil {
			return nil, fmt.Errorf("template piece %s: %w", abbrev(r), ErrCorrupt)
		}
		switch {
		case p.Sequence != nil && p.Sequence.ID == "A":
			out = append(out, "")
		case p.SpecialToken != nil:
			out = append(out, p.SpecialToken.ID)
		default:
			return nil, fmt.Errorf("template piece %s: %w", abbrev(r), ErrUnsupported)
		}
	}
	return out, nil
}

func mustJSON(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}
