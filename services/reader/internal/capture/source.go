package capture

import (
	"context"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/source"
)

// Source is a table the watermark, watermark_cdc, synthetic and window
// patterns read: pgsource (PostgreSQL) and sqlsource (SQLite, MySQL and
// MariaDB) implement it. It is opened for one table, key and pattern (its
// Spec decides which of the reads below it supports), and is safe for
// concurrent use; the patterns call it from one goroutine at a time.
//
// Rows carry the owned values, in Columns order, in the text PostgreSQL
// prints for the column types Columns reports (so that every source's
// events, hashes and `oneway verify` agree), and may carry extra values
// after them that only the accessors read. Errors are classified: a
// permanent error (errs.Permanent) means the source cannot be read as
// configured; anything else is transient and the patterns retry the call.
// Reads do not change the source, so every call may be repeated.
type Source interface {
	// Columns describes the owned columns, in Row order, with their
	// PostgreSQL type names.
	Columns() []*onewayv1.Column
	// KeyIndexes returns the positions of the key columns in a Row, in
	// key order.
	KeyIndexes() []int
	// HasWatermark reports whether the source has a watermark column, and
	// whether it is a number (bounded by samples rather than by time).
	HasWatermark() (has, numeric bool)

	// SafeBound returns a commit-safe time bound as text: every change not
	// yet visible to a read that starts after the call will have a
	// watermark at or after it. lookbackSeconds is the fallback distance
	// from now when the source cannot see its open transactions.
	SafeBound(ctx context.Context, lookbackSeconds float64) (string, error)
	// Bound returns the commit-safe bound of the watermark column: every
	// row below it (at it, when Inclusive) is committed and visible to a
	// read that starts after the call. A bound that is not Ready means
	// "none yet; ask again later".
	Bound(ctx context.Context, lookbackSeconds float64) (source.Bound, error)

	// SnapshotPage returns up to limit rows with key greater than after
	// (nil = from the start), in key order.
	SnapshotPage(ctx context.Context, after []string, limit int) ([]source.Row, error)
	// WatermarkRows returns up to limit rows after c and below bound (at
	// or below an Inclusive one), in (watermark, key) order, with the
	// delete feed merged in when there is one.
	WatermarkRows(ctx context.Context, c source.Cursor, bound source.Bound, limit int) ([]source.Row, error)
	// Lower returns mark minus seconds as a watermark value (for a date,
	// rounded down to its day) with the epochs (seconds since 1970) of
	// that value and of mark.
	Lower(ctx context.Context, mark string, seconds float64) (lower string, lowerEpoch, markEpoch float64, err error)

	// Scan streams the rows in order-key order (OrdKey strictly
	// increasing), as of one snapshot of the table; rows whose key has a
	// NULL are left out. The caller closes it.
	Scan(ctx context.Context, o source.ScanOptions) (source.Scan, error)
	// WindowStart returns now minus span: the start of a window, to pass
	// as ScanOptions.WindowFrom.
	WindowStart(ctx context.Context, spanSeconds float64) (string, error)
	// Lookup reads the rows with the given keys (each the key texts, in
	// key order), in no particular order; missing keys are not returned.
	Lookup(ctx context.Context, keys [][]string) ([]source.Row, error)

	// OrdKey appends the order key of a row read by Scan to dst: the
	// bytes.Compare order of order keys is the order of Scan.
	OrdKey(dst []byte, r source.Row) ([]byte, error)
	// KeyOf returns the key texts of a row, in key order, as SnapshotPage
	// and Lookup take them.
	KeyOf(r source.Row) []string
	// Owned returns the owned values of a row, without the extras.
	Owned(r source.Row) source.Row
	// IsDeleted reports whether a row stands for a deleted record (soft
	// delete, delete feed).
	IsDeleted(r source.Row) bool
	// FromDeleteFeed reports whether a watermark row came from the delete
	// feed.
	FromDeleteFeed(r source.Row) bool
	// Epoch returns a watermark row's watermark in seconds since 1970
	// (when the source was opened for an overlap; 0 otherwise).
	Epoch(r source.Row) float64
	// WatermarkOf returns the watermark of a row in the source's own text
	// form (what Cursor.Mark and Lower take).
	WatermarkOf(r source.Row) string
	// CursorOf returns the cursor of a row read by WatermarkRows.
	CursorOf(r source.Row) source.Cursor
}
