package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// The trainers write small deterministic tokenizers of the two families for
// test models. Training is plain BPE: count adjacent pairs over the words
// of the corpus (each weighted by its count), merge the most frequent pair,
// ties going to the pair whose token strings sort first, and repeat until
// the vocabulary is full. Nothing depends on map order, so the same corpus
// always gives the same bytes.

// Llama3Pattern is the Split regex of Llama 3's pre-tokenizer.
const Llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// Families that TokenizerConfig knows.
const (
	FamilyLlama3 = "llama3"
	FamilyLlama2 = "llama2"
)

// Llama 2's fixed tokens.
const (
	llama2Unk = "<unk>"
	llama2BOS = "<s>"
	llama2EOS = "</s>"
	metaspace = "▁"
)

// minCharCount is how often a character must occur in a SentencePiece-style
// corpus to get a token of its own; rarer ones are left to byte fallback.
const minCharCount = 3

// TrainByteLevel trains a Llama-3-style byte-level BPE tokenizer on corpus
// and returns its tokenizer.json. The vocabulary has exactly vocabSize
// ids: the 256 byte characters, merges, then specials (special added
// tokens, in order, so the last len(specials) ids). specials[0] is BOS,
// added by the post-processor.
func TrainByteLevel(corpus string, vocabSize int, specials []string) ([]byte, error) {
	if len(specials) == 0 {
		return nil, fmt.Errorf("train: byte-level needs at least a BOS special token")
	}
	n := vocabSize - len(specials)
	if n < 256 {
		return nil, fmt.Errorf("train: vocab size %d leaves %d ids for the 256 bytes and merges", vocabSize, n)
	}
	for i, s := range specials {
		if s == "" || slices.Contains(specials[:i], s) {
			return nil, fmt.Errorf("train: special token %q is empty or repeated", s)
		}
	}
	re, err := compileRegex(Llama3Pattern)
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	for _, line := range splitKeep(corpus) {
		ms, err := re.find(line)
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			counts[line[m[0]:m[1]]]++
		}
	}
	tr := newTrainer()
	for b := range 256 {
		tr.addToken(string(byteToRune[b]))
	}
	for w, c := range counts {
		syms := make([]int32, len(w))
		for i := 0; i < len(w); i++ {
			syms[i] = int32(w[i])
		}
		tr.addWord(syms, c)
	}
	if err := tr.train(n); err != nil {
		return nil, err
	}
	var added []addedTokenJSON
	for i, s := range specials {
		if _, ok := tr.ids[s]; ok {
			return nil, fmt.Errorf("train: special token %q is also a learned token", s)
		}
		added = append(added, addedTokenJSON{ID: n + i, Content: s, Special: true})
	}
	w := &jsonWriter{}
	w.header(added)
	w.field("normalizer", "null")
	w.field("pre_tokenizer", `{"type": "Sequence", "pretokenizers": [`+
		`{"type": "Split", "pattern": {"Regex": `+jstr(Llama3Pattern)+`}, "behavior": "Isolated", "invert": false}, `+
		`{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}`)
	w.field("post_processor", `{"type": "Sequence", "processors": [`+
		`{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}, `+
		templateJSON(specials[0], n)+`]}`)
	w.field("decoder", `{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}`)
	w.model(tr, `null`, false, false, true)
	return w.bytes(), nil
}

