package recordsource

import (
	"bufio"
	"bytes"
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/source"
)

// spill sorts rows by a byte key with bounded memory (an external merge
// sort): rows collect in memory up to chunkBytes, each full chunk is
// sorted and written to a run file in a temporary directory, and the
// read merges the runs. This turns a listing in no order into a read in
// key order whose memory does not grow with the listing. Merging stays
// under maxRuns open files by merging runs into larger ones first. One
// goroutine uses a spill at a time; close removes its files.
type spill struct {
	tmp        string // the directory of the spill files (under dir)
	dir        string
	chunkBytes int
	// replace keeps the last row added under a key; otherwise a key added
	// twice is a permanent error naming where both came from.
	replace bool

	mem      []entry
	memBytes int
	runs     []string
	seq      uint64
	nextRun  int
}

// entry is one row in the sort.
type entry struct {
	key   []byte
	seq   uint64 // order of addition: the last of equal keys wins
	where string
	row   []byte // packed
}

// Sort bounds.
const (
	runBuffer = 64 << 10
)

// The size of an in-memory chunk and the fan-in of a merge (variables
// for tests).
var (
	defaultChunkBytes = 16 << 20
	maxRuns           = 64
)

func newSpill(dir string, replace bool) *spill {
	return &spill{dir: dir, chunkBytes: defaultChunkBytes, replace: replace}
}

// add stores a row under key k (both are copied); where names it in
// errors.
func (s *spill) add(k []byte, row source.Row, where string) error {
	e := entry{key: bytes.Clone(k), seq: s.seq, where: where, row: event.PackRow(row)}
	s.seq++
	s.mem = append(s.mem, e)
	s.memBytes += len(e.key) + len(e.row) + len(e.where) + 64
	if s.memBytes >= s.chunkBytes {
		return s.writeRun()
	}
	return nil
}

func compareEntries(a, b entry) int {
	if c := bytes.Compare(a.key, b.key); c != 0 {
		return c
	}
	switch {
	case a.seq < b.seq:
		return -1
	case a.seq > b.seq:
		return 1
	}
	return 0
}

// writeRun sorts the rows in memory into a new run file.
func (s *spill) writeRun() error {
	if len(s.mem) == 0 {
		return nil
	}
	slices.SortFunc(s.mem, compareEntries)
	path, err := s.newRunPath()
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("spill: create a run: %w", err)
	}
	w := bufio.NewWriterSize(f, runBuffer)
	for _, e := range s.mem {
		writeEntry(w, e)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("spill: write a run: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("spill: write a run: %w", err)
	}
	s.runs = append(s.runs, path)
	clear(s.mem)
	s.mem, s.memBytes = s.mem[:0], 0
	return nil
}

func (s *spill) newRunPath() (string, error) {
	if s.tmp == "" {
		tmp, err := os.MkdirTemp(s.dir, "oneway-spill-")
		if err != nil {
			return "", fmt.Errorf("spill: create the spill directory: %w", err)
		}
		s.tmp = tmp
	}
	s.nextRun++
	return filepath.Join(s.tmp, "run-"+strconv.Itoa(s.nextRun)), nil
}

func writeEntry(w *bufio.Writer, e entry) {
	var b [binary.MaxVarintLen64]byte
	for _, p := range [][]byte{e.key, []byte(e.where), e.row} {
		w.Write(b[:binary.PutUvarint(b[:], uint64(len(p)))])
		w.Write(p)
	}
	w.Write(b[:binary.PutUvarint(b[:], e.seq)])
}

func readBytes(r *bufio.Reader) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return nil, err
	}
	return p, nil
}

