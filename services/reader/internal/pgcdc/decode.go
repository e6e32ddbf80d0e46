package pgcdc

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pglogrepl"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// relation maps one Relation message of the stream onto a captured table.
type relation struct {
	meta  *tableMeta // nil: a published table that is not captured
	table *Table     // the layout of changes after this Relation message
	pos   []int      // tuple position of each owned column
	full  bool       // REPLICA IDENTITY FULL: old tuples are whole rows
}

// relation maps a Relation message. An owned column missing from it
// (dropped or renamed) stops the stream with an error naming the table and
// column; a changed column type gives the table a new layout.
func (c *Capture) relation(ctx context.Context, m *pglogrepl.RelationMessage, lsn LSN) (*relation, error) {
	meta := c.byOID[m.RelationID]
	name := pgconn.Table{Schema: m.Namespace, Name: m.RelationName}
	if meta == nil {
		for _, t := range c.tables {
			if t.base.Name == name {
				return nil, errs.Permanentf("cdc: table %s was re-created (it is a new relation in the replication stream at %s): restart the reader, and resync the table", name, lsn)
			}
		}
		return &relation{}, nil
	}
	if meta.base.Name != name {
		c.log.Warn("captured table renamed; its changes are still captured", "table", meta.base.Name.String(), "new_name", name.String())
	}
	r := &relation{meta: meta, table: meta.base, full: m.ReplicaIdentity == 'f'}
	changed := false
	types := make([]typeID, len(meta.names))
	for i, n := range meta.names {
		j := slices.IndexFunc(m.Columns, func(col *pglogrepl.RelationMessageColumn) bool { return col.Name == n })
		if j < 0 {
			return nil, errs.Permanentf("cdc: owned column %q of table %s is not in the replication stream at %s (dropped or renamed): change the owned columns and restart the reader",
				n, meta.base.Name, lsn)
		}
		r.pos = append(r.pos, j)
		types[i] = typeID{oid: m.Columns[j].DataType, typmod: m.Columns[j].TypeModifier}
		changed = changed || types[i] != meta.types[i]
	}
	if changed {
		t := &Table{Index: meta.base.Index, Name: meta.base.Name, KeyIdx: meta.base.KeyIdx}
		for i, col := range meta.base.Columns {
			typ := col.Type
			if types[i] != meta.types[i] {
				var err error
				if typ, err = c.typeName(ctx, types[i]); err != nil {
					return nil, err
				}
				c.log.Warn("column type changed in the replication stream", "table", meta.base.Name.String(),
					"column", col.Name, "type", col.Type, "new_type", typ, "lsn", lsn.String())
			}
			t.Columns = append(t.Columns, &onewayv1.Column{Name: col.Name, Type: typ, Key: col.Key})
		}
		r.table = t
	}
	return r, nil
}

// decode turns one change message into changes of captured tables (none
// for other tables).
func (c *Capture) decode(ctx context.Context, rels map[uint32]*relation, msg pglogrepl.Message, lsn LSN) ([]Change, error) {
	rel := func(id uint32) (*relation, error) {
		r, ok := rels[id]
		if !ok {
			return nil, fmt.Errorf("replication from slot %s at %s: change to relation %d before its Relation message", c.cfg.Slot, lsn, id)
		}
		return r, nil
	}
	switch m := msg.(type) {
	case *pglogrepl.InsertMessage:
		r, err := rel(m.RelationID)
		if err != nil || r.meta == nil {
			return nil, err
		}
		row, unchanged, err := r.row(m.Tuple)
		if err != nil {
			return nil, err
		}
		if len(unchanged) > 0 {
			return nil, fmt.Errorf("replication of %s at %s: an insert with an unchanged TOASTed value", r.meta.base.Name, lsn)
		}
		return []Change{{Op: OpUpsert, Table: r.table, Row: row, LSN: lsn}}, nil
	case *pglogrepl.UpdateMessage:
		r, err := rel(m.RelationID)
		if err != nil || r.meta == nil {
			return nil, err
		}
		return c.update(ctx, r, m, lsn)
	case *pglogrepl.DeleteMessage:
		r, err := rel(m.RelationID)
		if err != nil || r.meta == nil {
			return nil, err
		}
		if m.OldTuple == nil {
			return nil, errs.Permanentf("cdc: a delete on %s at %s carries no key: the table's REPLICA IDENTITY must be DEFAULT with a primary key, USING INDEX or FULL",
				r.meta.base.Name, lsn)
		}
		row, err := r.keyRow(m.OldTuple, lsn)
		if err != nil {
			return nil, err
		}
		return []Change{{Op: OpDelete, Table: r.table, Row: row, LSN: lsn}}, nil
	case *pglogrepl.TruncateMessage:
		var out []Change
		for _, id := range m.RelationIDs {
			var t *Table
			if r, ok := rels[id]; ok && r.meta != nil {
				t = r.table
			} else if meta := c.byOID[id]; meta != nil {
				t = meta.base
			}
			if t != nil {
				out = append(out, Change{Op: OpTruncate, Table: t, LSN: lsn})
			}
		}
		return out, nil
	}
	return nil, nil
}

