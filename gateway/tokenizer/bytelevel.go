package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// The GPT-2 byte-to-unicode table. Byte-level BPE vocabularies store every
// byte as a printable character: the printable Latin-1 bytes ('!'..'~',
// '¡'..'¬', '®'..'ÿ') stand for themselves and the other 68 bytes, in
// increasing order, become U+0100, U+0101, ... (space is 'Ġ', newline 'Ċ').
var (
	byteToRune [256]rune
	// runeToByte is indexed by rune; -1 where the rune stands for no byte.
	runeToByte [324]int16
)

func init() {
	for i := range runeToByte {
		runeToByte[i] = -1
	}
	printable := func(b int) bool {
		return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
	}
	n := 0
	for b := range 256 {
		r := rune(b)
		if !printable(b) {
			r = rune(256 + n)
			n++
		}
		byteToRune[b] = r
		runeToByte[r] = int16(b)
	}
}

// byteLevelEncode maps every byte of s to its table character.
func byteLevelEncode(s string) string {
	var sb strings.Builder
	sb.Grow(2 * len(s))
	for i := 0; i < len(s); i++ {
		sb.WriteRune(byteToRune[s[i]])
	}
	return sb.String()
}

// byteLevelDecode maps a token's characters back to bytes. As in HF, a
// token with any character outside the table (an added token such as
// "<|eot_id|>" is inside it; "é" is too, as byte 0xE9) contributes its own
// UTF-8 bytes unchanged.
func byteLevelDecode(dst []byte, tok string) []byte {
	start := len(dst)
	for _, r := range tok {
		if r < 0 || int(r) >= len(runeToByte) || runeToByte[r] < 0 {
			return append(dst[:start], tok...)
		}
		dst = append(dst, byte(runeToByte[r]))
	}
	return dst
}

// byteLevelRaw returns the bytes a byte-level token stands for, and false if
// some character of it is outside the table.
func byteLevelRaw(tok string) (string, bool) {
	b := make([]byte, 0, len(tok))
	for _, r := range tok {
		if r < 0 || int(r) >= len(runeToByte) || runeToByte[r] < 0 {
			return "", false
		}
		b = append(b, byte(runeToByte[r]))
	}
	return string(b), true
}

// utf8Lossy converts b to a string the way Rust's String::from_utf8_lossy
// (and Python's errors="replace") do: every maximal subpart of an ill-formed
// sequence becomes one U+FFFD. Go's own conversions replace byte by byte or
// run by run, which gives a different count of replacement characters.
func utf8Lossy(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b) + 8)
	for i := 0; i < len(b); {
		n, st := utf8Prefix(b[i:])
		if st == utf8OK {
			sb.Write(b[i : i+n])
		} else {
			sb.WriteString("\uFFFD")
		}
		i += n
	}
	return sb.String()
}

// Results of utf8Prefix.
const (
	utf8OK        = iota // a complete valid character
	utf8Invalid          // an ill-formed sequence
	utf8Truncated        // a valid start that the input ends before completing
)

// utf8Prefix looks at the sequence starting at b[0] (len(b) > 0). It
// returns the length of the character or of the maximal subpart of an
// ill-formed or truncated sequence (n >= 1), and which of the three it is.
func utf8Prefix(b []byte) (n, status int) {
	c := b[0]
	var need int
	lo, hi := byte(0x80), byte(0xBF)
	switch {
	case c < 0x80:
		return 1, utf8OK
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c >= 0xE1 && c <= 0xEC, c == 0xEE, c == 0xEF:
		need = 2
	case c == 0xED:
		need, hi = 2, 0x9F
	case c == 0xF0:
		need, lo = 3, 0x90
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	case c == 0xF4:
		need, hi = 3, 0x8F
	default:
		return 1, utf8Invalid
	}
	for k := 1; k <= need; k++ {
		if k >= len(b) {
			return k, utf8Truncated // the whole rest is one maximal subpart
		}
		x := b[k]
		if k == 1 {
			if x < lo || x > hi {
				return 1, utf8Invalid
			}
		} else if x < 0x80 || x > 0xBF {
			return k, utf8Invalid
		}
	}
	return need + 1, utf8OK
}

// incompleteTail returns how many bytes at the end of b form the start of a
// character that more bytes could still complete (0 if none).
func incompleteTail(b []byte) int {
	for k := 1; k <= 3 && k <= len(b); k++ {
		i := len(b) - k
		c := b[i]
		if c < 0x80 {
			return 0
		}
		if c >= 0xC0 {
			if _, st := utf8Prefix(b[i:]); st == utf8Truncated {
				return k
			}
			return 0
		}
	}
	return 0
}
