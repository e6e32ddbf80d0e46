package stage

import (
	"fmt"
	"strings"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// Layout is the column order of every row a pipeline stages, on every side:
// its owned columns (source.columns) in config order. The stager packs each
// incoming row in this order (columns matched by name, whatever order the
// batch had; columns that are not owned are left out), so the differ can
// compare a source row with a target row value by value, and hashes of
// equal rows are equal.
type Layout struct {
	// Columns are the owned column names, in stage order.
	Columns []string
	// Key are the positions of the key columns in Columns, in key order.
	Key []int
}

// LayoutOf is the layout of cfg's staged rows. cfg must be valid and in
// staged mode (source.columns set, holding every key column).
func LayoutOf(cfg *config.Pipeline) Layout {
	l := Layout{Columns: cfg.Source.Columns, Key: make([]int, len(cfg.Source.Key))}
	for i, k := range cfg.Source.Key {
		l.Key[i] = -1
		for j, c := range cfg.Source.Columns {
			if c == k {
				l.Key[i] = j
			}
		}
	}
	return l
}

// Mapping says where each stage column is in one batch's columns: Mapping
// [i] is the batch column of Layout.Columns[i]. Identity reports that the
// batch has exactly the stage's columns in stage order (rows need no
// repacking).
type Mapping struct {
	From     []int
	Identity bool
}

// Map maps the stage layout onto a batch's columns. A batch that lacks an
// owned column, or whose key columns differ from the layout's, cannot be
// staged: a permanent error naming the column.
func (l Layout) Map(b *onewayv1.Batch) (Mapping, error) {
	cols := b.GetColumns()
	byName := make(map[string]int, len(cols))
	for i, c := range cols {
		byName[c.GetName()] = i
	}
	m := Mapping{From: make([]int, len(l.Columns)), Identity: len(cols) == len(l.Columns)}
	isKey := make([]bool, len(l.Columns))
	for _, k := range l.Key {
		if k >= 0 {
			isKey[k] = true
		}
	}
	for i, name := range l.Columns {
		j, ok := byName[name]
		if !ok {
			return Mapping{}, errs.Permanentf("batch of %s (origin %q) has no column %q (owned columns: %s)",
				b.GetTable(), b.GetOrigin(), name, strings.Join(l.Columns, ", "))
		}
		if cols[j].GetKey() != isKey[i] {
			return Mapping{}, errs.Permanentf("batch of %s (origin %q): column %q is a key column on one side only", b.GetTable(), b.GetOrigin(), name)
		}
		m.From[i] = j
		if j != i {
			m.Identity = false
		}
	}
	return m, nil
}

// Columns returns the batch's column descriptions in stage order.
func (m Mapping) Columns(b *onewayv1.Batch) []*onewayv1.Column {
	out := make([]*onewayv1.Column, len(m.From))
	for i, j := range m.From {
		out[i] = b.GetColumns()[j]
	}
	return out
}

// Repack packs row (in the batch's column order) in stage order, reusing
// vals as scratch space. With an identity mapping it returns row itself.
func (m Mapping) Repack(row []byte, vals [][]byte) ([]byte, [][]byte, error) {
	if m.Identity {
		return row, vals, nil
	}
	vals, err := event.Row(row, vals)
	if err != nil {
		return nil, vals, err
	}
	n := 0
	for _, j := range m.From {
		if j >= len(vals) {
			return nil, vals, errs.Permanentf("row has %d values, want at least %d", len(vals), j+1)
		}
		n += len(vals[j]) + 2
	}
	out := make([]byte, 0, n)
	for _, j := range m.From {
		out = event.AppendValue(out, vals[j])
	}
	return out, vals, nil
}

// Record builds the record change c (of a batch mapped by m) stages at
// version: its row repacked in stage order and hashed, the key from the
// layout's key columns.
func (l Layout) Record(m Mapping, c *onewayv1.Change, version int64, vals [][]byte) (Record, [][]byte, error) {
	row, vals, err := m.Repack(c.GetRow(), vals)
	if err != nil {
		return Record{}, vals, err
	}
	staged := c
	if !m.Identity {
		staged = &onewayv1.Change{Op: c.GetOp(), Row: row}
	}
	r, err := RecordOf(staged, l.Key, version)
	if err != nil {
		return Record{}, vals, fmt.Errorf("stage record: %w", err)
	}
	return r, vals, nil
}
