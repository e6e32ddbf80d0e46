package capture

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// What an interrupted cycle published.
//
// A cycle attempt that is interrupted (crash, failover, read error) may
// have published inserts (upserts, in a first cycle) of keys that the
// stored list does not hold. A key deleted before the next attempt reads
// the table would then be in neither the list nor the read, and its
// delete would never be sent. So the next attempt also merges with what
// the earlier attempts of the cycle published: every key of such an
// insert that the read does not return is gone (a delete; for the window
// pattern, looked up like any key that left the list).
//
// The earlier attempts of this process recorded their batches as they
// emitted them. Those of an earlier process are read back from the stream
// (Published): the batches on the subject tagged with the lineage and
// cycle, which are the subject's last messages (a cycle's batches follow
// the position save that starts it). A batch's order keys are known only
// at its ends (the Positions of its first and last change carry the
// cycle's tag, see cycleTag), so a published key is matched against the
// rows read within its batch's range: memory holds at most the batches
// whose range contains the current row, never the table. Batches are
// kept in runs (files), each a sequence of batches in increasing,
// non-overlapping ranges (one per attempt, roughly), merged as the read
// goes.
//
// Published keys are inserts only: an update or a delete is of a key of
// the stored list, which the merge already walks. A key the read does
// return is sent again like every key up to the dirty bound (published
// keys all lie below it), and enters the new list; one it does not return
// is reported once the read passed its batch's range, with the range's end
// as its order key, so the order keys of what a cycle emits never
// decrease and a batch's tags still bound what was published (the dirty
// bound of the next restart).
//
// Why read back rather than store the partial list as the cycle goes: the
// stream already holds exactly what was published, durably, before any
// position names it, and reading it costs nothing until a restart, where
// storing the list would cost an object store write before every batch.
// The price: a message of the cycle that left the stream before the
// restart (aged out under nats.max_age, or the stream lost) cannot be read
// back, and its inserted keys, if deleted meanwhile, stay at the targets.

// Published reads back what the reader published on the pipeline's source
// subject. The cycle capture calls it from one goroutine, only before it
// publishes anything of its own.
type Published interface {
	// LastSeq returns the stream sequence of the subject's last message, 0
	// when the subject holds none.
	LastSeq(ctx context.Context) (uint64, error)
	// At returns the subject's first message at or after stream sequence
	// seq, decoded, with its sequence; ok is false when there is none. A
	// message that does not decode is returned as a nil batch.
	At(ctx context.Context, seq uint64) (b *onewayv1.Batch, msgSeq uint64, ok bool, err error)
}

// pubBatch is one published batch of a cycle: the order keys of its first
// and last change, and the packed key values of its inserts and upserts
// (every one with an order key within [lo, hi]).
type pubBatch struct {
	lo, hi []byte
	keys   [][]byte
	// read marks the keys a row of the read matched.
	read []bool
	idx  map[string]int
}

// pubKeys returns the packed key values (in key order, as Layout.packKey)
// of the inserts and upserts among changes, whose rows hold the key
// columns at keyIdx (in key order).
func pubKeys(keyIdx []int, changes []*onewayv1.Change) ([][]byte, error) {
	var keys [][]byte
	var k changeKeys
	for _, ch := range changes {
		if op := ch.GetOp(); op != onewayv1.Op_OP_INSERT && op != onewayv1.Op_OP_UPSERT {
			continue
		}
		packed, err := k.of(keyIdx, ch)
		if err != nil {
			return nil, errs.Permanent(fmt.Errorf("published change: %w", err))
		}
		keys = append(keys, packed)
	}
	return keys, nil
}

// changeKeys takes the key values out of changes' rows, reusing its
// buffers from one change to the next.
type changeKeys struct {
	vals, key [][]byte
}