// update decodes an UPDATE: the new row, with unchanged TOASTed values
// filled in from the old row (REPLICA IDENTITY FULL) or read again by key,
// preceded by a delete of the old key when the key changed.
func (c *Capture) update(ctx context.Context, r *relation, m *pglogrepl.UpdateMessage, lsn LSN) ([]Change, error) {
	row, unchanged, err := r.row(m.NewTuple)
	if err != nil {
		return nil, err
	}
	var out []Change
	var oldKey Row
	if m.OldTuple != nil {
		if oldKey, err = r.keyRow(m.OldTuple, lsn); err != nil {
			return nil, err
		}
	}
	var reread []int
	for _, i := range unchanged {
		old := oldValue(m.OldTuple, r.pos[i])
		switch {
		case m.OldTupleType == pglogrepl.UpdateMessageTupleTypeOld && old != nil && old.DataType == pglogrepl.TupleDataTypeText:
			row[i] = slices.Clone(old.Data)
		case m.OldTupleType == pglogrepl.UpdateMessageTupleTypeOld && old != nil && old.DataType == pglogrepl.TupleDataTypeNull:
			row[i] = nil
		case slices.Contains(r.table.KeyIdx, i):
			if oldKey == nil {
				return nil, fmt.Errorf("replication of %s at %s: key column %q came as an unchanged TOASTed value without an old row",
					r.meta.base.Name, lsn, r.table.Columns[i].Name)
			}
			row[i] = oldKey[i]
		default:
			reread = append(reread, i)
		}
	}
	newKey := r.table.KeyOf(row)
	if oldKey != nil && !slices.Equal(r.table.KeyOf(oldKey), newKey) {
		out = append(out, Change{Op: OpDelete, Table: r.table, Row: oldKey, LSN: lsn})
	}
	if len(reread) > 0 {
		cur, err := c.readRow(ctx, r.meta, newKey)
		if err != nil {
			return nil, err
		}
		if cur == nil {
			// Deleted since: its delete follows in the stream.
			return out, nil
		}
		for _, i := range reread {
			row[i] = cur[i]
		}
	}
	return append(out, Change{Op: OpUpsert, Table: r.table, Row: row, LSN: lsn}), nil
}

func oldValue(t *pglogrepl.TupleData, pos int) *pglogrepl.TupleDataColumn {
	if t == nil || pos >= len(t.Columns) {
		return nil
	}
	return t.Columns[pos]
}

// row copies the owned values of a tuple into a Row (one allocation for
// the values: the tuple's buffer is reused by the next message). unchanged
// lists the owned columns sent as unchanged TOASTed values.
func (r *relation) row(t *pglogrepl.TupleData) (row Row, unchanged []int, err error) {
	if t == nil {
		return nil, nil, fmt.Errorf("replication of %s: a change without a row", r.meta.base.Name)
	}
	size := 0
	for _, j := range r.pos {
		if j < len(t.Columns) {
			size += len(t.Columns[j].Data)
		}
	}
	buf := make([]byte, 0, size)
	row = make(Row, len(r.pos))
	for i, j := range r.pos {
		if j >= len(t.Columns) {
			return nil, nil, fmt.Errorf("replication of %s: a row of %d columns, column %q is at %d", r.meta.base.Name, len(t.Columns), r.table.Columns[i].Name, j)
		}
		col := t.Columns[j]
		switch col.DataType {
		case pglogrepl.TupleDataTypeNull:
		case pglogrepl.TupleDataTypeToast:
			unchanged = append(unchanged, i)
		case pglogrepl.TupleDataTypeText:
			start := len(buf)
			buf = append(buf, col.Data...)
			row[i] = buf[start:len(buf):len(buf)]
		default:
			return nil, nil, fmt.Errorf("replication of %s: column %q came in format %q, want text", r.meta.base.Name, r.table.Columns[i].Name, col.DataType)
		}
	}
	return row, unchanged, nil
}

// keyRow builds a delete's Row from an old tuple (key or whole old row):
// the key columns set, the others nil.
func (r *relation) keyRow(t *pglogrepl.TupleData, lsn LSN) (Row, error) {
	row := make(Row, len(r.pos))
	for _, i := range r.table.KeyIdx {
		col := oldValue(t, r.pos[i])
		if col == nil || col.DataType != pglogrepl.TupleDataTypeText {
			return nil, errs.Permanentf("cdc: an old row of %s at %s lacks key column %q: the table's REPLICA IDENTITY no longer covers the key; restore it (ALTER TABLE %s REPLICA IDENTITY …)",
				r.meta.base.Name, lsn, r.table.Columns[i].Name, r.meta.base.Name.Quoted())
		}
		row[i] = slices.Clone(col.Data)
	}
	return row, nil
}
