package tokenizer

import (
	"encoding/json"
	"fmt"
	"hash/maphash"
	"sync"
	"unicode/utf8"
)

// bpeModel is HF's BPE model: a vocabulary, ranked merges, and what to do
// with characters the vocabulary lacks (byte fallback, then unk). It is
// read-only after load except for its word cache, which locks itself, so
// one model serves any number of goroutines.
type bpeModel struct {
	vocab   map[string]int32
	idToTok []string // by id; "" where hasID is false
	hasID   []bool
	merges  map[uint64]mergeRule // key: left id << 32 | right id

	unkToken     string // "" when the model has none
	fuseUnk      bool
	byteFallback bool
	ignoreMerges bool
	prefix       string // continuing_subword_prefix
	suffix       string // end_of_word_suffix

	fallback [256]int32 // id of "<0xNN>" for each byte, -1 if absent
	byteIDs  [256]int32 // id of the byte-level character of each byte, -1 if absent
	// rawVocab holds byte-level tokens keyed by the bytes they stand for, so
	// a byte-level word can be looked up without mapping it first.
	rawVocab map[string]int32

	// cutBefore holds the characters that are tokens of their own and
	// start the right side of no merge: no merge crosses a word boundary
	// before them.
	cutBefore map[rune]bool

	mappedCache wordCache // byte-level words, keyed by their raw bytes
	textCache   wordCache // other words
}

type mergeRule struct{ rank, id int32 }

// maxVocabID bounds the ids of a vocabulary.
const maxVocabID = 1 << 24

// maxCachedWord is HF's limit: longer words are not cached.
const maxCachedWord = 256

func parseBPE(raw json.RawMessage) (*bpeModel, error) {
	var t typed
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, fmt.Errorf("model: %w: %w", err, ErrCorrupt)
	}
	if t.Type != "" && t.Type != "BPE" {
		return nil, fmt.Errorf("model type %q: %w", t.Type, ErrUnsupported)
	}
	var mj modelJSON
	if err := json.Unmarshal(raw, &mj); err != nil {
		return nil, fmt.Errorf("model: %w: %w", err, ErrCorrupt)
	}
	if mj.Type == "" && mj.Vocab == nil {
		return nil, fmt.Errorf("model has no type: %w", ErrUnsupported)
	}
	if mj.Dropout != nil && *mj.Dropout != 0 {
		return nil, fmt.Errorf("model: BPE dropout %v is random at encode time: %w", *mj.Dropout, ErrUnsupported)
	}
	if mj.Vocab == nil {
		return nil, fmt.Errorf("model: BPE without vocab: %w", ErrCorrupt)
	}
	m := &bpeModel{
		vocab:        make(map[string]int32, len(mj.Vocab)),
		fuseUnk:      mj.FuseUnk,
		byteFallback: mj.ByteFallback,
		ignoreMerges: mj.IgnoreMerges,
		merges:       make(map[uint64]mergeRule, len(mj.Merges)),
	}
	if mj.UnkToken != nil {
		m.unkToken = *mj.UnkToken
	}
	if mj.ContinuingSubwordPrefix != nil {
		m.prefix = *mj.ContinuingSubwordPrefix
	}
	if mj.EndOfWordSuffix != nil {
		m.suffix = *mj.EndOfWordSuffix
	}
	maxID := -1
	for tok, id := range mj.Vocab {
		// Ids index a table; real vocabularies stay far below this.
		if id < 0 || id >= maxVocabID {
			return nil, fmt.Errorf("model: token %q has id %d, outside [0, %d): %w", tok, id, maxVocabID, ErrCorrupt)
		}
		m.vocab[tok] = int32(id)
		maxID = max(maxID, id)
	}
	m.idToTok = make([]string, maxID+1)
	m.hasID = make([]bool, maxID+1)
	for tok, id := range m.vocab {
		m.idToTok[id] = tok
		m.hasID[id] = true
	}
	for b := range 256 {
		m.fallback[b] = -1
		if id, ok := m.vocab[fmt.Sprintf("<0x%02X>", b)]; ok {
			m.fallback[b] = id
		}
		m.byteIDs[b] = -1
		if id, ok := m.vocab[string(byteToRune[b])]; ok {
			m.byteIDs[b] = id
		}
	}
	m.rawVocab = make(map[string]int32)
	for tok, id := range m.vocab {
		if raw, ok := byteLevelRaw(tok); ok {
			m.rawVocab[raw] = id
		}
	}
	rightStarts := map[rune]bool{}
	for rank, r := range mj.Merges {
		a, b, err := parseMerge(r)
		if err != nil {
			return nil, fmt.Errorf("model: merge %d: %w: %w", rank, err, ErrCorrupt)
		}
		aID, okA := m.vocab[a]
		bID, okB := m.vocab[b]
		if !okA || !okB {
			return nil, fmt.Errorf("model: merge %d (%q %q) uses a token not in the vocab: %w", rank, a, b, ErrCorrupt)
		}
		// HF cuts len(prefix) bytes off the right token whatever they are.
		merged := a + b
		if len(b) >= len(m.prefix) {
			merged = a + b[len(m.prefix):]
		}
		newID, ok := m.vocab[merged]
		if !ok {
			return nil, fmt.Errorf("model: merge %d (%q %q) makes %q, which is not in the vocab: %w", rank, a, b, merged, ErrCorrupt)
		}
		// Later duplicates win, as in HF's map built from the list.
		m.merges[pairKey(aID, bID)] = mergeRule{rank: int32(rank), id: newID}
		r, _ := utf8.DecodeRuneInString(b)
		rightStarts[r] = true
	}
	m.cutBefore = map[rune]bool{}
	for tok := range m.vocab {
		if r, n := utf8.DecodeRuneInString(tok); n == len(tok) && n > 0 && !rightStarts[r] {
			m.cutBefore[r] = true
		}
	}
	return m, nil
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// token returns the string of a model id.
func (m *bpeModel) token(id int) (string, bool) {
	if id < 0 || id >= len(m.idToTok) || !m.hasID[id] {
		return "", false
	}
	return m.idToTok[id], true
}

