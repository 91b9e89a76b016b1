package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"unicode/utf8"
)

// WriteTensor is one tensor for Write.
type WriteTensor struct {
	Name  string
	Shape []int
	Data  []float32 // row-major, len = product of Shape
}

// shardName is transformers' name for shard i (1-based) of n.
func shardName(i, n int) string { return fmt.Sprintf("model-%05d-of-%05d.safetensors", i, n) }

var shardPattern = regexp.MustCompile(`^model-\d{5}-of-\d{5}\.safetensors$`)

// Write stores tensors in dir as dtype (F32, F16 or BF16; F16 and BF16 round
// to nearest even), creating dir if needed. Everything goes into
// model.safetensors when maxShardBytes <= 0 or the tensor data fits in it;
// otherwise tensors are packed in order into shards of at most
// maxShardBytes of data (a larger tensor gets a shard of its own) named and
// indexed as transformers does. metadata is stored in every header with
// "format": "pt" added unless it sets "format".
//
// Output is byte-for-byte deterministic. Each file is written under a
// temporary name and renamed into place, the index last; weight files of an
// earlier layout (the single file, an index, other shards) are removed
// afterwards, so Open never prefers a stale index to the new weights.
func Write(dir string, tensors []WriteTensor, dtype DType, maxShardBytes int64, metadata map[string]string) error {
	if !dtype.convertible() {
		return fmt.Errorf("%s: %w %q for writing (want F32, F16 or BF16)", dir, ErrDType, dtype)
	}
	size := int64(dtype.Bits() / 8)
	seen := map[string]bool{}
	var total int64
	for _, t := range tensors {
		if t.Name == "" || t.Name == metadataKey || !utf8.ValidString(t.Name) {
			return fmt.Errorf("%s: tensor %q: invalid name", dir, t.Name)
		}
		if seen[t.Name] {
			return fmt.Errorf("%s: tensor %q: duplicate name", dir, t.Name)
		}
		seen[t.Name] = true
		n := 1
		for _, d := range t.Shape {
			if d < 0 || d > 0 && n > math.MaxInt/d {
				return fmt.Errorf("%s: tensor %q: %w: shape %v is negative or too large", dir, t.Name, ErrShape, t.Shape)
			}
			n *= d
		}
		if n != len(t.Data) {
			return fmt.Errorf("%s: tensor %q: %w: shape %v has %d elements, data %d",
				dir, t.Name, ErrShape, t.Shape, n, len(t.Data))
		}
		total += int64(n) * size
	}
	meta := map[string]string{"format": "pt"}
	maps.Copy(meta, metadata)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	var shards [][]WriteTensor
	if maxShardBytes <= 0 || total <= maxShardBytes {
		shards = [][]WriteTensor{tensors}
	} else {
		var cur []WriteTensor
		var curBytes int64
		for _, t := range tensors {
			b := int64(len(t.Data)) * size
			if len(cur) > 0 && curBytes+b > maxShardBytes {
				shards, cur, curBytes = append(shards, cur), nil, 0
			}
			cur, curBytes = append(cur, t), curBytes+b
		}
		shards = append(shards, cur)
	}

	keep := map[string]bool{}
	if len(shards) == 1 {
		if err := writeFile(dir, SingleFile, shards[0], dtype, meta); err != nil {
			return err
		}
		keep[SingleFile] = true
	} else {
		weightMap := map[string]string{}
		for i, s := range shards {
			name := shardName(i+1, len(shards))
			if err := writeFile(dir, name, s, dtype, meta); err != nil {
				return err
			}
			keep[name] = true
			for _, t := range s {
				weightMap[t.Name] = name
			}
		}
		if err := writeIndex(dir, total, weightMap); err != nil {
			return err
		}
		keep[IndexFile] = true
	}
	if err := removeStale(dir, keep); err != nil {
		return err
	}
	return syncDir(dir)
}

