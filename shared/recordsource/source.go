// Package recordsource reads Systems of Record that list their records
// rather than query them: CSV and JSONL files and HTTP JSON APIs. It
// implements the reader's capture.Source (synthetic pattern for all of
// them; watermark and watermark_cdc for an API with a modified-since
// parameter) and what `oneway verify` reads of the source, through the
// same code, so both agree.
//
// Such sources list records in no order; the patterns need them in key
// order. Source sorts each listing with an external merge sort (spill.go:
// sorted runs in temporary files, merged), so that a Scan yields
// order-key order with memory that does not grow with the number of
// records.
//
// Values are declared, not read from a catalog: every column has a
// PostgreSQL type (Column.Type) and every value becomes the text
// PostgreSQL prints for that type (types.go), as the SQL sources do.
package recordsource

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/source"
)

// Lister lists every record of a source once, in no particular order.
type Lister interface {
	// List calls emit with each record's owned values (in the Source's
	// column order, already in PostgreSQL's text, decoded by the Decoder
	// it was given) and a description of where the record was found (for
	// errors: "file x.csv line 12"). It returns emit's first error. A
	// record that cannot be decoded is a permanent error naming where and
	// which field; never a silent skip. List may be called many times and
	// from one goroutine at a time.
	List(ctx context.Context, emit func(row source.Row, where string) error) error
}

// SinceLister is a Lister that can also list only the records whose
// watermark column is at or after a value (an API's modified-since
// parameter). It may list more (earlier records); never fewer.
type SinceLister interface {
	Lister
	// ListSince is List restricted to the records whose watermark is at
	// or after mark (the watermark column's PostgreSQL text).
	ListSince(ctx context.Context, mark string, emit func(row source.Row, where string) error) error
}

// Options describe a source.
type Options struct {
	// What names the source in errors and logs (no secrets).
	What string
	// Columns are the owned columns, in row order.
	Columns []Column
	// Key names the key columns, in key order.
	Key []string
	// Watermark is the watermark column (watermark patterns; needs a
	// SinceLister); "" for none.
	Watermark string
	// Replace keeps the last of two records with one key in a listing
	// (an API paginating while records change may list one twice);
	// otherwise a duplicate key is a permanent error (a file).
	Replace bool
	// TempDir holds the spill files ("" = the system's).
	TempDir string
}

// Source reads records through a Lister. It is safe for concurrent use;
// the patterns call it from one goroutine at a time.
type Source struct {
	what    string
	cols    []Column
	convs   []conv
	keyIdx  []int
	keyInt  []bool
	wmIdx   int
	replace bool
	tmp     string
	lister  Lister
	since   SinceLister
	log     *slog.Logger

	mu   sync.Mutex
	snap *pages // the snapshot's listing, between SnapshotPage calls
	wm   *pages // the current poll's listing, between WatermarkRows calls
}

// New returns a Source listing through l. Errors are permanent: the
// options do not fit.
func New(o Options, l Lister, log *slog.Logger) (*Source, error) {
	s := &Source{what: o.What, cols: o.Columns, wmIdx: -1, replace: o.Replace, tmp: o.TempDir, lister: l, log: log}
	idx := map[string]int{}
	for i, c := range o.Columns {
		cv, err := converter(c.Type)
		if err != nil {
			return nil, errs.Permanent(fmt.Errorf("source %s: column %q: %w", s.what, c.Name, err))
		}
		s.convs = append(s.convs, cv)
		idx[c.Name] = i
	}
	for _, k := range o.Key {
		i, ok := idx[k]
		if !ok {
			return nil, errs.Permanentf("source %s: key column %q is not a declared column", s.what, k)
		}
		switch s.convs[i].kind {
		case kInt, kText, kNumeric, kUUID, kDate:
		default:
			return nil, errs.Permanentf("source %s: key column %q has type %s; a key column must be an integer, text, numeric, uuid or date", s.what, k, s.cols[i].Type)
		}
		s.keyIdx = append(s.keyIdx, i)
		s.keyInt = append(s.keyInt, s.convs[i].kind == kInt)
	}
	if len(s.keyIdx) == 0 {
		return nil, errs.Permanentf("source %s: no key columns", s.what)
	}
	if o.Watermark != "" {
		i, ok := idx[o.Watermark]
		if !ok {
			return nil, errs.Permanentf("source %s: watermark column %q is not a declared column", s.what, o.Watermark)
		}
		switch s.convs[i].kind {
		case kTimestamp, kTimestampTZ, kDate:
		default:
			return nil, errs.Permanentf("source %s: watermark column %q has type %s; it must be a timestamp (or a date, for watermark_cdc)", s.what, o.Watermark, s.cols[i].Type)
		}
		sl, ok := l.(SinceLister)
		if !ok {
			return nil, errs.Permanentf("source %s: cannot list records modified since a watermark; use the synthetic pattern", s.what)
		}
		s.wmIdx, s.since = i, sl
	}
	return s, nil
}