// of returns the packed key values (in key order, as Layout.packKey) of
// ch, whose row holds the key columns at keyIdx (in key order). k.key then
// holds the values (nil for a NULL) until the next call.
func (k *changeKeys) of(keyIdx []int, ch *onewayv1.Change) ([]byte, error) {
	var err error
	if k.vals, err = event.Row(ch.GetRow(), k.vals[:0]); err != nil {
		return nil, err
	}
	k.key = k.key[:0]
	for _, j := range keyIdx {
		if j >= len(k.vals) {
			return nil, fmt.Errorf("change has %d values, its key column is at %d", len(k.vals), j)
		}
		k.key = append(k.key, k.vals[j])
	}
	return event.PackRow(k.key), nil
}

// batchKeyIdx returns where a published batch holds the layout's key
// columns, in key order (the batch's columns may differ from the
// layout's: source.columns changed since).
func batchKeyIdx(layout *Layout, b *onewayv1.Batch) ([]int, error) {
	idx := make([]int, len(layout.KeyIdx))
	for i, j := range layout.KeyIdx {
		name := layout.Columns[j].GetName()
		idx[i] = slices.IndexFunc(b.GetColumns(), func(c *onewayv1.Column) bool { return c.GetName() == name })
		if idx[i] < 0 {
			return nil, errs.Permanentf("a published batch of the current cycle lacks key column %q", name)
		}
	}
	return idx, nil
}

// runWriter writes a run: batches in increasing, non-overlapping ranges.
//
// Format: per batch, uvarint-prefixed lo and hi, uvarint(number of keys),
// then each key uvarint-prefixed. The file is local and temporary: written
// whole before it is read, it has no trailer.
type runWriter struct {
	f   *os.File
	w   *bufio.Writer
	hi  []byte
	n   int
	buf []byte
}

func createRun(path string) (*runWriter, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create published run: %w", err)
	}
	return &runWriter{f: f, w: bufio.NewWriterSize(f, 64<<10)}, nil
}

// fits reports whether a batch starting at lo can follow the run's last.
func (rw *runWriter) fits(lo []byte) bool {
	return rw.n == 0 || bytes.Compare(lo, rw.hi) >= 0
}

// Add appends a batch; its lo must be at or after the last batch's hi
// (fits) and hi at or after lo.
func (rw *runWriter) Add(lo, hi []byte, keys [][]byte) error {
	if !rw.fits(lo) || bytes.Compare(hi, lo) < 0 {
		return errs.Permanentf("published run: batch [%x, %x] out of order after %x", lo, hi, rw.hi)
	}
	b := rw.buf[:0]
	b = binary.AppendUvarint(b, uint64(len(lo)))
	b = append(b, lo...)
	b = binary.AppendUvarint(b, uint64(len(hi)))
	b = append(b, hi...)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
	}
	rw.buf = b
	if _, err := rw.w.Write(b); err != nil {
		return fmt.Errorf("write published run %s: %w", rw.f.Name(), err)
	}
	rw.hi = append(rw.hi[:0], hi...)
	rw.n++
	return nil
}

// Close flushes and closes the file.
func (rw *runWriter) Close() error {
	err := rw.w.Flush()
	if cerr := rw.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write published run %s: %w", rw.f.Name(), err)
	}
	return nil
}

// runReader reads a run back, one batch at a time.
type runReader struct {
	f *os.File
	r *bufio.Reader
}

func openRun(path string) (*runReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open published run: %w", err)
	}
	return &runReader{f: f, r: bufio.NewReaderSize(f, 64<<10)}, nil
}

// next returns the next batch, nil at the end.
func (rr *runReader) next() (*pubBatch, error) {
	bad := func(err error) error {
		return errs.Permanentf("published run %s is corrupt: %v", rr.f.Name(), err)
	}
	field := func() ([]byte, error) {
		n, err := binary.ReadUvarint(rr.r)
		if err != nil {
			return nil, err
		}
		if n > 1<<20 {
			return nil, fmt.Errorf("field of %d bytes", n)
		}
		b := make([]byte, n)
		_, err = io.ReadFull(rr.r, b)
		return b, err
	}
	lo, err := field()
	if err == io.EOF {
		return nil, nil
	}
	if err != nil {
		return nil, bad(err)
	}
	b := &pubBatch{lo: lo}
	if b.hi, err = field(); err != nil {
		return nil, bad(err)
	}
	n, err := binary.ReadUvarint(rr.r)
	if err != nil {
		return nil, bad(err)
	}
	b.keys = make([][]byte, 0, min(n, 1<<16))
	for range n {
		k, err := field()
		if err != nil {
			return nil, bad(err)
		}
		b.keys = append(b.keys, k)
	}
	return b, nil
}

