// Package event builds, hashes, encodes and checks change batches
// (proto/oneway/v1). Every service reads and writes batches through it, so a
// malformed message is rejected the same way everywhere.
package event

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
)

// SchemaVersion is the contract version this code writes and accepts.
const SchemaVersion = 1

// HashSize is the length of a content hash in bytes.
const HashSize = 16

// AppendValue appends one value to a packed row: a varint n, then n-1
// bytes; v == nil is SQL NULL (n = 0).
func AppendValue(row, v []byte) []byte {
	if v == nil {
		return append(row, 0)
	}
	row = binary.AppendUvarint(row, uint64(len(v))+1)
	return append(row, v...)
}

// AppendString is AppendValue for a non-NULL string.
func AppendString(row []byte, v string) []byte {
	row = binary.AppendUvarint(row, uint64(len(v))+1)
	return append(row, v...)
}

// PackRow packs values (nil = NULL) into a row.
func PackRow(values [][]byte) []byte {
	n := 0
	for _, v := range values {
		n += len(v) + 2
	}
	row := make([]byte, 0, n)
	for _, v := range values {
		row = AppendValue(row, v)
	}
	return row
}

// Row unpacks a packed row into dst (reused when large enough). The values
// alias row: copy them to keep them past row's life. A NULL is nil; an
// empty string is a non-nil empty slice.
func Row(row []byte, dst [][]byte) ([][]byte, error) {
	dst = dst[:0]
	for len(row) > 0 {
		n, k := binary.Uvarint(row)
		if k <= 0 || n > uint64(len(row)-k)+1 {
			return nil, errs.Permanentf("corrupt row: value %d has a bad length", len(dst))
		}
		row = row[k:]
		if n == 0 {
			dst = append(dst, nil)
			continue
		}
		dst = append(dst, row[:n-1:n-1])
		row = row[n-1:]
	}
	return dst, nil
}

// RowHash is the content hash of a packed row: equal owned state, equal
// hash, whoever produced it.
func RowHash(row []byte) []byte {
	h := sha256.Sum256(row)
	return h[:HashSize]
}

// KeyIndexes returns the positions of the key columns in b.Columns.
func KeyIndexes(b *onewayv1.Batch) []int {
	var idx []int
	for i, c := range b.GetColumns() {
		if c.GetKey() {
			idx = append(idx, i)
		}
	}
	return idx
}

// Key renders a change's key as one string: the text of a single-column
// key, or a JSON array of the texts for a composite key. It is the identity
// a ledger stores and a dead letter names.
// The change must have passed Validate.
func Key(c *onewayv1.Change, keyIdx []int) string {
	var buf [16][]byte
	vals, _ := Row(c.GetRow(), buf[:0])
	return KeyOf(vals, keyIdx)
}

// KeyOf is Key for unpacked values.
func KeyOf(vals [][]byte, keyIdx []int) string {
	if len(keyIdx) == 1 && keyIdx[0] < len(vals) {
		return string(vals[keyIdx[0]])
	}
	parts := make([]string, len(keyIdx))
	for i, k := range keyIdx {
		if k < len(vals) {
			parts[i] = string(vals[k])
		}
	}
	b, _ := json.Marshal(parts)
	return string(b)
}

// Encode marshals a batch for the wire.
func Encode(b *onewayv1.Batch) ([]byte, error) {
	data, err := proto.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encode batch of %s: %w", b.GetTable(), err)
	}
	return data, nil
}

// Decode unmarshals and validates a batch. Every error it returns is
// permanent (errs.IsPermanent): retrying the same bytes cannot help.
func Decode(data []byte) (*onewayv1.Batch, error) {
	var b onewayv1.Batch
	if err := proto.Unmarshal(data, &b); err != nil {
		return nil, errs.Permanentf("decode batch (%d bytes): %w", len(data), err)
	}
	if err := Validate(&b); err != nil {
		return nil, err
	}
	return &b, nil
}

// Validate checks what every consumer relies on: a known schema version, a
// pipeline and table, at least one key column, one value per column in every
// change, a known op, and a non-NULL key. Errors are permanent and name the
// pipeline, table, change index and key where they can.
func Validate(b *onewayv1.Batch) error {
	where := fmt.Sprintf("pipeline %q table %q", b.GetPipeline(), b.GetTable())
	if b.GetSchemaVersion() != SchemaVersion {
		return errs.Permanentf("%s: unknown schema_version %d (this build knows %d)", where, b.GetSchemaVersion(), SchemaVersion)
	}
	if b.GetPipeline() == "" || b.GetTable() == "" {
		return errs.Permanentf("%s: batch without pipeline or table", where)
	}
	keyIdx := KeyIndexes(b)
	if len(keyIdx) == 0 {
		return errs.Permanentf("%s: batch has no key column", where)
	}
	seen := make(map[string]bool, len(b.GetColumns()))
	for i, c := range b.GetColumns() {
		if c.GetName() == "" || seen[c.GetName()] {
			return errs.Permanentf("%s: column %d has an empty or repeated name %q", where, i, c.GetName())
		}
		seen[c.GetName()] = true
	}
	var vals [][]byte
	for i, c := range b.GetChanges() {
		var err error
		vals, err = Row(c.GetRow(), vals)
		if err != nil {
			return errs.Permanentf("%s: change %d: %w", where, i, err)
		}
		if len(vals) != len(b.GetColumns()) {
			return errs.Permanentf("%s: change %d has %d values for %d columns", where, i, len(vals), len(b.GetColumns()))
		}
		switch c.GetOp() {
		case onewayv1.Op_OP_UPSERT, onewayv1.Op_OP_INSERT, onewayv1.Op_OP_UPDATE, onewayv1.Op_OP_DELETE:
		default:
			return errs.Permanentf("%s: change %d has unknown op %v", where, i, c.GetOp())
		}
		for _, k := range keyIdx {
			if vals[k] == nil {
				return errs.Permanentf("%s: change %d has a NULL key column %q", where, i, b.GetColumns()[k].GetName())
			}
		}
	}
	return nil
}

// ColumnNames lists the batch's column names in order.
func ColumnNames(b *onewayv1.Batch) []string {
	names := make([]string, len(b.GetColumns()))
	for i, c := range b.GetColumns() {
		names[i] = c.GetName()
	}
	return names
}

// Describe names a change for errors and logs: pipeline, table and key.
func Describe(b *onewayv1.Batch, c *onewayv1.Change) string {
	return fmt.Sprintf("pipeline %q table %q key %s", b.GetPipeline(), b.GetTable(), Key(c, KeyIndexes(b)))
}

// SanitizeHeader makes s safe for a NATS header value (one line).
func SanitizeHeader(s string) string {
	s = strings.ReplaceAll(s, "\r", " ")
	return strings.ReplaceAll(s, "\n", " ")
}

// VersionIndexBits is how many low bits of a version hold the change's
// index in its message.
const VersionIndexBits = 20

// Version is the version of change index of a message read at stream
// sequence seq: seq<<20 | index. Every service that fences or orders
// changes by the stream uses it (the writer's ledger, the stage store), so
// versions from different subjects of one pipeline's stream compare by
// publish order.
func Version(seq uint64, index int) int64 { return int64(seq<<VersionIndexBits | uint64(index)) }
