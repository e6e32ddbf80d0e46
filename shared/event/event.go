// Package event builds, hashes, encodes and checks change batches
// (proto/oneway/v1). Every service reads and writes batches through it, so a
// malformed message is rejected the same way everywhere.
package event

import (
	"crypto/sha256"
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

// Hash returns the content hash of a record's owned values: SHA-256 over
// each value's null flag, length and bytes, truncated to HashSize. Equal
// owned state means equal hash, whatever produced it.
func Hash(values []*onewayv1.Value) []byte {
	h := sha256.New()
	var buf [9]byte
	for _, v := range values {
		if _, ok := v.GetKind().(*onewayv1.Value_Null); ok || v == nil {
			buf[0] = 0
			h.Write(buf[:1])
			continue
		}
		s := v.GetText()
		buf[0] = 1
		n := uint64(len(s))
		for i := 0; i < 8; i++ {
			buf[1+i] = byte(n >> (8 * i))
		}
		h.Write(buf[:])
		h.Write([]byte(s))
	}
	return h.Sum(nil)[:HashSize]
}

// HashTexts is Hash for values given as nullable text (nil = NULL).
func HashTexts(values [][]byte) []byte {
	h := sha256.New()
	var buf [9]byte
	for _, v := range values {
		if v == nil {
			buf[0] = 0
			h.Write(buf[:1])
			continue
		}
		buf[0] = 1
		n := uint64(len(v))
		for i := 0; i < 8; i++ {
			buf[1+i] = byte(n >> (8 * i))
		}
		h.Write(buf[:])
		h.Write(v)
	}
	return h.Sum(nil)[:HashSize]
}

// Null is the NULL value.
func Null() *onewayv1.Value { return &onewayv1.Value{Kind: &onewayv1.Value_Null{Null: true}} }

// Text is a non-NULL value.
func Text(s string) *onewayv1.Value { return &onewayv1.Value{Kind: &onewayv1.Value_Text{Text: s}} }

// IsNull reports whether v is NULL (a missing value counts as NULL).
func IsNull(v *onewayv1.Value) bool {
	_, isText := v.GetKind().(*onewayv1.Value_Text)
	return !isText
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
func Key(c *onewayv1.Change, keyIdx []int) string {
	if len(keyIdx) == 1 {
		return c.GetValues()[keyIdx[0]].GetText()
	}
	parts := make([]string, len(keyIdx))
	for i, k := range keyIdx {
		parts[i] = c.GetValues()[k].GetText()
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
	for i, c := range b.GetChanges() {
		if len(c.GetValues()) != len(b.GetColumns()) {
			return errs.Permanentf("%s: change %d has %d values for %d columns", where, i, len(c.GetValues()), len(b.GetColumns()))
		}
		switch c.GetOp() {
		case onewayv1.Op_OP_UPSERT, onewayv1.Op_OP_INSERT, onewayv1.Op_OP_UPDATE, onewayv1.Op_OP_DELETE:
		default:
			return errs.Permanentf("%s: change %d has unknown op %v", where, i, c.GetOp())
		}
		for _, k := range keyIdx {
			if IsNull(c.GetValues()[k]) {
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
