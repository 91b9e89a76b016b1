// Package safetensors reads and writes Hugging Face safetensors checkpoints,
// one file (model.safetensors) or sharded (model-00001-of-0000N.safetensors
// with model.safetensors.index.json).
//
// Open maps each file read-only and checks every header before returning, so
// a bad checkpoint fails at load time with an error that names the file and
// tensor rather than later with garbage weights. Tensor data is never copied
// to the heap: Tensor.Data aliases the mapping, and Tensor.Float32 converts
// straight from it into the caller's buffer.
//
// Write produces checkpoints that the reference Python implementation and
// transformers load: tensors laid out contiguously, headers padded to 8
// bytes, {"format":"pt"} metadata and the transformers index layout.
package safetensors

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// File names as transformers writes them.
const (
	SingleFile = "model.safetensors"
	IndexFile  = "model.safetensors.index.json"
)

// maxHeaderBytes is the reference implementation's limit on the JSON header.
const maxHeaderBytes = 100_000_000

// Errors are wrapped with the file and, where there is one, the tensor.
var (
	ErrNoWeights     = errors.New("no safetensors weights")
	ErrCorrupt       = errors.New("corrupt safetensors file")
	ErrTruncated     = errors.New("truncated safetensors file")
	ErrShape         = errors.New("shape does not match data size")
	ErrDType         = errors.New("unsupported dtype")
	ErrMissingTensor = errors.New("missing tensor")
	ErrClosed        = errors.New("checkpoint closed")
)

// Tensor is one tensor of an open checkpoint.
type Tensor struct {
	Name  string
	File  string // path of the file that holds it
	DType DType
	Shape []int
	// Data is the tensor's bytes, little-endian, aliasing the read-only
	// mapping: writing to it faults, and it is invalid after
	// Checkpoint.Close.
	Data []byte
}

// NumElements is the product of the shape (1 for a scalar).
func (t *Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Checkpoint is an open, validated checkpoint. Get, Names, Metadata and
// TotalBytes may be called concurrently; Close may not overlap them, and
// nothing obtained from the checkpoint (Tensor.Data, Float32View slices) may
// be used after Close: that is the caller's bug and faults. The files must
// not be truncated while open either, for the same reason (SIGBUS).
type Checkpoint struct {
	path     string // what Open was given, for errors
	maps     [][]byte
	tensors  map[string]*Tensor
	names    []string
	metadata map[string]string
	total    int64
}

// Open opens the checkpoint at path, which is either a directory or a file.
// A directory is read through its model.safetensors.index.json when there
// is one, else as its model.safetensors, else the error is ErrNoWeights. A
// file is read as one safetensors file, or as an index if its name ends in
// ".index.json". Every file is mapped and its header validated; the caller
// must Close the checkpoint.
func Open(path string) (*Checkpoint, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoWeights, err)
	}
	if !fi.IsDir() {
		if strings.HasSuffix(path, ".index.json") {
			return openIndex(path, path)
		}
		return openSingle(path, path)
	}
	index := filepath.Join(path, IndexFile)
	switch _, err := os.Stat(index); {
	case err == nil:
		return openIndex(path, index)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	single := filepath.Join(path, SingleFile)
	switch _, err := os.Stat(single); {
	case err == nil:
		return openSingle(path, single)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	return nil, fmt.Errorf("%s: %w: neither %s nor %s", path, ErrNoWeights, IndexFile, SingleFile)
}

func openSingle(path, file string) (*Checkpoint, error) {
	c := &Checkpoint{path: path, tensors: map[string]*Tensor{}}
	f, err := c.mapFile(file)
	if err != nil {
		c.Close()
		return nil, err
	}
	maps.Copy(c.tensors, f.tensors)
	c.metadata = f.metadata
	c.finish()
	return c, nil
}

// openIndex opens the shards an index names and keeps exactly the tensors
// it lists, each from the shard it names.
func openIndex(path, index string) (*Checkpoint, error) {
	raw, err := os.ReadFile(index)
	if err != nil {
		return nil, err
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", index, ErrCorrupt, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, fmt.Errorf("%s: %w: no weight_map", index, ErrCorrupt)
	}
	dir := filepath.Dir(index)
	var shards []string
	for name, shard := range idx.WeightMap {
		if !filepath.IsLocal(filepath.FromSlash(shard)) {
			return nil, fmt.Errorf("%s: tensor %q: %w: shard %q is outside the directory", index, name, ErrCorrupt, shard)
		}
		shards = append(shards, shard)
	}
	slices.Sort(shards)
	shards = slices.Compact(shards)

	c := &Checkpoint{path: path, tensors: map[string]*Tensor{}, metadata: map[string]string{}}
	files := map[string]*parsedFile{}
	for _, shard := range shards {
		f, err := c.mapFile(filepath.Join(dir, filepath.FromSlash(shard)))
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: shard %q: %w", index, shard, err)
		}
		files[shard] = f
		for k, v := range f.metadata { // the first shard wins; they normally agree
			if _, ok := c.metadata[k]; !ok {
				c.metadata[k] = v
			}
		}
	}
	for name, shard := range idx.WeightMap {
		t, ok := files[shard].tensors[name]
		if !ok {
			c.Close()
			return nil, fmt.Errorf("%s: tensor %q: listed in %s but absent from the shard: %w",
				files[shard].path, name, index, ErrMissingTensor)
		}
		c.tensors[name] = t
	}
	c.finish()
	return c, nil
}