// tokenize appends the ids of one pre-tokenized word. A mapped word holds
// raw bytes that stand for their byte-level characters. wd is scratch
// space, reused across calls by one goroutine.
func (m *bpeModel) tokenize(dst []int32, w string, mapped bool, wd *word) ([]int32, error) {
	if w == "" {
		return dst, nil
	}
	if m.ignoreMerges {
		var id int32
		var ok bool
		if mapped {
			id, ok = m.rawVocab[w]
		} else {
			id, ok = m.vocab[w]
		}
		if ok {
			return append(dst, id), nil
		}
	}
	if len(w) < segmentMin || m.prefix != "" || m.suffix != "" {
		return m.merge(dst, w, mapped, wd)
	}
	// A long word (the whole text, without a pre-tokenizer) is cut before
	// each character that no merge can join to what precedes it: before
	// "▁" in a SentencePiece vocabulary. The pieces merge independently,
	// so this gives the same ids, with small heaps and cacheable pieces.
	start := 0
	var err error
	for i := 0; i < len(w); {
		var r rune
		n := 1
		if mapped {
			r = byteToRune[w[i]]
		} else if r = rune(w[i]); r >= utf8.RuneSelf {
			r, n = utf8.DecodeRuneInString(w[i:])
		}
		if i > start && m.cutBefore[r] {
			if dst, err = m.merge(dst, w[start:i], mapped, wd); err != nil {
				return dst, err
			}
			start = i
		}
		i += n
	}
	return m.merge(dst, w[start:], mapped, wd)
}

// segmentMin is the word length from which tokenize cuts words.
const segmentMin = 64