// TrainSentencePiece trains a Llama-2-style BPE tokenizer with byte fallback
// on corpus and returns its tokenizer.json. Ids: <unk>=0, <s>=1, </s>=2,
// <0x00>..<0xFF>=3..258, then the characters seen at least minCharCount
// times (most frequent first), then merges, exactly vocabSize in all.
// Words are the corpus lines cut before each "▁" as the normalizer writes
// them, so no merge crosses a word boundary, as in SentencePiece.
func TrainSentencePiece(corpus string, vocabSize int) ([]byte, error) {
	const fixed = 3 + 256
	if vocabSize < fixed+1 {
		return nil, fmt.Errorf("train: vocab size %d leaves no room past <unk>, <s>, </s> and 256 bytes", vocabSize)
	}
	counts := map[string]int{}
	for _, line := range strings.Split(corpus, "\n") {
		if line == "" {
			continue
		}
		norm := metaspace + strings.ReplaceAll(line, " ", metaspace)
		for len(norm) > 0 {
			i := strings.Index(norm[len(metaspace):], metaspace)
			if i < 0 {
				counts[norm]++
				break
			}
			counts[norm[:len(metaspace)+i]]++
			norm = norm[len(metaspace)+i:]
		}
	}
	charCount := map[rune]int{}
	for w, c := range counts {
		for _, r := range w {
			charCount[r] += c
		}
	}
	var chars []rune
	for r, c := range charCount {
		if c >= minCharCount && r >= ' ' && r != 0x7F {
			chars = append(chars, r)
		}
	}
	slices.SortFunc(chars, func(a, b rune) int {
		if charCount[a] != charCount[b] {
			return charCount[b] - charCount[a]
		}
		return int(a - b)
	})
	if room := vocabSize - fixed; len(chars) > room {
		chars = chars[:room]
	}
	tr := newTrainer()
	for _, s := range []string{llama2Unk, llama2BOS, llama2EOS} {
		tr.addToken(s)
	}
	for b := range 256 {
		tr.addToken(fmt.Sprintf("<0x%02X>", b))
	}
	for _, r := range chars {
		tr.addToken(string(r))
	}
	for w, c := range counts {
		var syms []int32
		for _, r := range w {
			id, ok := tr.ids[string(r)]
			if !ok {
				id = -1 // left to byte fallback: never merged
			}
			syms = append(syms, id)
		}
		tr.addWord(syms, c)
	}
	if err := tr.train(vocabSize); err != nil {
		return nil, err
	}
	var added []addedTokenJSON
	for i, s := range []string{llama2Unk, llama2BOS, llama2EOS} {
		added = append(added, addedTokenJSON{ID: i, Content: s, Special: true})
	}
	w := &jsonWriter{}
	w.header(added)
	w.field("normalizer", `{"type": "Sequence", "normalizers": [`+
		`{"type": "Prepend", "prepend": "▁"}, `+
		`{"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}`)
	w.field("pre_tokenizer", "null")
	w.field("post_processor", templateJSON(llama2BOS, 1))
	w.field("decoder", `{"type": "Sequence", "decoders": [`+
		`{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, `+
		`{"type": "ByteFallback"}, {"type": "Fuse"}, `+
		`{"type": "Strip", "content": " ", "start": 1, "stop": 0}]}`)
	w.model(tr, jstr(llama2Unk), true, true, false)
	return w.bytes(), nil
}

// splitKeep cuts s into lines that keep their "\n", so that training sees
// the newline runs the pre-tokenizer makes without one huge string.
func splitKeep(s string) []string {
	var out []string
	for s != "" {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			out = append(out, s)
			break
		}
		// Keep a run of newlines with the line before it.
		j := i + 1
		for j < len(s) && (s[j] == '\n' || s[j] == '\r') {
			j++
		}
		out = append(out, s[:j])
		s = s[j:]
	}
	return out
}

// trainer holds the vocabulary and the words being merged.
type trainer struct {
	toks   []string
	ids    map[string]int32
	merges [][2]string
	words  [][]int32
	counts []int
}

func newTrainer() *trainer { return &trainer{ids: map[string]int32{}} }

func (tr *trainer) addToken(s string) int32 {
	if id, ok := tr.ids[s]; ok {
		return id
	}
	id := int32(len(tr.toks))
	tr.toks = append(tr.toks, s)
	tr.ids[s] = id
	return id
}

func (tr *trainer) addWord(syms []int32, count int) {
	tr.words = append(tr.words, syms)
	tr.counts = append(tr.counts, count)
}

// train merges until the vocabulary has size tokens.
func (tr *trainer) train(size int) error {
	// The result does not depend on the order of words: counts are sums
	// and ties are broken by the strings.
	for len(tr.toks) < size {
		pairs := map[[2]int32]int{}
		for i, w := range tr.words {
			c := tr.counts[i]
			for k := 0; k+1 < len(w); k++ {
				if w[k] >= 0 && w[k+1] >= 0 {
					pairs[[2]int32{w[k], w[k+1]}] += c
				}
			}
		}
		if len(pairs) == 0 {
			return fmt.Errorf("train: corpus has no pairs left at %d of %d tokens; use a longer corpus or a smaller vocab", len(tr.toks), size)
		}
		var best [2]int32
		bestCount := -1
		for p, c := range pairs {
			if c > bestCount || (c == bestCount && tr.pairLess(p, best)) {
				best, bestCount = p, c
			}
		}
		a, b := tr.toks[best[0]], tr.toks[best[1]]
		id := tr.addToken(a + b)
		tr.merges = append(tr.merges, [2]string{a, b})
		for i, w := range tr.words {
			tr.words[i] = mergePair(w, best, id)
		}
	}
	return nil
}