func (c *Checkpoint) finish() {
	c.names = slices.Sorted(maps.Keys(c.tensors))
	for _, t := range c.tensors {
		c.total += int64(len(t.Data))
	}
}

// mapFile maps one file and parses its header; the mapping is recorded on c
// so that Close releases it even when parsing fails.
func (c *Checkpoint) mapFile(path string) (*parsedFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: not a regular file", path, ErrCorrupt)
	}
	if fi.Size() < 8 {
		return nil, fmt.Errorf("%s: %w (%w): %d bytes, shorter than the 8-byte header length",
			path, ErrCorrupt, ErrTruncated, fi.Size())
	}
	m, err := mmapFile(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	c.maps = append(c.maps, m)
	return parse(path, m)
}

// Get returns the named tensor. The Tensor is the caller's to keep; its Data
// is valid until Close.
func (c *Checkpoint) Get(name string) (*Tensor, error) {
	if c.tensors == nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", c.path, name, ErrClosed)
	}
	t, ok := c.tensors[name]
	if !ok {
		return nil, fmt.Errorf("%s: tensor %q: %w", c.path, name, ErrMissingTensor)
	}
	cp := *t
	cp.Shape = slices.Clone(t.Shape)
	return &cp, nil
}

// Names lists the tensors, sorted.
func (c *Checkpoint) Names() []string { return slices.Clone(c.names) }

// Metadata is the header's "__metadata__" (for a sharded checkpoint, the
// union over shards, the first shard in name order winning a conflict).
func (c *Checkpoint) Metadata() map[string]string { return maps.Clone(c.metadata) }

// TotalBytes is the sum of the tensors' data sizes: the bytes a loader that
// reads every tensor once will consume, for progress reporting.
func (c *Checkpoint) TotalBytes() int64 { return c.total }

// Close unmaps every file. Calling it again does nothing; any other use of
// the checkpoint or its tensors' data afterwards is the caller's bug.
func (c *Checkpoint) Close() error {
	var errs []error
	for _, m := range c.maps {
		errs = append(errs, munmap(m))
	}
	c.maps, c.tensors, c.names = nil, nil, nil
	return errors.Join(errs...)
}

// parsedFile is one file's validated header.
type parsedFile struct {
	path     string
	tensors  map[string]*Tensor
	metadata map[string]string
}

// headerEntry is one tensor's header record; keys in alphabetical order so
// that Write's headers have every key sorted.
type headerEntry struct {
	DataOffsets []int64 `json:"data_offsets"`
	DType       DType   `json:"dtype"`
	Shape       []int64 `json:"shape"`
}