// Close releases the spill files kept between calls.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snap.close()
	s.wm.close()
	s.snap, s.wm = nil, nil
	return nil
}

// Columns describes the owned columns with their PostgreSQL types.
func (s *Source) Columns() []*onewayv1.Column {
	out := make([]*onewayv1.Column, len(s.cols))
	for i, c := range s.cols {
		out[i] = &onewayv1.Column{Name: c.Name, Type: c.Type, Key: slices.Contains(s.keyIdx, i)}
	}
	return out
}

// KeyIndexes returns the positions of the key columns in a Row.
func (s *Source) KeyIndexes() []int { return s.keyIdx }

// HasWatermark reports whether the source has a (time) watermark column.
func (s *Source) HasWatermark() (has, numeric bool) { return s.wmIdx >= 0, false }

// KeyOf returns the key texts of a row.
func (s *Source) KeyOf(r source.Row) []string {
	return source.KeyTexts(r, s.keyIdx)
}

// Owned returns the row: these sources carry no extras.
func (s *Source) Owned(r source.Row) source.Row { return r[:len(s.cols)] }

// IsDeleted is false: a listing holds live records only.
func (s *Source) IsDeleted(source.Row) bool { return false }

// FromDeleteFeed is false: no delete feed.
func (s *Source) FromDeleteFeed(source.Row) bool { return false }

// OrdKey appends the order key of a row: integer key columns as 8 bytes
// big-endian with the sign bit flipped, others as the bytes of their text
// and a 0x00 terminator (as the SQL sources).
func (s *Source) OrdKey(dst []byte, r source.Row) ([]byte, error) {
	return s.ordOfKey(dst, s.KeyOf(r))
}

func (s *Source) ordOfKey(dst []byte, key []string) ([]byte, error) {
	for i, k := range key {
		if s.keyInt[i] {
			v, err := strconv.ParseInt(k, 10, 64)
			if err != nil {
				return nil, errs.Permanentf("source %s: key column %q value %q is not an integer", s.what, s.cols[s.keyIdx[i]].Name, k)
			}
			dst = binary.BigEndian.AppendUint64(dst, uint64(v)^(1<<63))
			continue
		}
		dst = append(dst, k...)
		dst = append(dst, 0)
	}
	return dst, nil
}

// now is the clock of bounds.
func now() time.Time { return time.Now().UTC() }

func tzText(t time.Time) string { return t.Format("2006-01-02 15:04:05.999999") + "+00" }

