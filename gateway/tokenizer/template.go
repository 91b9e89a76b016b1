package tokenizer

import (
	"fmt"
	"strings"

	"github.com/ardanlabs/jinja"
)

// compileTemplate compiles a chat template the way transformers' Jinja
// environment reads it: line breaks become "\n" and one trailing line
// break is dropped (keep_trailing_newline=False), which the Go engine does
// not do by itself. Its trim_blocks and lstrip_blocks it does.
func compileTemplate(src string) (*jinja.Template, error) {
	src = strings.ReplaceAll(src, "\r\n", "\n")
	src = strings.ReplaceAll(src, "\r", "\n")
	src = strings.TrimSuffix(src, "\n")
	return jinja.Compile(src)
}

// Message is one turn of a conversation.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ApplyChatTemplate renders tokenizer_config's chat_template for messages,
// like transformers' apply_chat_template(messages, tokenize=False,
// add_generation_prompt=...). The template sees messages,
// add_generation_prompt, the config's bos_token, eos_token, unk_token and
// pad_token, tools and documents (none), and the library's
// raise_exception and strftime_now. A template that raises fails with
// ErrTemplate and its message.
func (t *Tokenizer) ApplyChatTemplate(messages []Message, addGenerationPrompt bool) (string, error) {
	if t.model == nil {
		return "", ErrNoTokenizer
	}
	if t.template == nil {
		return "", ErrNoChatTemplate
	}
	msgs := make([]jinja.Value, len(messages))
	for i, m := range messages {
		d := jinja.NewDict()
		d.AsDict().Set("role", jinja.NewString(m.Role))
		d.AsDict().Set("content", jinja.NewString(m.Content))
		msgs[i] = d
	}
	data := map[string]jinja.Value{
		"messages":              jinja.NewList(msgs),
		"add_generation_prompt": jinja.NewBool(addGenerationPrompt),
		// transformers passes these as None; a template testing
		// "tools is not none" must see None, not undefined.
		"tools":     jinja.None(),
		"documents": jinja.None(),
	}
	for name, s := range t.tokens {
		data[name] = jinja.NewString(s)
	}
	out, err := t.template.RenderValues(data)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrTemplate, err)
	}
	return out, nil
}
