package capture

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
)

// What the writers reported applied (a target's read-back in staged mode).
//
// A cycle reports a delete only for a key its list holds (or that an
// earlier attempt inserted). A read-back's target also gets rows from the
// writers, which the stage learns from their applied reports: a row a
// writer inserted after the read-back's last read and that was deleted by
// hand before its next one is in neither the list nor the read, so its
// delete would never be sent, the stage would keep the report's live
// record, and the differ would never recreate the row. So before each
// read, the cycle reads the reports on the target's applied subject
// published since the last completed cycle's read began
// (Position.Reported): a writer publishes a report after its transaction
// committed, so the read that starts afterwards sees what each reported.
// The keys whose last report left a row are merged like the keys an
// interrupted attempt published (see published.go): one the read does not
// return is gone, and its delete is sent; one the read returns is sent
// as any key the list lacks (an insert), or compared with the list when
// the list holds it; one the list holds and the read does not is gone
// once.
//
// A cycle takes the reports of at most reportKeys keys (whole messages;
// the rest waits for the next cycle, whose read comes later still): a
// read-back that starts on a long stream of reports, or after an upgrade
// from a version without them (Reported 0), works through them over a few
// cycles instead of holding every key at once.
//
// They form one batch spanning every order key (reportHi): the reports
// carry key values, not the order keys of the target's scan. Memory holds
// the keys reported since the last cycle, not the table; their gone
// findings come last and take the largest order key found before them.

// reportKeys bounds the reported keys one cycle merges (about 100 MB).
const reportKeys = 1 << 20

// reportHi is the order key the reported keys' batch ends at: above any
// scan's (order keys are 8-byte integers and text, which never holds
// 0xFF).
var reportHi = bytes.Repeat([]byte{0xFF}, 64)

// readReported adds to rs, as one batch, the packed key values of the keys
// whose last report on c.Reported after stream sequence after left a row
// in the target, and returns the sequence it read up to (after when the
// subject holds nothing newer): the subject's last, or that of the last
// message it took once it had reportKeys keys (c.reportKeys in tests).
// Reports that do not decode, or lack a key column (another layout), are
// skipped: the stager dead-letters them.
func (c *Cycle) readReported(ctx context.Context, after uint64, rs *runs) (uint64, error) {
	last, err := c.Reported.LastSeq(ctx)
	if err != nil || last <= after {
		return after, err
	}
	limit := reportKeys
	if c.reportKeys > 0 {
		limit = c.reportKeys
	}
	live := map[string]bool{}
	var msgs, skipped int
	upTo := last
	for seq := after + 1; seq <= last; seq++ {
		if len(live) >= limit {
			upTo = seq - 1 // the rest in the next cycle
			break
		}
		b, at, ok, err := c.Reported.At(ctx, seq)
		if err != nil {
			return after, err
		}
		if !ok || at > last {
			break
		}
		seq = at
		if b == nil {
			skipped++
			continue
		}
		keyIdx, err := batchKeyIdx(&c.Layout, b)
		if err != nil {
			skipped++
			continue
		}
		if err := reportedKeys(keyIdx, b.GetChanges(), live); err != nil {
			skipped++
			continue
		}
		msgs++
	}
	keys := make([][]byte, 0, len(live))
	for _, k := range slices.Sorted(maps.Keys(live)) {
		if live[k] {
			keys = append(keys, []byte(k))
		}
	}
	c.Log.Debug("applied reports read", "from_seq", after+1, "to_seq", upTo, "messages", msgs, "live_keys", len(keys))
	if skipped > 0 {
		c.Log.Warn("applied reports skipped: they do not decode or lack a key column", "messages", skipped)
	}
	if err := rs.add([]byte{}, reportHi, keys); err != nil {
		return after, err
	}
	return upTo, rs.end()
}

var errMissingKey = errors.New("a reported change lacks a key value")

// reportedKeys notes in live, for each change of a report, whether it left
// a row (OP_DELETE: no) under its packed key values; a later change of a
// key overrides an earlier one.
func reportedKeys(keyIdx []int, changes []*onewayv1.Change, live map[string]bool) error {
	var k changeKeys
	for _, ch := range changes {
		packed, err := k.of(keyIdx, ch)
		if err != nil {
			return err
		}
		if slices.ContainsFunc(k.key, func(v []byte) bool { return v == nil }) {
			return errMissingKey
		}
		live[string(packed)] = ch.GetOp() != onewayv1.Op_OP_DELETE
	}
	return nil
}
