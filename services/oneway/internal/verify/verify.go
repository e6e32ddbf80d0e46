// Package verify compares the System of Record with a target by key over
// the owned columns.
//
// Both sides are read as a Side: a stream of records in one canonical key
// order, merged like a sorted-merge join, so memory stays bounded whatever
// the table size (DESIGN §4 invariant 6). A PostgreSQL table is streamed
// by one ordered query. A target that cannot be read in that order (a
// SQLite table, whose affinities order numbers stored as text as text) or
// that is a log of changes (JSONL file, NATS stream, Kafka topic) is
// folded first to its final state per key into a temporary on-disk SQLite
// database, then read back from it in order (Fold).
//
// The canonical key order: key columns in the configured key order; a key
// column of an integer, numeric or floating-point type by value (NaN
// last, as PostgreSQL sorts it); any other key column by the bytes of its
// text, which is PostgreSQL's COLLATE "C" order. Each record carries its
// key encoded so that bytes.Compare is that order (see appendKeyPart);
// the PostgreSQL side orders its query the same way (orderBy), whatever
// the columns' collations, and Compare checks that each side keeps to it.
//
// Values are compared in canonical text form (canon): the form the source
// prints, with numbers, booleans and JSON normalised, so that the ways each
// target kind stores a value (SQLite affinities, JSON numbers and booleans,
// a numeric(12,2) column) compare equal when the values are equal.
package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Column is one owned column.
type Column struct {
	Name string
	Type string // the source's type, as format_type spells it
}

// Layout is what is compared: the owned columns, the key, and how each
// column's values are read and ordered. It is built once, from the
// source's catalog, and shared by both sides.
type Layout struct {
	Columns []Column
	// Key holds the positions in Columns of the key columns, in the
	// configured key order (the sort order).
	Key []int
	// keyCols holds the same positions in column order: the order in which
	// event.Key renders a composite key (sinks carry that rendering).
	keyCols []int
	classes []class
}

// NewLayout checks that every key column is an owned column.
func NewLayout(cols []Column, key []string) (*Layout, error) {
	l := &Layout{Columns: cols}
	idx := make(map[string]int, len(cols))
	for i, c := range cols {
		idx[c.Name] = i
		l.classes = append(l.classes, classOf(c.Type))
	}
	isKey := map[int]bool{}
	for _, k := range key {
		i, ok := idx[k]
		if !ok {
			return nil, fmt.Errorf("verify: key column %q is not an owned column", k)
		}
		if isKey[i] {
			return nil, fmt.Errorf("verify: key column %q named twice", k)
		}
		isKey[i] = true
		l.Key = append(l.Key, i)
	}
	if len(l.Key) == 0 {
		return nil, errors.New("verify: no key columns")
	}
	for i := range cols {
		if isKey[i] {
			l.keyCols = append(l.keyCols, i)
		}
	}
	return l, nil
}

// Values returns the canonical text of each value of a row (in Columns
// order; nil = NULL). vals is not modified.
func (l *Layout) Values(vals [][]byte) [][]byte {
	out := make([][]byte, len(vals))
	for i, v := range vals {
		if i < len(l.classes) {
			out[i] = canon(l.classes[i], v)
		} else {
			out[i] = v
		}
	}
	return out
}

// KeyOf returns the encoded key of a row whose values are in Columns order.
func (l *Layout) KeyOf(vals [][]byte) ([]byte, error) {
	var key []byte
	for _, i := range l.Key {
		var err error
		if key, err = appendKeyPart(key, l.classes[i], vals[i]); err != nil {
			return nil, fmt.Errorf("column %q: %w", l.Columns[i].Name, err)
		}
	}
	return key, nil
}

// NameOf renders a row's key as event.Key does: the text of a single
// key column, or a JSON array of the texts of a composite key, in column
// order.
func (l *Layout) NameOf(vals [][]byte) string {
	if len(l.keyCols) == 1 {
		return string(vals[l.keyCols[0]])
	}
	parts := make([]string, len(l.keyCols))
	for i, k := range l.keyCols {
		parts[i] = string(vals[k])
	}
	b, _ := json.Marshal(parts)
	return string(b)
}

// ParseName splits a key rendered as event.Key does back into the key
// columns' texts, in column order.
func (l *Layout) ParseName(name string) ([]string, error) {
	if len(l.keyCols) == 1 {
		return []string{name}, nil
	}
	var parts []string
	if err := json.Unmarshal([]byte(name), &parts); err != nil || len(parts) != len(l.keyCols) {
		return nil, fmt.Errorf("key %q is not a JSON array of %d texts", name, len(l.keyCols))
	}
	return parts, nil
}

// keyRow returns a row (Columns order) holding only the key parts given
// in column order.
func (l *Layout) keyRow(parts []string) [][]byte {
	row := make([][]byte, len(l.Columns))
	for i, k := range l.keyCols {
		row[k] = []byte(parts[i])
	}
	return row
}

