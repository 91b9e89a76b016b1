package safetensors

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

const metadataKey = "__metadata__"

// entryError is a header error in one tensor's entry.
type entryError struct {
	name string
	err  error
}

func (e *entryError) Error() string { return fmt.Sprintf("tensor %q: %v", e.name, e.err) }

type namedEntry struct {
	name string
	h    headerEntry
}

// decodeHeader decodes the header JSON object, in file order. It is stricter
// than json.Unmarshal into a map: duplicate names and anything but
// whitespace after the object are errors, as in the reference
// implementation.
func decodeHeader(hdr []byte) ([]namedEntry, map[string]string, error) {
	if !utf8.Valid(hdr) {
		return nil, nil, errors.New("not UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(hdr))
	if tok, err := dec.Token(); err != nil {
		return nil, nil, err
	} else if tok != json.Delim('{') {
		return nil, nil, fmt.Errorf("not a JSON object")
	}
	var entries []namedEntry
	var meta map[string]string
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		name := tok.(string) // object keys are always strings
		if seen[name] {
			return nil, nil, &entryError{name, errors.New("appears twice")}
		}
		seen[name] = true
		if name == metadataKey {
			if err := decodeValue(dec, &meta); err != nil {
				return nil, nil, fmt.Errorf("%s: %v", metadataKey, err)
			}
			continue
		}
		var h headerEntry
		if err := decodeValue(dec, &h); err != nil {
			return nil, nil, &entryError{name, err}
		}
		entries = append(entries, namedEntry{name, h})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, nil, err
	}
	if rest := hdr[dec.InputOffset():]; len(bytes.TrimLeft(rest, " \t\r\n")) != 0 {
		return nil, nil, fmt.Errorf("data after the header object")
	}
	return entries, meta, nil
}

// decodeValue decodes the next value into v, insisting on an object (a null
// would silently leave v empty).
func decodeValue(dec *json.Decoder, v any) error {
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return err
	}
	if len(raw) == 0 || raw[0] != '{' {
		return errors.New("not a JSON object")
	}
	return json.Unmarshal(raw, v)
}
