// Package source holds the values that the reader's SQL sources
// (pgsource, sqlsource) and the capture patterns exchange: rows, watermark
// cursors and bounds, and scan options. The contract of a source is the
// capture.Source interface; this package only names its values, so that
// the sources need not import the patterns.
package source

import (
	"math"
	"strconv"
)

// Row is one record's owned values in the text forms PostgreSQL prints
// for them (the canonical forms of shared/event); nil is NULL. A source
// may append extra values after the owned ones (its accessors read them);
// capture.Source.Owned returns the owned part.
type Row = [][]byte

// Cursor is a position in watermark order: (Mark, Key, and whether the
// row there came from the delete feed, which sorts first on ties). Mark is
// a watermark value in the source's own text form (what its WatermarkOf
// returns), not necessarily the canonical form of the owned value.
type Cursor struct {
	Mark string
	// Key nil means "from Mark inclusive".
	Key []string
	// Deleted is true when the cursor is on a delete-feed row.
	Deleted bool
}

// Bound is an upper bound of the watermark below which every row is
// committed and visible.
type Bound struct {
	// Value is the bound as text; "" when no bound is known yet (a numeric
	// watermark needs a sample older than every open transaction).
	Value string
	// Inclusive is true when rows at Value itself are final too.
	Inclusive bool
}

// Ready reports whether the bound is known.
func (b Bound) Ready() bool { return b.Value != "" }

// ScanOptions select the rows of a Scan.
type ScanOptions struct {
	// WindowFrom, when not empty, restricts the scan to the rows whose
	// window column is at or after it (a value the source's WindowStart
	// returned).
	WindowFrom string
	// Whole reads every row even with WindowFrom, and reports for each
	// whether it lies in the window (InWindow).
	Whole bool
}

// Scan is an open scan of a table in order-key order. It is used by one
// goroutine; Close may be called at any time and releases the connection.
type Scan interface {
	// Next returns the next row, or false at the end or on an error (see
	// Err).
	Next() (Row, bool)
	// Err is the error that ended the scan, if any.
	Err() error
	// InWindow reports whether a row of a Whole scan lies in the window
	// (true for every row of other scans).
	InWindow(r Row) bool
	Close()
}

// KeyTexts returns the key values of r (at keyIdx, in key order) as text:
// the form SnapshotPage and Lookup take keys in.
func KeyTexts(r Row, keyIdx []int) []string {
	k := make([]string, len(keyIdx))
	for i, j := range keyIdx {
		k[i] = string(r[j])
	}
	return k
}

// FloatText prints f as PostgreSQL prints a double precision (bits 64)
// or real (bits 32): the shortest text that reads back as the same value,
// in exponent form below 1e-4 and from 1e15 (1e6 for real) up.
func FloatText(f float64, bits int) []byte {
	big := 1e15
	if bits == 32 {
		big = 1e6
	}
	switch {
	case math.IsNaN(f):
		return []byte("NaN")
	case math.IsInf(f, 1):
		return []byte("Infinity")
	case math.IsInf(f, -1):
		return []byte("-Infinity")
	case f == 0:
		return []byte("0")
	}
	if a := math.Abs(f); a < 1e-4 || a >= big {
		// Go prints 1e+06 and 1e-05 as PostgreSQL does.
		return []byte(strconv.FormatFloat(f, 'e', -1, bits))
	}
	return strconv.AppendFloat(nil, f, 'f', -1, bits)
}