// pairLess orders pairs by their token strings.
func (tr *trainer) pairLess(p, q [2]int32) bool {
	if c := strings.Compare(tr.toks[p[0]], tr.toks[q[0]]); c != 0 {
		return c < 0
	}
	return tr.toks[p[1]] < tr.toks[q[1]]
}

// mergePair replaces each occurrence of pair in w, left to right.
func mergePair(w []int32, pair [2]int32, id int32) []int32 {
	out := w[:0]
	for k := 0; k < len(w); k++ {
		if k+1 < len(w) && w[k] == pair[0] && w[k+1] == pair[1] {
			out = append(out, id)
			k++
			continue
		}
		out = append(out, w[k])
	}
	return out
}

// jsonWriter writes tokenizer.json in HF's key order, one vocab entry and
// one merge per line.
type jsonWriter struct {
	b bytes.Buffer
}

func (w *jsonWriter) header(added []addedTokenJSON) {
	w.b.WriteString("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [")
	for i, a := range added {
		if i > 0 {
			w.b.WriteString(",")
		}
		fmt.Fprintf(&w.b, "\n    {\"id\": %d, \"content\": %s, \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": %t}",
			a.ID, jstr(a.Content), a.Special)
	}
	w.b.WriteString("\n  ]")
}

func (w *jsonWriter) field(name, value string) {
	fmt.Fprintf(&w.b, ",\n  %s: %s", jstr(name), value)
}

func (w *jsonWriter) model(tr *trainer, unk string, fuseUnk, byteFallback, ignoreMerges bool) {
	fmt.Fprintf(&w.b, ",\n  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": %s,\n"+
		"    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n"+
		"    \"fuse_unk\": %t,\n    \"byte_fallback\": %t,\n    \"ignore_merges\": %t,\n    \"vocab\": {",
		unk, fuseUnk, byteFallback, ignoreMerges)
	for id, s := range tr.toks {
		if id > 0 {
			w.b.WriteString(",")
		}
		fmt.Fprintf(&w.b, "\n      %s: %d", jstr(s), id)
	}
	w.b.WriteString("\n    },\n    \"merges\": [")
	for i, m := range tr.merges {
		if i > 0 {
			w.b.WriteString(",")
		}
		fmt.Fprintf(&w.b, "\n      [%s, %s]", jstr(m[0]), jstr(m[1]))
	}
	w.b.WriteString("\n    ]\n  }\n}\n")
}

func (w *jsonWriter) bytes() []byte { return w.b.Bytes() }

// templateJSON is a TemplateProcessing that puts token bos (id) first.
func templateJSON(bos string, id int) string {
	sp := fmt.Sprintf(`{"SpecialToken": {"id": %s, "type_id": 0}}`, jstr(bos))
	sp1 := fmt.Sprintf(`{"SpecialToken": {"id": %s, "type_id": 1}}`, jstr(bos))
	return `{"type": "TemplateProcessing", ` +
		`"single": [` + sp + `, {"Sequence": {"id": "A", "type_id": 0}}], ` +
		`"pair": [` + sp + `, {"Sequence": {"id": "A", "type_id": 0}}, ` + sp1 + `, {"Sequence": {"id": "B", "type_id": 1}}], ` +
		fmt.Sprintf(`"special_tokens": {%s: {"id": %s, "ids": [%d], "tokens": [%s]}}}`, jstr(bos), jstr(bos), id, jstr(bos))
}

// jstr is a JSON string without HTML escaping ("<s>" stays readable).
func jstr(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return strings.TrimSuffix(b.String(), "\n")
}

