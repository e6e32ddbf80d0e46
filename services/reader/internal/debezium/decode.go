// Package debezium is the reader's Kafka source: a topic of
// Debezium-format change events read in a consumer group (capture pattern
// cdc). Decoder turns one event into a change of the owned columns, with
// values in PostgreSQL's text forms; Capture reads the topic and hands the
// changes to the reader's publisher, committing the consumer group's
// offsets only after JetStream acknowledged them.
package debezium

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
)

// Column is an owned column: its name in the events and its PostgreSQL
// type as config.CanonicalType spells it.
type Column struct {
	Name, Type string
}

// Decoder decodes Debezium change events (the JSON converter's output,
// with or without the schema wrapper) into owned rows. It is safe for
// concurrent use.
type Decoder struct {
	cols   []Column
	keyIdx []int
	byName map[string]int
}

// NewDecoder returns a decoder of the owned columns cols, of which the
// ones at keyIdx (in key order) are the key.
func NewDecoder(cols []Column, keyIdx []int) *Decoder {
	d := &Decoder{cols: cols, keyIdx: keyIdx, byName: make(map[string]int, len(cols))}
	for i, c := range cols {
		d.byName[c.Name] = i
	}
	return d
}

// Event is one decoded change event.
type Event struct {
	// Op is OP_INSERT (op c), OP_UPSERT (op r, a snapshot read), OP_UPDATE
	// (op u) or OP_DELETE (op d).
	Op onewayv1.Op
	// Values are the owned columns' values in PostgreSQL's text form (nil
	// is NULL), in the decoder's column order. A delete holds only the key
	// values; the others are nil.
	Values [][]byte
}

// Decode decodes one Kafka record: its key and value as the JSON converter
// wrote them. A tombstone (an empty value, which follows a delete so that
// compaction can drop the key) returns ok false and no error. Errors say
// what is wrong with the event; the caller adds where it was.
func (d *Decoder) Decode(key, value []byte) (ev Event, ok bool, err error) {
	if len(bytes.TrimSpace(value)) == 0 || bytes.Equal(bytes.TrimSpace(value), []byte("null")) {
		return Event{}, false, nil
	}
	payload, schema, err := unwrap(value)
	if err != nil {
		return Event{}, false, err
	}
	var env struct {
		Op     *string         `json:"op"`
		Before json.RawMessage `json:"before"`
		After  json.RawMessage `json:"after"`
	}
	if err := json.Unmarshal(payload, &env); err != nil {
		return Event{}, false, fmt.Errorf("the payload is not a Debezium envelope: %w", err)
	}
	if env.Op == nil {
		return Event{}, false, errors.New(`the payload has no "op": not a Debezium change event (an unwrapped record, from the ExtractNewRecordState transform, is not supported)`)
	}
	fields := schemaFields(schema)
	switch *env.Op {
	case "c", "r", "u":
		op := map[string]onewayv1.Op{"c": onewayv1.Op_OP_INSERT, "r": onewayv1.Op_OP_UPSERT, "u": onewayv1.Op_OP_UPDATE}[*env.Op]
		row, err := d.record(env.After, fields["after"], "after", false)
		if err != nil {
			return Event{}, false, err
		}
		return Event{Op: op, Values: row}, true, nil
	case "d":
		row, err := d.record(env.Before, fields["before"], "before", true)
		if errors.Is(err, errNoRecord) {
			// Without REPLICA IDENTITY, before may be null: the record key
			// holds the key columns.
			row, err = d.recordKey(key)
		}
		if err != nil {
			return Event{}, false, err
		}
		return Event{Op: onewayv1.Op_OP_DELETE, Values: row}, true, nil
	case "t":
		return Event{}, false, errors.New("a truncate event (op t) cannot be applied key by key; leave truncates out in the connector (skipped.operations=t) and run `oneway resync` or reload the targets")
	default:
		return Event{}, false, fmt.Errorf("unknown op %q (expected c, r, u or d)", *env.Op)
	}
}

var errNoRecord = errors.New("no record")