// SafeBound returns now minus the lookback: a listing holds every record
// written before it returns.
func (s *Source) SafeBound(_ context.Context, lookbackSeconds float64) (string, error) {
	return tzText(now().Add(-seconds(lookbackSeconds))), nil
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// Scan lists the records into a spill (an external sort) and streams
// them in order-key order. A window scan is not supported.
func (s *Source) Scan(ctx context.Context, o source.ScanOptions) (source.Scan, error) {
	if o.WindowFrom != "" {
		return nil, errs.Permanentf("source %s: the window pattern is not supported", s.what)
	}
	p, err := s.listAll(ctx)
	if err != nil {
		return nil, err
	}
	return &scan{p: p}, nil
}

// listAll sorts a full listing by order key.
func (s *Source) listAll(ctx context.Context) (*pages, error) {
	sp := newSpill(s.tmp, s.replace)
	var k []byte
	err := s.lister.List(ctx, func(row source.Row, where string) error {
		var err error
		if k, err = s.OrdKey(k[:0], row); err != nil {
			return err
		}
		return sp.add(k, row, "source "+s.what+": "+where)
	})
	if err != nil {
		sp.close()
		return nil, err
	}
	return openPages(sp)
}

func openPages(sp *spill) (*pages, error) {
	rs, err := sp.sorted()
	if err != nil {
		sp.close()
		return nil, err
	}
	return &pages{sp: sp, rs: rs}, nil
}

// scan is an open Scan over a sorted listing.
type scan struct {
	p *pages
}

func (sc *scan) Next() (source.Row, bool) {
	_, r, ok := sc.p.rs.nextRow()
	return r, ok
}
func (sc *scan) Err() error               { return sc.p.rs.err }
func (sc *scan) InWindow(source.Row) bool { return true }
func (sc *scan) Close()                   { sc.p.close() }

// pages is a sorted listing read in pages by successive calls, each
// continuing where the last one stopped (last).
type pages struct {
	sp    *spill
	rs    *spillRows
	last  []byte
	bound source.Bound
	from  time.Time
}

func (p *pages) close() {
	if p != nil {
		p.rs.close()
		p.sp.close()
	}
}

// page returns up to limit rows whose keys are after from (at or after,
// when inclusive; nil = from the start).
func (p *pages) page(from []byte, inclusive bool, limit int) ([]source.Row, error) {
	var out []source.Row
	for len(out) < limit {
		k, r, ok := p.rs.nextRow()
		if !ok {
			return out, p.rs.err
		}
		if c := bytes.Compare(k, from); from != nil && (c < 0 || c == 0 && !inclusive) {
			continue
		}
		out = append(out, r)
		p.last = k
	}
	return out, nil
}

// continues reports whether a call reading after from continues the last
// page.
func (p *pages) continues(from []byte) bool {
	return p != nil && p.last != nil && bytes.Equal(p.last, from)
}

// SnapshotPage returns up to limit rows with key greater than after, in
// key order. The first call lists and sorts every record; the next calls
// continue that read, and a call that does not continue it (after a
// restart) lists again and skips to after. The listing is dropped after
// the last page.
func (s *Source) SnapshotPage(ctx context.Context, after []string, limit int) ([]source.Row, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var from []byte
	if after != nil {
		var err error
		if from, err = s.ordOfKey(nil, after); err != nil {
			return nil, err
		}
	}
	if !s.snap.continues(from) {
		s.snap.close()
		s.snap = nil
		p, err := s.listAll(ctx)
		if err != nil {
			return nil, err
		}
		s.snap = p
	}
	rows, err := s.snap.page(from, false, limit)
	if err != nil || len(rows) < limit {
		s.snap.close()
		s.snap = nil
	}
	return rows, err
}

// markKey is the sort key of a watermark read: the mark's microseconds
// (sign bit flipped) then the order key.
func markKey(dst []byte, t time.Time) []byte {
	return binary.BigEndian.AppendUint64(dst, uint64(t.UnixMicro())^(1<<63))
}

// Bound returns now minus the lookback, exclusive: an API stamps a record
// when it writes it, so a listing that starts later sees every record
// stamped before then. The lookback covers the clock difference between
// the API and the reader, and writes that are stamped before they become
// visible.
func (s *Source) Bound(_ context.Context, lookbackSeconds float64) (source.Bound, error) {
	return source.Bound{Value: tzText(now().Add(-seconds(lookbackSeconds)))}, nil
}

// WatermarkRows returns up to limit rows after c and below bound, in
// (watermark, key) order. A call lists the records modified since c.Mark
// and sorts them that way; the next calls with the same bound continue
// that read.
func (s *Source) WatermarkRows(ctx context.Context, c source.Cursor, bound source.Bound, limit int) ([]source.Row, error) {
	if s.wmIdx < 0 {
		return nil, errs.Permanentf("source %s: no watermark column", s.what)
	}
	from, err := parseTime(c.Mark)
	if err != nil {
		return nil, errs.Permanent(fmt.Errorf("source %s: watermark: %w", s.what, err))
	}
	b, err := parseTime(bound.Value)
	if err != nil {
		return nil, errs.Permanent(fmt.Errorf("source %s: bound: %w", s.what, err))
	}
	start := markKey(nil, from)
	if c.Key != nil {
		if start, err = s.ordOfKey(start, c.Key); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.wm == nil || s.wm.bound != bound || !s.wm.continues(start) {
		s.wm.close()
		s.wm = nil
		sp := newSpill(s.tmp, true)
		var k []byte
		err = s.since.ListSince(ctx, c.Mark, func(row source.Row, where string) error {
			v := row[s.wmIdx]
			if v == nil {
				return nil // never read, as a NULL watermark in a table
			}
			t, err := parseTime(string(v))
			if err != nil {
				return errs.Permanent(fmt.Errorf("source %s: %s: watermark column %q: %w", s.what, where, s.cols[s.wmIdx].Name, err))
			}
			if t.Before(from) || t.After(b) || (t.Equal(b) && !bound.Inclusive) {
				return nil
			}
			if k, err = s.OrdKey(markKey(k[:0], t), row); err != nil {
				return err
			}
			return sp.add(k, row, "source "+s.what+": "+where)
		})
		if err != nil {
			sp.close()
			return nil, err
		}
		p, err := openPages(sp)
		if err != nil {
			return nil, err
		}
		p.bound, p.from = bound, from
		s.wm = p
	}
	rows, err := s.wm.page(start, c.Key == nil, limit)
	if err != nil || len(rows) < limit {
		s.wm.close()
		s.wm = nil
	}
	return rows, err
}

// Lower returns mark minus seconds (for a date, rounded down to its day)
// with the epochs of that value and of mark.
func (s *Source) Lower(_ context.Context, mark string, secs float64) (string, float64, float64, error) {
	t, err := parseTime(mark)
	if err != nil {
		return "", 0, 0, errs.Permanent(fmt.Errorf("source %s: watermark: %w", s.what, err))
	}
	cv := conv{kind: kTimestampTZ, scale: -1}
	if s.wmIdx >= 0 {
		cv = s.convs[s.wmIdx]
	}
	lower := string(cv.timeText(t.Add(-seconds(secs))))
	l, err := parseTime(lower)
	if err != nil {
		return "", 0, 0, errs.Permanent(fmt.Errorf("source %s: watermark: %w", s.what, err))
	}
	return lower, float64(l.UnixMicro()) / 1e6, float64(t.UnixMicro()) / 1e6, nil
}

// Epoch returns a row's watermark in seconds since 1970 (0 when it has
// none).
func (s *Source) Epoch(r source.Row) float64 {
	t, err := parseTime(s.WatermarkOf(r))
	if err != nil {
		return 0
	}
	return float64(t.UnixMicro()) / 1e6
}

// WatermarkOf returns the row's watermark text.
func (s *Source) WatermarkOf(r source.Row) string {
	if s.wmIdx < 0 {
		return ""
	}
	return string(r[s.wmIdx])
}

// CursorOf returns the cursor of a watermark row.
func (s *Source) CursorOf(r source.Row) source.Cursor {
	return source.Cursor{Mark: s.WatermarkOf(r), Key: s.KeyOf(r)}
}

// WindowStart is not supported: these sources have no window pattern.
func (s *Source) WindowStart(context.Context, float64) (string, error) {
	return "", errs.Permanentf("source %s: the window pattern is not supported", s.what)
}

// Lookup is not supported (only the window pattern looks keys up).
func (s *Source) Lookup(context.Context, [][]string) ([]source.Row, error) {
	return nil, errs.Permanentf("source %s: looking records up by key is not supported", s.what)
}