// Chat templates written for the test tokenizers. They follow the shape of
// the Llama 3 and Llama 2 chat formats; transformers renders them with
// trim_blocks and lstrip_blocks, which the whitespace control here makes
// irrelevant.
const (
	llama3ChatTemplate = "{{- bos_token -}}\n" +
		"{%- for message in messages -%}\n" +
		"{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}\n" +
		"{{- message['content'] | trim -}}\n" +
		"{{- '<|eot_id|>' -}}\n" +
		"{%- endfor -%}\n" +
		"{%- if add_generation_prompt -%}\n" +
		"{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n" +
		"{%- endif -%}"

	llama2ChatTemplate = "{%- if messages and messages[0]['role'] == 'system' -%}\n" +
		"{%- set system_message = messages[0]['content'] | trim -%}\n" +
		"{%- set loop_messages = messages[1:] -%}\n" +
		"{%- else -%}\n" +
		"{%- set system_message = '' -%}\n" +
		"{%- set loop_messages = messages -%}\n" +
		"{%- endif -%}\n" +
		"{%- for message in loop_messages -%}\n" +
		"{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n" +
		"{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}\n" +
		"{%- endif -%}\n" +
		"{%- if message['role'] == 'user' -%}\n" +
		"{%- if loop.first and system_message != '' -%}\n" +
		"{{- bos_token + '[INST] <<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + (message['content'] | trim) + ' [/INST]' -}}\n" +
		"{%- else -%}\n" +
		"{{- bos_token + '[INST] ' + (message['content'] | trim) + ' [/INST]' -}}\n" +
		"{%- endif -%}\n" +
		"{%- elif message['role'] == 'assistant' -%}\n" +
		"{{- ' ' + (message['content'] | trim) + ' ' + eos_token -}}\n" +
		"{%- else -%}\n" +
		"{{- raise_exception('Unknown role: ' + message['role']) -}}\n" +
		"{%- endif -%}\n" +
		"{%- endfor -%}"
)

// TokenizerConfig returns the tokenizer_config.json that goes with a
// trained tokenizer of family FamilyLlama3 (specials as given to
// TrainByteLevel: BOS is specials[0], EOS is "<|eot_id|>" if present, else
// specials[1]) or FamilyLlama2 (specials ignored: <s>, </s>, <unk>). It
// names PreTrainedTokenizerFast so that transformers uses tokenizer.json as
// it is, and carries the family's chat template.
func TokenizerConfig(family string, specials []string) ([]byte, error) {
	type kv struct {
		k string
		v any
	}
	var fields []kv
	switch family {
	case FamilyLlama3:
		if len(specials) == 0 {
			return nil, fmt.Errorf("tokenizer config: %s needs special tokens", family)
		}
		eos := specials[0]
		if len(specials) > 1 {
			eos = specials[1]
		}
		if slices.Contains(specials, "<|eot_id|>") {
			eos = "<|eot_id|>"
		}
		fields = []kv{
			{"add_bos_token", true},
			{"add_eos_token", false},
			{"bos_token", specials[0]},
			{"chat_template", llama3ChatTemplate},
			{"clean_up_tokenization_spaces", false},
			{"eos_token", eos},
			{"model_input_names", []string{"input_ids", "attention_mask"}},
			{"model_max_length", 131072},
			{"tokenizer_class", "PreTrainedTokenizerFast"},
		}
	case FamilyLlama2:
		fields = []kv{
			{"add_bos_token", true},
			{"add_eos_token", false},
			{"bos_token", llama2BOS},
			{"chat_template", llama2ChatTemplate},
			{"clean_up_tokenization_spaces", false},
			{"eos_token", llama2EOS},
			{"model_max_length", 4096},
			{"pad_token", nil},
			{"tokenizer_class", "PreTrainedTokenizerFast"},
			{"unk_token", llama2Unk},
		}
	default:
		return nil, fmt.Errorf("tokenizer config: family %q: %w", family, ErrUnsupported)
	}
	var b bytes.Buffer
	b.WriteString("{")
	for i, f := range fields {
		if i > 0 {
			b.WriteString(",")
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(f.v); err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "\n  %s: %s", jstr(f.k), strings.TrimSuffix(buf.String(), "\n"))
	}
	b.WriteString("\n}\n")
	return b.Bytes(), nil
}