// unwrap returns the payload of an event and its schema (nil without the
// schema wrapper).
func unwrap(value []byte) (payload, schema json.RawMessage, err error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(value, &top); err != nil {
		return nil, nil, fmt.Errorf("the value is not a JSON object: %w", err)
	}
	p, hasPayload := top["payload"]
	s, hasSchema := top["schema"]
	if hasPayload && hasSchema && len(top) == 2 {
		if isNull(p) {
			return nil, nil, errors.New("the payload is null")
		}
		return p, s, nil
	}
	return value, nil, nil
}

// fieldSchema is a Kafka Connect schema of one field.
type fieldSchema struct {
	Type       string            `json:"type"`
	Name       string            `json:"name"`
	Field      string            `json:"field"`
	Parameters map[string]string `json:"parameters"`
	Fields     []fieldSchema     `json:"fields"`
}

// schemaFields returns the envelope's schema by field name ("before",
// "after"), each holding the record's field schemas; empty without a
// schema.
func schemaFields(schema json.RawMessage) map[string]map[string]*fieldSchema {
	out := map[string]map[string]*fieldSchema{}
	if schema == nil {
		return out
	}
	var env fieldSchema
	if json.Unmarshal(schema, &env) != nil {
		return out
	}
	for i := range env.Fields {
		rec := &env.Fields[i]
		m := map[string]*fieldSchema{}
		for j := range rec.Fields {
			m[rec.Fields[j].Field] = &rec.Fields[j]
		}
		out[rec.Field] = m
	}
	return out
}

// record converts a before or after image; keyOnly keeps only the key
// columns (a delete).
func (d *Decoder) record(raw json.RawMessage, fields map[string]*fieldSchema, which string, keyOnly bool) ([][]byte, error) {
	if len(raw) == 0 || isNull(raw) {
		if keyOnly {
			return nil, errNoRecord
		}
		return nil, fmt.Errorf("%q is null", which)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%q is not a JSON object: %w", which, err)
	}
	return d.values(m, fields, which, keyOnly)
}

// recordKey converts a record key ({"id": 1}, with or without the schema
// wrapper) into a delete's values.
func (d *Decoder) recordKey(key []byte) ([][]byte, error) {
	if len(bytes.TrimSpace(key)) == 0 {
		return nil, errors.New(`a delete without "before" (the table's REPLICA IDENTITY) and without a record key: the deleted key is unknown`)
	}
	payload, schema, err := unwrap(key)
	if err != nil {
		return nil, fmt.Errorf("record key: %w", err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(payload, &m); err != nil {
		return nil, fmt.Errorf("the record key is not a JSON object: %w", err)
	}
	var fields map[string]*fieldSchema
	if schema != nil {
		var s fieldSchema
		if json.Unmarshal(schema, &s) == nil {
			fields = map[string]*fieldSchema{}
			for i := range s.Fields {
				fields[s.Fields[i].Field] = &s.Fields[i]
			}
		}
	}
	return d.values(m, fields, "record key", true)
}

// values converts the owned columns of one image.
func (d *Decoder) values(m map[string]json.RawMessage, fields map[string]*fieldSchema, which string, keyOnly bool) ([][]byte, error) {
	row := make([][]byte, len(d.cols))
	isKey := make([]bool, len(d.cols))
	for _, i := range d.keyIdx {
		isKey[i] = true
	}
	for i, c := range d.cols {
		if keyOnly && !isKey[i] {
			continue
		}
		raw, ok := m[c.Name]
		if !ok {
			return nil, fmt.Errorf("column %q is not in %q (is it left out by the connector's column.include.list, or misspelt?)", c.Name, which)
		}
		v, err := convert(c.Type, raw, fields[c.Name])
		if err != nil {
			return nil, fmt.Errorf("column %q (%s) in %q: %w", c.Name, c.Type, which, err)
		}
		if v == nil && isKey[i] {
			return nil, fmt.Errorf("key column %q is null in %q", c.Name, which)
		}
		row[i] = v
	}
	return row, nil
}

func isNull(raw json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}
