package capture

import (
	"bytes"

	"github.com/oneway-sync/oneway/shared/event"
)

// The merge at the heart of the synthetic and window patterns: this
// cycle's rows, in order-key order, against the previous cycle's hash list,
// in the same order. Neither side is held in memory.

// scanRow is one row of this cycle's read.
type scanRow struct {
	ord     []byte
	owned   [][]byte
	deleted bool // the row is marked deleted (soft-delete column)
	// outside is true for a row read although it lies outside the window
	// (a window cycle without a list reads the whole table once): it is
	// sent like any other but stays out of the new list.
	outside bool
}

// rowIter yields this cycle's rows in strictly increasing ord.
type rowIter interface {
	next() (scanRow, bool, error)
}

// entryIter yields the previous cycle's entries in strictly increasing ord.
type entryIter interface {
	Next() (entry, bool, error)
}

// evKind is what the merge found for one key.
type evKind int

const (
	evInsert evKind = iota + 1 // a row the list does not have
	evUpdate                   // a row whose hash differs from the list's (or any row, in the dirty range)
	evDelete                   // a row marked deleted that the list has (or any, in the dirty range)
	evGone                     // a key of the list that this cycle did not read
)

// mergeEvent is one finding, in ord order.
type mergeEvent struct {
	kind  evKind
	ord   []byte
	owned [][]byte // evInsert, evUpdate: the row
	key   []byte   // evDelete, evGone: the packed key values
	hash  []byte   // evGone: the list's hash
	// force is true in the dirty range: the finding must be emitted even if
	// the hashes say nothing changed (what was published there is unknown).
	force bool
}

// merge walks rows, old (nil: no list) and pub (nil: nothing published by
// an earlier attempt, see published.go) in step. It adds every row that is
// not marked deleted (nor outside) to out and calls fn for each finding.
// Rows whose ord is at or below dirty are emitted whatever their hash. A
// published key that no row within its batch's range matched is gone
// (force set, no hash), found once the read passed that range and given
// the range's end as ord, so that the findings' ords never decrease.
func merge(rows rowIter, old entryIter, pub *pubSet, dirty []byte, out *listWriter, layout *Layout, fn func(mergeEvent) error) error {
	var cur entry
	have := false
	advance := func() error {
		if old == nil {
			have = false
			return nil
		}
		var err error
		cur, have, err = old.Next()
		return err
	}
	if err := advance(); err != nil {
		return err
	}
	inDirty := func(ord []byte) bool { return dirty != nil && bytes.Compare(ord, dirty) <= 0 }
	// gone reports, in ord order, the keys of the list below o and the
	// published keys of the ranges that end below o (nil o: all).
	gone := func(o []byte) error {
		for {
			run, hi := pub.nextDone(o)
			inList := have && (o == nil || bytes.Compare(cur.ord, o) < 0)
			switch {
			case inList && (run == nil || bytes.Compare(cur.ord, hi) <= 0):
				if err := fn(mergeEvent{kind: evGone, ord: cur.ord, key: cur.key, hash: cur.hash, force: inDirty(cur.ord)}); err != nil {
					return err
				}
				// A reported key (reported.go) may be the same: gone once.
				if err := pub.seen(cur.ord, cur.key); err != nil {
					return err
				}
				if err := advance(); err != nil {
					return err
				}
			case run != nil:
				err := pub.finish(run, func(key []byte) error {
					return fn(mergeEvent{kind: evGone, ord: hi, key: key, force: true})
				})
				if err != nil {
					return err
				}
			default:
				return nil
			}
		}
	}
	for {
		r, ok, err := rows.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		// Keys of the list before this row were not read: gone; so are the
		// published keys of the ranges that end before it.
		if err := gone(r.ord); err != nil {
			return err
		}
		if pub != nil {
			if err := pub.seen(r.ord, layout.packKey(r.owned)); err != nil {
				return err
			}
		}
		inList := have && bytes.Equal(cur.ord, r.ord)
		force := inDirty(r.ord)
		switch {
		case r.deleted:
			if inList || force {
				if err := fn(mergeEvent{kind: evDelete, ord: r.ord, key: layout.packKey(r.owned), force: force}); err != nil {
					return err
				}
			}
		default:
			packed := event.PackRow(r.owned)
			h := event.RowHash(packed)
			if !r.outside {
				if err := out.Add(r.ord, layout.packKey(r.owned), h); err != nil {
					return err
				}
			}
			switch {
			case !inList:
				err = fn(mergeEvent{kind: evInsert, ord: r.ord, owned: r.owned, force: force})
			case force || !bytes.Equal(cur.hash, h):
				err = fn(mergeEvent{kind: evUpdate, ord: r.ord, owned: r.owned, force: force})
			}
			if err != nil {
				return err
			}
		}
		if inList {
			if err := advance(); err != nil {
				return err
			}
		}
	}
	return gone(nil)
}