func (rr *runReader) Close() error { return rr.f.Close() }

// pubRun is one run during the merge: the batches loaded (their range
// reaches the current row), oldest first, and the next one in the file.
type pubRun struct {
	r      *runReader
	loaded []*pubBatch
	head   *pubBatch
}

// pubSet is what earlier attempts of the cycle published, merged with the
// read (see merge). A nil *pubSet is an empty one.
type pubSet struct {
	runs []*pubRun
}

// openPubSet opens the runs at paths; nil when there are none.
func openPubSet(paths []string) (*pubSet, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	s := &pubSet{}
	for _, p := range paths {
		r, err := openRun(p)
		if err != nil {
			s.Close()
			return nil, err
		}
		run := &pubRun{r: r}
		s.runs = append(s.runs, run)
		if run.head, err = r.next(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Close closes the run files.
func (s *pubSet) Close() {
	if s == nil {
		return
	}
	for _, r := range s.runs {
		r.r.Close()
	}
}

// front is the run's oldest batch: loaded, else the next in the file.
func (r *pubRun) front() *pubBatch {
	if len(r.loaded) > 0 {
		return r.loaded[0]
	}
	return r.head
}

// pop drops the run's front batch.
func (r *pubRun) pop() error {
	if len(r.loaded) > 0 {
		r.loaded = r.loaded[1:]
		return nil
	}
	var err error
	r.head, err = r.r.next()
	return err
}

// nextDone returns the run whose front batch ends first below o (nil o:
// anywhere), and that end; nil when none does.
func (s *pubSet) nextDone(o []byte) (*pubRun, []byte) {
	if s == nil {
		return nil, nil
	}
	var best *pubRun
	var hi []byte
	for _, r := range s.runs {
		b := r.front()
		if b == nil || (o != nil && bytes.Compare(b.hi, o) >= 0) {
			continue
		}
		if best == nil || bytes.Compare(b.hi, hi) < 0 {
			best, hi = r, b.hi
		}
	}
	return best, hi
}

// finish drops run's front batch, calling fn with each of its keys that no
// row matched, in batch order.
func (s *pubSet) finish(r *pubRun, fn func(key []byte) error) error {
	b := r.front()
	for i, k := range b.keys {
		if b.read == nil || !b.read[i] {
			if err := fn(k); err != nil {
				return err
			}
		}
	}
	return r.pop()
}

// seen marks the row with order key ord and packed key values key as read.
// Every batch ending below ord must have been finished (nextDone(ord)
// returns nothing).
func (s *pubSet) seen(ord, key []byte) error {
	if s == nil {
		return nil
	}
	for _, r := range s.runs {
		// Load the batches whose range starts at or before the row.
		for r.head != nil && bytes.Compare(r.head.lo, ord) <= 0 {
			b := r.head
			b.read = make([]bool, len(b.keys))
			b.idx = make(map[string]int, len(b.keys))
			for i, k := range b.keys {
				b.idx[string(k)] = i
			}
			r.loaded = append(r.loaded, b)
			var err error
			if r.head, err = r.r.next(); err != nil {
				return err
			}
		}
		for _, b := range r.loaded {
			if i, ok := b.idx[string(key)]; ok {
				b.read[i] = true
			}
		}
	}
	return nil
}

// runs records the batches of a cycle's attempts as run files in dir.
type runs struct {
	dir   string
	paths []string
	cur   *runWriter
	// hi is the largest order key recorded.
	hi []byte
	// n counts the keys recorded.
	n int
}

// add records a batch, starting a new run when it does not follow the
// current one's last batch. A batch without keys is not recorded.
func (rs *runs) add(lo, hi []byte, keys [][]byte) error {
	rs.hi = maxOrd(rs.hi, hi)
	if len(keys) == 0 {
		return nil
	}
	if rs.cur != nil && !rs.cur.fits(lo) {
		if err := rs.end(); err != nil {
			return err
		}
	}
	if rs.cur == nil {
		p := filepath.Join(rs.dir, "published-"+strconv.Itoa(len(rs.paths)))
		w, err := createRun(p)
		if err != nil {
			return err
		}
		rs.cur = w
		rs.paths = append(rs.paths, p)
	}
	rs.n += len(keys)
	return rs.cur.Add(lo, hi, keys)
}

// end closes the current run; the next batch starts a new one.
func (rs *runs) end() error {
	if rs.cur == nil {
		return nil
	}
	err := rs.cur.Close()
	rs.cur = nil
	return err
}

// reset drops every run (the cycle is complete).
func (rs *runs) reset() {
	rs.end()
	for _, p := range rs.paths {
		os.Remove(p)
	}
	rs.paths, rs.hi, rs.n = nil, nil, 0
}

// batchSpan returns the order keys of the first and last change of a batch
// of the given cycle; ok is false for a batch of another cycle or lineage,
// and for one whose first change has no tag (written by a version that did
// not tag it).
func batchSpan(b *onewayv1.Batch, lineage string, cycle uint64) (lo, hi []byte, ok bool) {
	hi = lastTag(b, lineage, cycle)
	if hi == nil {
		return nil, nil, false
	}
	ch := b.GetChanges()
	if len(ch) == 1 {
		return hi, hi, true
	}
	lo, ok = parseTag(ch[0].GetPosition(), lineage, cycle)
	if !ok || bytes.Compare(lo, hi) > 0 {
		return nil, nil, false
	}
	return lo, hi, true
}

// readPublished reads back the batches of the cycle (lineage, cycle) on the
// subject into rs: they are the subject's last messages, found by a binary
// search over stream sequences.
func (c *Cycle) readPublished(ctx context.Context, lineage string, cycle uint64, rs *runs) error {
	ofCycle := func(b *onewayv1.Batch) bool { return b != nil && lastTag(b, lineage, cycle) != nil }
	last, err := c.Published.LastSeq(ctx)
	if err != nil || last == 0 {
		return err
	}
	b, _, ok, err := c.Published.At(ctx, last)
	if err != nil || !ok || !ofCycle(b) {
		return err
	}
	// The first message of the cycle: every message on the subject from it
	// on belongs to the cycle, none before. Search the smallest sequence
	// whose next message (At) belongs to it.
	lo, hi := uint64(1), last
	for lo < hi {
		mid := lo + (hi-lo)/2
		b, seq, ok, err := c.Published.At(ctx, mid)
		if err != nil {
			return err
		}
		switch {
		case !ok || ofCycle(b):
			hi = mid
		default:
			lo = seq + 1 // no message of the cycle up to seq
		}
	}
	var msgs, untagged int
	for seq := lo; seq <= last; seq++ {
		b, at, ok, err := c.Published.At(ctx, seq)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		seq = at
		lo, hi, ok := batchSpan(b, lineage, cycle)
		if !ok {
			if b != nil && lastTag(b, lineage, cycle) != nil {
				untagged++
			}
			continue
		}
		keyIdx, err := batchKeyIdx(&c.Layout, b)
		if err != nil {
			return err
		}
		keys, err := pubKeys(keyIdx, b.GetChanges())
		if err != nil {
			return err
		}
		msgs++
		if err := rs.add(lo, hi, keys); err != nil {
			return err
		}
	}
	c.Log.Info("cycle interrupted: read back what it published", "cycle", cycle, "messages", msgs, "inserted_keys", rs.n)
	if untagged > 0 {
		c.Log.Warn("batches of the interrupted cycle published by an older reader lack their first order key: a key they inserted and that was deleted meanwhile is not deleted",
			"cycle", cycle, "messages", untagged)
	}
	return rs.end()
}
