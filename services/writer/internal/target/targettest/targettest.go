// Package targettest builds changes for the tests of target.Writer
// implementations.
package targettest

import (
	"fmt"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/event"
)

// PackVals packs values: a string is a value, nil is SQL NULL.
func PackVals(vals ...any) []byte {
	raw := make([][]byte, len(vals))
	for i, v := range vals {
		switch v := v.(type) {
		case nil:
		case string:
			raw[i] = append([]byte{}, v...) // non-nil even when empty
		default:
			panic(fmt.Sprintf("PackVals: unsupported %T", v))
		}
	}
	return event.PackRow(raw)
}

// Up is an upsert of the given values, with its content hash.
func Up(vals ...any) *onewayv1.Change {
	row := PackVals(vals...)
	return &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, Row: row, Hash: event.RowHash(row)}
}

// DelOf is a delete of the given key values in an n-column layout whose
// key columns come first.
func DelOf(n int, keys ...string) *onewayv1.Change {
	vals := make([]any, n)
	for i, k := range keys {
		vals[i] = k
	}
	return &onewayv1.Change{Op: onewayv1.Op_OP_DELETE, Row: PackVals(vals...)}
}