// merge runs BPE on w, through the cache.
func (m *bpeModel) merge(dst []int32, w string, mapped bool, wd *word) ([]int32, error) {
	cache := &m.textCache
	if mapped {
		cache = &m.mappedCache
	}
	cacheable := len(w) < maxCachedWord
	if cacheable {
		if ids, ok := cache.get(w); ok {
			return append(dst, ids...), nil
		}
	}
	var err error
	switch {
	case mapped && m.prefix == "" && m.suffix == "":
		err = m.initMapped(wd, w)
	case mapped:
		// Rare: affixes must be added to characters, so map the word first.
		// The cache is keyed by raw bytes; skip it.
		cacheable = false
		err = m.initText(wd, byteLevelEncode(w))
	default:
		err = m.initText(wd, w)
	}
	if err != nil {
		return dst, err
	}
	wd.mergeAll(m.merges)
	start := len(dst)
	dst = wd.appendIDs(dst)
	if cacheable {
		cache.put(w, append([]int32(nil), dst[start:]...))
	}
	return dst, nil
}

// initMapped builds the symbols of a byte-level word from its raw bytes.
func (m *bpeModel) initMapped(wd *word, w string) error {
	wd.reset(len(w))
	var u unkState
	for i := 0; i < len(w); i++ {
		if id := m.byteIDs[w[i]]; id >= 0 {
			if err := u.flush(wd); err != nil {
				return err
			}
			wd.add(id)
			continue
		}
		if err := m.missing(wd, &u, string(byteToRune[w[i]])); err != nil {
			return err
		}
	}
	return u.flush(wd)
}

// initText builds the symbols of a word from its characters, following HF's
// merge_word: prefix and suffix, byte fallback, then (fused) unk.
func (m *bpeModel) initText(wd *word, w string) error {
	wd.reset(utf8.RuneCountInString(w))
	var u unkState
	for i := 0; i < len(w); {
		_, n := utf8.DecodeRuneInString(w[i:])
		s := w[i : i+n]
		if i > 0 && m.prefix != "" {
			s = m.prefix + s
		}
		if i+n == len(w) && m.suffix != "" {
			s += m.suffix
		}
		i += n
		if id, ok := m.vocab[s]; ok {
			if err := u.flush(wd); err != nil {
				return err
			}
			wd.add(id)
			continue
		}
		if err := m.missing(wd, &u, s); err != nil {
			return err
		}
	}
	return u.flush(wd)
}

// unkState is a pending unk symbol, held so that consecutive unknown
// characters fuse into one when fuse_unk is set.
type unkState struct {
	pending bool
	id      int32
	err     error
}

func (u *unkState) flush(wd *word) error {
	if u.err != nil {
		return u.err
	}
	if u.pending {
		wd.add(u.id)
		u.pending = false
	}
	return nil
}

// missing handles a character (with prefix/suffix) that is not in the
// vocabulary.
func (m *bpeModel) missing(wd *word, u *unkState, s string) error {
	if m.byteFallback {
		ok := true
		for i := 0; i < len(s); i++ {
			if m.fallback[s[i]] < 0 {
				ok = false
				break
			}
		}
		if ok {
			// As in HF, a pending unk is not flushed first.
			for i := 0; i < len(s); i++ {
				wd.add(m.fallback[s[i]])
			}
			return nil
		}
	}
	if m.unkToken == "" {
		return nil // HF drops the character
	}
	id, ok := m.vocab[m.unkToken]
	if !ok {
		return fmt.Errorf("unk token %q is not in the vocab: %w", m.unkToken, ErrCorrupt)
	}
	if u.pending && m.fuseUnk {
		return nil
	}
	if u.pending {
		wd.add(u.id)
	}
	u.pending, u.id = true, id
	return nil
}

// word is a sequence of symbols being merged, linked so that a merge is
// O(1) and the merge loop is O(n log n) over a heap of candidate pairs.
type word struct {
	sym  []symbol
	heap []mergeItem
}

type symbol struct {
	id         int32
	prev, next int32 // -1 at the ends
	gone       bool  // merged into its left neighbour
}

// mergeItem is a candidate merge of the symbol at pos with its right
// neighbour; the heap pops the lowest rank, then the leftmost position.
type mergeItem struct{ rank, pos, id int32 }