// parse validates the file image m (the whole file) and returns tensors
// whose Data alias it.
func parse(path string, m []byte) (*parsedFile, error) {
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w: %s", path, ErrCorrupt, fmt.Sprintf(format, args...))
	}
	n := binary.LittleEndian.Uint64(m)
	if n > maxHeaderBytes {
		return nil, corrupt("header length %d exceeds the %d-byte limit", n, maxHeaderBytes)
	}
	if n > uint64(len(m)-8) {
		return nil, fmt.Errorf("%s: %w (%w): header length %d exceeds the %d bytes after the length",
			path, ErrCorrupt, ErrTruncated, n, len(m)-8)
	}
	entries, meta, err := decodeHeader(m[8 : 8+n])
	if e, ok := err.(*entryError); ok {
		return nil, fmt.Errorf("%s: tensor %q: %w: header: %v", path, e.name, ErrCorrupt, e.err)
	} else if err != nil {
		return nil, corrupt("header: %v", err)
	}
	data := m[8+n:]
	f := &parsedFile{path: path, tensors: make(map[string]*Tensor, len(entries)), metadata: meta}
	type span struct {
		name       string
		begin, end int64
	}
	spans := make([]span, 0, len(entries))
	for _, e := range entries {
		name, h := e.name, e.h
		bad := func(sentinel error, format string, args ...any) error {
			return fmt.Errorf("%s: tensor %q: %w: %s", path, name, sentinel, fmt.Sprintf(format, args...))
		}
		bits := h.DType.Bits()
		if bits == 0 {
			return nil, bad(ErrDType, "unknown dtype %q", h.DType)
		}
		if h.Shape == nil {
			return nil, bad(ErrCorrupt, "no shape")
		}
		if len(h.DataOffsets) != 2 {
			return nil, bad(ErrCorrupt, "data_offsets %v is not [begin, end]", h.DataOffsets)
		}
		begin, end := h.DataOffsets[0], h.DataOffsets[1]
		if begin < 0 || end < begin {
			return nil, bad(ErrCorrupt, "data_offsets [%d, %d] out of order", begin, end)
		}
		// Bound the element count so that the bit count cannot overflow.
		numel, shape := int64(1), make([]int, len(h.Shape))
		for i, d := range h.Shape {
			if d < 0 || d > 0 && numel > (1<<56)/d {
				return nil, bad(ErrCorrupt, "shape %v is negative or too large", h.Shape)
			}
			numel *= d
			shape[i] = int(d)
		}
		if numel*int64(bits)%8 != 0 {
			return nil, bad(ErrShape, "%d %s elements do not fill whole bytes", numel, h.DType)
		}
		if want := numel * int64(bits) / 8; end-begin != want {
			return nil, bad(ErrShape, "shape %v of %s needs %d bytes, data_offsets [%d, %d] hold %d",
				h.Shape, h.DType, want, begin, end, end-begin)
		}
		if end > int64(len(data)) {
			return nil, bad(ErrTruncated, "data ends at byte %d of the data region, which has %d (file %d bytes)",
				end, len(data), len(m))
		}
		f.tensors[name] = &Tensor{
			Name: name, File: path, DType: h.DType, Shape: shape,
			Data: data[begin:end:end],
		}
		if end > begin { // an empty tensor overlaps nothing
			spans = append(spans, span{name, begin, end})
		}
	}
	slices.SortFunc(spans, func(a, b span) int {
		return cmp.Or(cmp.Compare(a.begin, b.begin), cmp.Compare(a.end, b.end), strings.Compare(a.name, b.name))
	})
	for i := 1; i < len(spans); i++ {
		if p, s := spans[i-1], spans[i]; s.begin < p.end {
			return nil, fmt.Errorf("%s: tensor %q: %w: data_offsets [%d, %d] overlap tensor %q [%d, %d]",
				path, s.name, ErrCorrupt, s.begin, s.end, p.name, p.begin, p.end)
		}
	}
	return f, nil
}