// Record is one record of a Side.
type Record struct {
	// Key is the encoded key: bytes.Compare on two keys is the canonical
	// key order, and equal keys are the same record.
	Key []byte
	// Name is the key as event.Key renders it, for reports.
	Name string
	// Values are the canonical texts of the owned values, in
	// Layout.Columns order; nil is NULL.
	Values [][]byte
}

// Side is one side of a comparison: the records of a table, or of a sink
// folded to its final state.
//
// Next returns the next record in strictly ascending Key order, or io.EOF
// after the last one (and on every later call). A record, and the slices
// in it, may be reused by the next call. Close releases what the side
// holds (connections, temporary files); it may be called at any time,
// before io.EOF too, and returns the first error of reading that Next did
// not return. A Side is used by one goroutine at a time; cancelling the
// ctx of Next ends the read with ctx's error.
type Side interface {
	Next(ctx context.Context) (Record, error)
	Close() error
}

// Report is the outcome.
type Report struct {
	SourceRows, TargetRows                int64
	Missing, Different                    int64 // target lacks the key / owned values differ
	Extra                                 int64 // target keys the source lacks (orphans)
	MissingKeys, DifferentKeys, ExtraKeys []string
}

// Equal reports whether target matches source; extras count only when
// orphansCount is true (orphan policy "delete").
func (r Report) Equal(orphansCount bool) bool {
	return r.Missing == 0 && r.Different == 0 && (!orphansCount || r.Extra == 0)
}

// Options tune Compare.
type Options struct {
	Samples int // keys to keep per kind of difference, default 10
	// Progress, when set, is called every ProgressEvery source rows with
	// the number compared so far.
	Progress      func(done int64)
	ProgressEvery int64 // default 10,000
}

// Compare merges src and dst by key. It fails when either side breaks the
// key order (a bug, or a target whose keys do not parse as their type),
// naming the side and the key.
func Compare(ctx context.Context, src, dst Side, opt Options) (Report, error) {
	if opt.Samples <= 0 {
		opt.Samples = 10
	}
	if opt.ProgressEvery <= 0 {
		opt.ProgressEvery = 10000
	}
	s := cursor{side: src, what: "source"}
	d := cursor{side: dst, what: "target"}
	var rep Report
	if err := s.advance(ctx); err != nil {
		return rep, err
	}
	if err := d.advance(ctx); err != nil {
		return rep, err
	}
	for !s.eof || !d.eof {
		c := 0
		switch {
		case s.eof:
			c = 1
		case d.eof:
			c = -1
		default:
			c = bytes.Compare(s.rec.Key, d.rec.Key)
		}
		switch {
		case c < 0: // only in the source
			rep.Missing++
			rep.MissingKeys = sample(rep.MissingKeys, s.rec.Name, opt.Samples)
		case c > 0: // only in the target
			rep.Extra++
			rep.ExtraKeys = sample(rep.ExtraKeys, d.rec.Name, opt.Samples)
		default:
			if !equalValues(s.rec.Values, d.rec.Values) {
				rep.Different++
				rep.DifferentKeys = sample(rep.DifferentKeys, s.rec.Name, opt.Samples)
			}
		}
		if c <= 0 {
			rep.SourceRows++
			if opt.Progress != nil && rep.SourceRows%opt.ProgressEvery == 0 {
				opt.Progress(rep.SourceRows)
			}
			if err := s.advance(ctx); err != nil {
				return rep, err
			}
		}
		if c >= 0 {
			rep.TargetRows++
			if err := d.advance(ctx); err != nil {
				return rep, err
			}
		}
	}
	if opt.Progress != nil {
		opt.Progress(rep.SourceRows)
	}
	return rep, nil
}

// cursor reads a side and checks its order.
type cursor struct {
	side Side
	what string
	rec  Record
	prev []byte
	eof  bool
}

func (c *cursor) advance(ctx context.Context) error {
	if c.eof {
		return nil
	}
	c.prev = append(c.prev[:0], c.rec.Key...)
	had := c.rec.Key != nil
	r, err := c.side.Next(ctx)
	if errors.Is(err, io.EOF) {
		c.eof = true
		return nil
	}
	if err != nil {
		return fmt.Errorf("verify: read %s: %w", c.what, err)
	}
	if had && bytes.Compare(r.Key, c.prev) <= 0 {
		return fmt.Errorf("verify: the %s is not in key order at key %s (after the previous key); the key column types of source and target may differ", c.what, r.Name)
	}
	c.rec = r
	return nil
}

func equalValues(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if (a[i] == nil) != (b[i] == nil) || !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func sample(list []string, key string, n int) []string {
	if len(list) < n {
		return append(list, key)
	}
	return list
}