func (a mergeItem) less(b mergeItem) bool {
	return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos)
}

func (wd *word) reset(n int) {
	if cap(wd.sym) < n {
		wd.sym = make([]symbol, 0, n)
	}
	wd.sym = wd.sym[:0]
	wd.heap = wd.heap[:0]
}

func (wd *word) add(id int32) {
	n := int32(len(wd.sym))
	if n > 0 {
		wd.sym[n-1].next = n
	}
	wd.sym = append(wd.sym, symbol{id: id, prev: n - 1, next: -1})
}

func (wd *word) push(it mergeItem) {
	h := append(wd.heap, it)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].less(h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	wd.heap = h
}

func (wd *word) pop() mergeItem {
	h := wd.heap
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	i := 0
	for {
		l := 2*i + 1
		if l >= len(h) {
			break
		}
		c := l
		if r := l + 1; r < len(h) && h[r].less(h[l]) {
			c = r
		}
		if !h[c].less(h[i]) {
			break
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
	wd.heap = h
	return top
}

// mergeAll applies merges lowest rank first, leftmost first among equal
// ranks, exactly as HF's Word::merge_all without dropout.
func (wd *word) mergeAll(merges map[uint64]mergeRule) {
	if len(wd.sym) < 2 || len(merges) == 0 {
		return
	}
	for i := 0; i+1 < len(wd.sym); i++ {
		if r, ok := merges[pairKey(wd.sym[i].id, wd.sym[i+1].id)]; ok {
			wd.push(mergeItem{rank: r.rank, pos: int32(i), id: r.id})
		}
	}
	for len(wd.heap) > 0 {
		top := wd.pop()
		s := &wd.sym[top.pos]
		if s.gone || s.next < 0 {
			continue
		}
		ri := s.next
		right := wd.sym[ri]
		// Skip entries made stale by an earlier merge.
		if r, ok := merges[pairKey(s.id, right.id)]; !ok || r.id != top.id {
			continue
		}
		s.id = top.id
		s.next = right.next
		wd.sym[ri].gone = true
		if right.next >= 0 {
			wd.sym[right.next].prev = top.pos
		}
		if s.prev >= 0 {
			p := wd.sym[s.prev]
			if r, ok := merges[pairKey(p.id, s.id)]; ok {
				wd.push(mergeItem{rank: r.rank, pos: s.prev, id: r.id})
			}
		}
		if s.next >= 0 {
			n := wd.sym[s.next]
			if r, ok := merges[pairKey(s.id, n.id)]; ok {
				wd.push(mergeItem{rank: r.rank, pos: top.pos, id: r.id})
			}
		}
	}
}

func (wd *word) appendIDs(dst []int32) []int32 {
	for i := range wd.sym {
		if !wd.sym[i].gone {
			dst = append(dst, wd.sym[i].id)
		}
	}
	return dst
}

// wordCache maps words to their ids. It is bounded: a full shard evicts an
// arbitrary entry. Values are never modified after insertion.
type wordCache struct {
	once   sync.Once
	seed   maphash.Seed
	shards [cacheShards]cacheShard
}

const (
	cacheShards   = 16
	cacheShardCap = 1024
)

type cacheShard struct {
	mu sync.RWMutex
	m  map[string][]int32
}

func (c *wordCache) shard(k string) *cacheShard {
	c.once.Do(func() { c.seed = maphash.MakeSeed() })
	return &c.shards[maphash.String(c.seed, k)%cacheShards]
}

func (c *wordCache) get(k string) ([]int32, bool) {
	s := c.shard(k)
	s.mu.RLock()
	v, ok := s.m[k]
	s.mu.RUnlock()
	return v, ok
}

func (c *wordCache) put(k string, v []int32) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string][]int32)
	}
	if len(s.m) >= cacheShardCap {
		for old := range s.m {
			delete(s.m, old)
			break
		}
	}
	s.m[k] = v
}
