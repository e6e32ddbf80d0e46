package capture

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// A hash list is the state of the synthetic and window patterns: one entry
// per record seen by the last cycle, sorted by order key (see
// pgsource.OrdKey), each with the record's key values and content hash. It
// lives in a file, streamed in and out, so memory does not grow with the
// table.
//
// Format: the magic line, then entries
//
//	uvarint len(ord) | ord | uvarint len(key) | key (event.PackRow of the key values) | hash (event.HashSize bytes)
//
// then a 0x00 byte (an empty ord cannot occur) and uvarint(number of
// entries). A file without that trailer is truncated, and refused.
const listMagic = "oneway hash list v1\n"

// entry is one record of a hash list.
type entry struct {
	ord  []byte
	key  []byte
	hash []byte
}

// listWriter writes a hash list. Entries must come in strictly increasing
// order.
type listWriter struct {
	f    *os.File
	w    *bufio.Writer
	last []byte
	n    uint64
	buf  []byte
}

func createList(path string) (*listWriter, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create hash list: %w", err)
	}
	w := bufio.NewWriterSize(f, 256<<10)
	if _, err := w.WriteString(listMagic); err != nil {
		f.Close()
		return nil, fmt.Errorf("write hash list %s: %w", path, err)
	}
	return &listWriter{f: f, w: w}, nil
}

// Add appends an entry; ord must be greater than the previous one's.
func (lw *listWriter) Add(ord, key, hash []byte) error {
	if len(ord) == 0 {
		return errs.Permanentf("hash list: empty order key")
	}
	if lw.n > 0 && bytes.Compare(ord, lw.last) <= 0 {
		return errs.Permanentf("hash list: keys out of order or repeated (order key %x after %x): the source returned two rows for one key, or its order differs from the reader's", ord, lw.last)
	}
	if len(hash) != event.HashSize {
		return errs.Permanentf("hash list: hash of %d bytes", len(hash))
	}
	b := lw.buf[:0]
	b = binary.AppendUvarint(b, uint64(len(ord)))
	b = append(b, ord...)
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	b = append(b, hash...)
	lw.buf = b
	if _, err := lw.w.Write(b); err != nil {
		return fmt.Errorf("write hash list %s: %w", lw.f.Name(), err)
	}
	lw.last = append(lw.last[:0], ord...)
	lw.n++
	return nil
}

// Len is the number of entries added.
func (lw *listWriter) Len() uint64 { return lw.n }

// Close writes the trailer and closes the file.
func (lw *listWriter) Close() error {
	b := binary.AppendUvarint([]byte{0}, lw.n)
	_, err := lw.w.Write(b)
	if err == nil {
		err = lw.w.Flush()
	}
	if cerr := lw.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write hash list %s: %w", lw.f.Name(), err)
	}
	return nil
}

// Abort closes the file without a trailer.
func (lw *listWriter) Abort() { lw.f.Close() }

// listReader reads a hash list in order.
type listReader struct {
	f    io.Closer
	r    *bufio.Reader
	name string
	n    uint64
	last []byte
	done bool
}

func openList(path string) (*listReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open hash list: %w", err)
	}
	return readList(f, path)
}

func readList(rc io.ReadCloser, name string) (*listReader, error) {
	r := bufio.NewReaderSize(rc, 256<<10)
	magic := make([]byte, len(listMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != listMagic {
		rc.Close()
		return nil, errs.Permanentf("hash list %s: not a hash list (bad header)", name)
	}
	return &listReader{f: rc, r: r, name: name}, nil
}

// Next returns the next entry, or ok false at the end. The entry's slices
// are its own.
func (lr *listReader) Next() (e entry, ok bool, err error) {
	if lr.done {
		return entry{}, false, nil
	}
	corrupt := func(what string) error {
		return errs.Permanentf("hash list %s is corrupt after %d entries: %s", lr.name, lr.n, what)
	}
	n, err := binary.ReadUvarint(lr.r)
	if err != nil {
		return entry{}, false, corrupt("truncated (no trailer)")
	}
	if n == 0 {
		count, err := binary.ReadUvarint(lr.r)
		if err != nil || count != lr.n {
			return entry{}, false, corrupt(fmt.Sprintf("trailer counts %d entries", count))
		}
		lr.done = true
		return entry{}, false, nil
	}
	if n > 1<<20 {
		return entry{}, false, corrupt("order key too long")
	}
	e.ord = make([]byte, n)
	if _, err := io.ReadFull(lr.r, e.ord); err != nil {
		return entry{}, false, corrupt("truncated")
	}
	n, err = binary.ReadUvarint(lr.r)
	if err != nil || n > 1<<20 {
		return entry{}, false, corrupt("bad key length")
	}
	kh := make([]byte, n+event.HashSize)
	if _, err := io.ReadFull(lr.r, kh); err != nil {
		return entry{}, false, corrupt("truncated")
	}
	e.key, e.hash = kh[:n:n], kh[n:]
	if lr.n > 0 && bytes.Compare(e.ord, lr.last) <= 0 {
		return entry{}, false, corrupt("entries out of order")
	}
	lr.last = append(lr.last[:0], e.ord...)
	lr.n++
	return e, true, nil
}

// Close closes the underlying file.
func (lr *listReader) Close() error { return lr.f.Close() }

// errNoList means there is no hash list to compare with.
var errNoList = errors.New("no hash list")
