// Package changejson renders changes as JSON for sinks that take documents:
// column values typed by their source type, an upsert's full object, and
// the change envelope that stream and file targets write:
//
//	{"op":"upsert","key":"42","fields":{"id":42,"name":"x"},"version":123}
//	{"op":"delete","key":"42","fields":{"id":42},"version":124}
//
// key is the record key as event.Key renders it (a single column's text or
// a JSON array of the texts of a composite key), fields are the columns in
// column order (a delete carries only its key columns) and version is the
// change's fencing version, stream sequence << 20 | change index: consumers
// keep, per key, the highest version they have seen.
package changejson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
)

// Op names as the envelope and templates spell them.
const (
	OpUpsert = "upsert"
	OpDelete = "delete"
)

type kind int

const (
	kString kind = iota
	kNumber
	kBool
	kJSON
)

// kindOf maps a column type, as the source's catalog spells it, to its JSON
// form. Arrays and everything not listed are strings.
func kindOf(typ string) kind {
	t := strings.ToLower(strings.TrimSpace(typ))
	if strings.HasSuffix(t, "]") {
		return kString
	}
	if i := strings.IndexByte(t, '('); i >= 0 {
		t = strings.TrimSpace(t[:i])
	}
	switch t {
	case "smallint", "integer", "bigint", "int", "int2", "int4", "int8",
		"numeric", "decimal", "real", "double precision", "float4", "float8":
		return kNumber
	case "boolean", "bool":
		return kBool
	case "json", "jsonb":
		return kJSON
	}
	return kString
}

var jsonNumber = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)

// RawJSON is a json/jsonb value: embedded as is in a document, printed as
// text in a template.
type RawJSON []byte

func (r RawJSON) MarshalJSON() ([]byte, error) { return r, nil }
func (r RawJSON) String() string               { return string(r) }

// Typed converts one text value (nil = NULL) to its JSON form: numbers as
// json.Number (the text itself, no float rounding), booleans, json/jsonb as
// RawJSON, everything else as a string. Values that do not fit their type's
// form (NaN, Infinity, a malformed boolean or JSON) stay strings rather than
// fail.
func Typed(typ string, v []byte) any {
	if v == nil {
		return nil
	}
	switch kindOf(typ) {
	case kNumber:
		if jsonNumber.Match(v) {
			return json.Number(v)
		}
	case kBool:
		switch string(v) {
		case "t", "true":
			return true
		case "f", "false":
			return false
		}
	case kJSON:
		if json.Valid(v) {
			return RawJSON(bytes.Clone(v))
		}
	}
	return string(v)
}

// Fields maps column names to typed values, for templates. For a delete
// only the key columns are set.
func Fields(cols []*onewayv1.Column, vals [][]byte, del bool) map[string]any {
	f := make(map[string]any, len(cols))
	for i, c := range cols {
		if del && !c.GetKey() {
			continue
		}
		f[c.GetName()] = Typed(c.GetType(), vals[i])
	}
	return f
}

// KeyParts are the key columns' texts, in key order.
func KeyParts(vals [][]byte, keyIdx []int) []string {
	parts := make([]string, len(keyIdx))
	for i, k := range keyIdx {
		parts[i] = string(vals[k])
	}
	return parts
}

// encoder writes JSON values without HTML escaping or newlines.
type encoder struct {
	buf *bytes.Buffer
	enc *json.Encoder
}

func newEncoder(buf *bytes.Buffer) encoder {
	e := encoder{buf: buf, enc: json.NewEncoder(buf)}
	e.enc.SetEscapeHTML(false)
	return e
}

func (e encoder) put(v any) error {
	if err := e.enc.Encode(v); err != nil {
		return err
	}
	e.buf.Truncate(e.buf.Len() - 1) // Encode's newline
	return nil
}

// object appends the columns (only key columns when keysOnly) as an object.
func (e encoder) object(cols []*onewayv1.Column, vals [][]byte, keysOnly bool) error {
	if len(vals) != len(cols) {
		return fmt.Errorf("%d values for %d columns", len(vals), len(cols))
	}
	e.buf.WriteByte('{')
	n := 0
	for i, c := range cols {
		if keysOnly && !c.GetKey() {
			continue
		}
		if n > 0 {
			e.buf.WriteByte(',')
		}
		n++
		if err := e.put(c.GetName()); err != nil {
			return err
		}
		e.buf.WriteByte(':')
		if err := e.put(Typed(c.GetType(), vals[i])); err != nil {
			return fmt.Errorf("column %q: %w", c.GetName(), err)
		}
	}
	e.buf.WriteByte('}')
	return nil
}

// Object is the JSON object of an upsert: every column, in column order.
func Object(cols []*onewayv1.Column, vals [][]byte) ([]byte, error) {
	var buf bytes.Buffer
	if err := newEncoder(&buf).object(cols, vals, false); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// AppendEnvelope appends the envelope of one change to dst (no newline).
func AppendEnvelope(dst []byte, cols []*onewayv1.Column, vals [][]byte, key string, del bool, version int64) ([]byte, error) {
	buf := bytes.NewBuffer(dst)
	e := newEncoder(buf)
	op := OpUpsert
	if del {
		op = OpDelete
	}
	buf.WriteString(`{"op":"` + op + `","key":`)
	if err := e.put(key); err != nil {
		return dst, err
	}
	buf.WriteString(`,"fields":`)
	if err := e.object(cols, vals, del); err != nil {
		return dst, err
	}
	buf.WriteString(`,"version":`)
	buf.WriteString(strconv.FormatInt(version, 10))
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// Envelope is AppendEnvelope to a new slice.
func Envelope(cols []*onewayv1.Column, vals [][]byte, key string, del bool, version int64) ([]byte, error) {
	return AppendEnvelope(nil, cols, vals, key, del, version)
}