// removeStale deletes weight files of another layout than the one just
// written.
func removeStale(dir string, keep map[string]bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		if keep[name] || !(name == SingleFile || name == IndexFile || shardPattern.MatchString(name)) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("removing stale weights: %w", err)
		}
	}
	return nil
}

// header builds one file's padded header; tensors are laid out
// contiguously in the order given.
func header(tensors []WriteTensor, dtype DType, meta map[string]string) ([]byte, error) {
	size := int64(dtype.Bits() / 8)
	obj := make(map[string]any, len(tensors)+1)
	obj[metadataKey] = meta
	var off int64
	for _, t := range tensors {
		shape := make([]int64, len(t.Shape)) // never null, even for a scalar
		for i, d := range t.Shape {
			shape[i] = int64(d)
		}
		n := int64(len(t.Data)) * size
		obj[t.Name] = headerEntry{DataOffsets: []int64{off, off + n}, DType: dtype, Shape: shape}
		off += n
	}
	hdr, err := marshalJSON(obj, "")
	if err != nil {
		return nil, err
	}
	// Spaces up to a multiple of 8, as the reference writer pads, so the
	// data (which starts after the 8-byte length) is 8-byte aligned.
	for len(hdr)%8 != 0 {
		hdr = append(hdr, ' ')
	}
	if len(hdr) > maxHeaderBytes {
		return nil, fmt.Errorf("header of %d bytes exceeds the %d-byte limit", len(hdr), maxHeaderBytes)
	}
	return hdr, nil
}

// marshalJSON is json.Marshal (map keys sorted) without HTML escaping;
// indent != "" gives MarshalIndent's layout.
func marshalJSON(v any, indent string) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", indent)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func writeFile(dir, name string, tensors []WriteTensor, dtype DType, meta map[string]string) error {
	hdr, err := header(tensors, dtype, meta)
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, name), err)
	}
	return writeAtomic(dir, name, func(w *bufio.Writer) error {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(hdr)))
		w.Write(n[:])
		w.Write(hdr)
		buf := make([]byte, 0, 64<<10)
		for _, t := range tensors {
			for i, v := range t.Data {
				switch dtype {
				case F32:
					buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
				case F16:
					buf = binary.LittleEndian.AppendUint16(buf, Float32ToF16(v))
				case BF16:
					buf = binary.LittleEndian.AppendUint16(buf, Float32ToBF16(v))
				}
				if len(buf) > cap(buf)-4 || i == len(t.Data)-1 {
					if _, err := w.Write(buf); err != nil {
						return err
					}
					buf = buf[:0]
				}
			}
		}
		return nil
	})
}

// writeIndex writes the index as transformers does: json.dumps(index,
// indent=2, sort_keys=True) plus a newline, non-ASCII escaped.
func writeIndex(dir string, total int64, weightMap map[string]string) error {
	type indexMeta struct {
		TotalSize int64 `json:"total_size"`
	}
	idx := struct {
		Metadata  indexMeta         `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}{indexMeta{total}, weightMap}
	b, err := marshalJSON(idx, "  ")
	if err != nil {
		return err
	}
	b = append(asciiJSON(b), '\n')
	return writeAtomic(dir, IndexFile, func(w *bufio.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// asciiJSON escapes non-ASCII runes as Python's json.dumps does (\uXXXX,
// surrogate pairs above the BMP). Outside strings JSON is ASCII, so every
// such rune is inside a string.
func asciiJSON(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case r < utf8.RuneSelf:
			out = append(out, b[0])
		case r > 0xffff:
			r -= 0x10000
			out = fmt.Appendf(out, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		b = b[n:]
	}
	return out
}

// writeAtomic writes dir/name through a temporary file in dir that it
// syncs and renames, so a crash leaves either the old file or the new one,
// never a partial file under the final name.
func writeAtomic(dir, name string, fill func(*bufio.Writer) error) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	if err := fill(w); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(dir, name))
}

// syncDir makes the renames durable. It is best effort: the files are
// already synced, and some filesystems cannot sync a directory.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	d.Sync()
	return d.Close()
}
