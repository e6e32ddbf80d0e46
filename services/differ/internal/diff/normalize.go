package diff

import (
	"bytes"
	"encoding/json"
	"math/big"
	"strings"
	"time"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/event"
)

// Normalisation. Both sides' values travel as text, and the same value can
// be written differently by different databases or column types: 12.5 and
// 12.50, a timestamp in two offsets, true and t. Before comparing, each
// value is put in a canonical form chosen by the source column's type.
// Normalisation only removes differences of notation, never of content:
// text is compared byte for byte (a target that trims strings or rounds
// numbers does differ, and the push cap, not normalisation, keeps the
// differ from pushing forever). Unknown types, and values that do not
// parse as their type, are compared as they are.

// kind is a family of types that share a canonical form.
type kind int

const (
	exact kind = iota
	number
	boolean
	timestampTZ
	timestamp
	date
	jsonDoc
	uuid
	blankPadded
	hexBytes
)

// kindOf maps a PostgreSQL type name (as format_type writes it, e.g.
// "numeric(12,2)", "timestamp with time zone") to its kind.
func kindOf(typ string) kind {
	t := strings.ToLower(strings.TrimSpace(typ))
	if strings.HasSuffix(t, "]") {
		return exact // arrays: compared as text
	}
	if i := strings.IndexByte(t, '('); i >= 0 {
		j := strings.IndexByte(t, ')')
		if j > i {
			t = strings.TrimSpace(t[:i] + t[j+1:])
		}
	}
	switch t {
	case "smallint", "integer", "bigint", "int", "int2", "int4", "int8", "numeric", "decimal",
		"real", "double precision", "float4", "float8", "float", "smallserial", "serial", "bigserial":
		return number
	case "boolean", "bool":
		return boolean
	case "timestamp with time zone", "timestamptz":
		return timestampTZ
	case "timestamp", "timestamp without time zone":
		return timestamp
	case "date":
		return date
	case "json", "jsonb":
		return jsonDoc
	case "uuid":
		return uuid
	case "character", "char", "bpchar":
		return blankPadded
	case "bytea":
		return hexBytes
	}
	return exact
}

// Comparer compares staged rows of one layout value by value.
type Comparer struct {
	kinds []kind
}

// NewComparer returns a comparer for rows packed with columns (in stage
// order, with the source's types).
func NewComparer(columns []*onewayv1.Column) *Comparer {
	c := &Comparer{kinds: make([]kind, len(columns))}
	for i, col := range columns {
		c.kinds[i] = kindOf(col.GetType())
	}
	return c
}

// Differs returns the indexes of the columns whose normalised values
// differ between two packed rows (nil when the rows are equal). Rows that
// do not unpack, or have another number of values than the layout, differ
// in every column.
func (c *Comparer) Differs(a, b []byte) []int {
	if bytes.Equal(a, b) {
		return nil
	}
	va, errA := event.Row(a, nil)
	vb, errB := event.Row(b, nil)
	if errA != nil || errB != nil || len(va) != len(c.kinds) || len(vb) != len(c.kinds) {
		all := make([]int, len(c.kinds))
		for i := range all {
			all[i] = i
		}
		return all
	}
	var out []int
	for i, k := range c.kinds {
		if !equalValue(k, va[i], vb[i]) {
			out = append(out, i)
		}
	}
	return out
}

// Equal reports whether two packed rows are equal after normalisation.
func (c *Comparer) Equal(a, b []byte) bool {
	return bytes.Equal(a, b) || len(c.Differs(a, b)) == 0
}

// equalValue compares two values (nil = NULL) of one kind.
func equalValue(k kind, a, b []byte) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	if bytes.Equal(a, b) {
		return true
	}
	na, okA := Normalize(k, string(a))
	nb, okB := Normalize(k, string(b))
	return okA && okB && na == nb
}

// Normalize returns the canonical form of v for its kind, and false when v
// does not parse as that kind (it is then compared as it is).
func Normalize(k kind, v string) (string, bool) {
	switch k {
	case number:
		r, ok := new(big.Rat).SetString(strings.TrimSpace(v))
		if !ok {
			return v, false
		}
		return r.RatString(), true
	case boolean:
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "t", "true", "1", "y", "yes", "on":
			return "t", true
		case "f", "false", "0", "n", "no", "off":
			return "f", true
		}
		return v, false
	case timestampTZ:
		for _, layout := range tzLayouts {
			if t, err := time.Parse(layout, v); err == nil {
				return t.UTC().Format(time.RFC3339Nano), true
			}
		}
		return v, false
	case timestamp:
		for _, layout := range localLayouts {
			if t, err := time.Parse(layout, v); err == nil {
				return t.Format("2006-01-02T15:04:05.999999999"), true
			}
		}
		return v, false
	case date:
		if t, err := time.Parse("2006-01-02", v); err == nil {
			return t.Format("2006-01-02"), true
		}
		return v, false
	case jsonDoc:
		dec := json.NewDecoder(strings.NewReader(v))
		dec.UseNumber()
		var doc any
		if err := dec.Decode(&doc); err != nil || dec.More() {
			return v, false
		}
		out, err := json.Marshal(doc) // objects come out with sorted keys
		if err != nil {
			return v, false
		}
		return string(out), true
	case uuid, hexBytes:
		return strings.ToLower(v), true
	case blankPadded:
		return strings.TrimRight(v, " "), true
	}
	return v, true
}

var (
	tzLayouts = []string{
		"2006-01-02 15:04:05.999999999Z07",
		"2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999Z07:00:00",
		"2006-01-02T15:04:05.999999999Z07:00",
		"2006-01-02T15:04:05.999999999Z07",
	}
	localLayouts = []string{
		"2006-01-02 15:04:05.999999999",
		"2006-01-02T15:04:05.999999999",
	}
)