func readEntry(r *bufio.Reader) (entry, error) {
	var e entry
	var err error
	if e.key, err = readBytes(r); err != nil {
		return e, err // io.EOF at the end
	}
	w, err := readBytes(r)
	if err != nil {
		return e, unexpected(err)
	}
	e.where = string(w)
	if e.row, err = readBytes(r); err != nil {
		return e, unexpected(err)
	}
	if e.seq, err = binary.ReadUvarint(r); err != nil {
		return e, unexpected(err)
	}
	return e, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// sorted returns the rows in key order. The spill must not be added to
// afterwards; the caller closes the iterator, then the spill.
func (s *spill) sorted() (*spillRows, error) {
	if len(s.runs) == 0 {
		// Everything fits in memory.
		slices.SortFunc(s.mem, compareEntries)
		mem := s.mem
		return s.newRows(func() (entry, error) {
			if len(mem) == 0 {
				return entry{}, io.EOF
			}
			e := mem[0]
			mem = mem[1:]
			return e, nil
		}, nil), nil
	}
	if err := s.writeRun(); err != nil {
		return nil, err
	}
	for len(s.runs) > maxRuns {
		// Merge the first maxRuns runs into one, keeping every entry.
		m, err := openMerge(s.runs[:maxRuns])
		if err != nil {
			return nil, err
		}
		path, err := s.newRunPath()
		if err != nil {
			m.close()
			return nil, err
		}
		err = s.mergeInto(m, path)
		m.close()
		if err != nil {
			return nil, err
		}
		for _, r := range s.runs[:maxRuns] {
			os.Remove(r)
		}
		s.runs = append(s.runs[maxRuns:], path)
	}
	m, err := openMerge(s.runs)
	if err != nil {
		return nil, err
	}
	return s.newRows(m.next, m.close), nil
}

func (s *spill) mergeInto(m *merge, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("spill: create a run: %w", err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, runBuffer)
	for {
		e, err := m.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		writeEntry(w, e)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("spill: write a run: %w", err)
	}
	return f.Close()
}

// close removes the spill's files.
func (s *spill) close() {
	s.mem = nil
	if s.tmp != "" {
		os.RemoveAll(s.tmp)
	}
}

// merge is a k-way merge of run files.
type merge struct {
	files []*os.File
	h     mergeHeap
	err   error
}

type mergeItem struct {
	e entry
	r *bufio.Reader
}

type mergeHeap []mergeItem

func (h mergeHeap) Len() int           { return len(h) }
func (h mergeHeap) Less(i, j int) bool { return compareEntries(h[i].e, h[j].e) < 0 }
func (h mergeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *mergeHeap) Push(x any)        { *h = append(*h, x.(mergeItem)) }
func (h *mergeHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func openMerge(runs []string) (*merge, error) {
	m := &merge{}
	for _, path := range runs {
		f, err := os.Open(path)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("spill: open a run: %w", err)
		}
		m.files = append(m.files, f)
		r := bufio.NewReaderSize(f, runBuffer)
		e, err := readEntry(r)
		if errors.Is(err, io.EOF) {
			continue
		}
		if err != nil {
			m.close()
			return nil, fmt.Errorf("spill: read a run: %w", err)
		}
		m.h = append(m.h, mergeItem{e: e, r: r})
	}
	heap.Init(&m.h)
	return m, nil
}

func (m *merge) next() (entry, error) {
	if m.err != nil {
		return entry{}, m.err
	}
	if len(m.h) == 0 {
		return entry{}, io.EOF
	}
	top := m.h[0]
	e, err := readEntry(top.r)
	switch {
	case errors.Is(err, io.EOF):
		heap.Pop(&m.h)
	case err != nil:
		m.err = fmt.Errorf("spill: read a run: %w", err)
		return entry{}, m.err
	default:
		m.h[0].e = e
		heap.Fix(&m.h, 0)
	}
	return top.e, nil
}

func (m *merge) close() {
	for _, f := range m.files {
		f.Close()
	}
	m.files = nil
}

// spillRows iterates over the sorted rows, one row per key: the last one
// added when the spill replaces, else a duplicate key is an error.
type spillRows struct {
	s       *spill
	next    func() (entry, error)
	closeFn func()
	peek    *entry
	err     error
}

func (s *spill) newRows(next func() (entry, error), closeFn func()) *spillRows {
	return &spillRows{s: s, next: next, closeFn: closeFn}
}

func (r *spillRows) pull() (entry, bool) {
	if r.peek != nil {
		e := *r.peek
		r.peek = nil
		return e, true
	}
	e, err := r.next()
	if err != nil {
		if !errors.Is(err, io.EOF) {
			r.err = err
		}
		return entry{}, false
	}
	return e, true
}

// nextEntry returns the next key's entry, false at the end or on an
// error (see err).
func (r *spillRows) nextEntry() (entry, bool) {
	if r.err != nil {
		return entry{}, false
	}
	e, ok := r.pull()
	if !ok {
		return entry{}, false
	}
	for {
		n, ok := r.pull()
		if !ok {
			if r.err != nil {
				return entry{}, false
			}
			return e, true
		}
		if !bytes.Equal(n.key, e.key) {
			r.peek = &n
			return e, true
		}
		if !r.s.replace {
			r.err = errs.Permanentf("%s: duplicate key: %s has the same key", n.where, e.where)
			return entry{}, false
		}
		e = n // the later one wins
	}
}

// nextRow returns the next row with its key.
func (r *spillRows) nextRow() ([]byte, source.Row, bool) {
	e, ok := r.nextEntry()
	if !ok {
		return nil, nil, false
	}
	row, err := event.Row(e.row, nil)
	if err != nil {
		r.err = err
		return nil, nil, false
	}
	return e.key, row, true
}

func (r *spillRows) close() {
	if r.closeFn != nil {
		r.closeFn()
		r.closeFn = nil
	}
}
