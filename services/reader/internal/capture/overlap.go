package capture

import (
	"bytes"
	"encoding/binary"
	"math"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
)

// overlap is the state of watermark_cdc: what was emitted for the records
// whose watermark lies in the overlap zone, which every poll reads again.
// A row read again is emitted only if its state differs from what was
// emitted for its key, so the re-reads never produce a no-op update.
//
// Table rows are remembered by key (a table has one row per key): the hash
// of the state emitted, or a tombstone once a delete was emitted (by the
// soft-delete column or the delete feed). Delete-feed rows are events, not
// states: one key may be deleted, re-inserted and deleted again, so each is
// remembered by (key, pointer value).
//
// Entries carry the watermark (seconds since 1970) of the row they were
// last seen at, and are dropped once it falls below the start of the next
// read (prune): the state holds only the keys inside the overlap zone.
type overlap struct {
	rows    map[string]overlapEntry // packed key
	dels    map[string]float64      // packed key + 0x00 + pointer text → epoch
	changed bool
}

type overlapEntry struct {
	hash  []byte // nil: a delete was emitted
	epoch float64
}

func newOverlap() *overlap {
	return &overlap{rows: map[string]overlapEntry{}, dels: map[string]float64{}}
}

// row decides for a table row (hash nil: the row is marked deleted)
// whether it must be emitted, and remembers it.
func (o *overlap) row(key, hash []byte, epoch float64) bool {
	e, ok := o.rows[string(key)]
	if ok && bytes.Equal(e.hash, hash) && (e.hash == nil) == (hash == nil) {
		if epoch > e.epoch {
			e.epoch = epoch
			o.rows[string(key)] = e
			o.changed = true
		}
		return false
	}
	o.rows[string(key)] = overlapEntry{hash: hash, epoch: epoch}
	o.changed = true
	return true
}

// deleted decides for a delete-feed row whether it must be emitted, and
// remembers it; the key's row state becomes a tombstone.
func (o *overlap) deleted(key []byte, mark string, epoch float64) bool {
	id := string(key) + "\x00" + mark
	if _, ok := o.dels[id]; ok {
		return false
	}
	o.dels[id] = epoch
	o.rows[string(key)] = overlapEntry{epoch: epoch}
	o.changed = true
	return true
}

// prune drops the entries last seen below epoch.
func (o *overlap) prune(epoch float64) {
	for k, e := range o.rows {
		if e.epoch < epoch {
			delete(o.rows, k)
			o.changed = true
		}
	}
	for k, e := range o.dels {
		if e < epoch {
			delete(o.dels, k)
			o.changed = true
		}
	}
}

func (o *overlap) size() int { return len(o.rows) + len(o.dels) }

// Encoding: magic, then entries: kind byte (1 row, 2 row tombstone, 3
// delete), uvarint len(id), id, [hash], float64 bits.
const overlapMagic = "oneway overlap v1\n"

func (o *overlap) marshal() []byte {
	b := []byte(overlapMagic)
	for k, e := range o.rows {
		kind := byte(1)
		if e.hash == nil {
			kind = 2
		}
		b = append(b, kind)
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		if kind == 1 {
			b = append(b, e.hash...)
		}
		b = binary.BigEndian.AppendUint64(b, math.Float64bits(e.epoch))
	}
	for k, ep := range o.dels {
		b = append(b, 3)
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.BigEndian.AppendUint64(b, math.Float64bits(ep))
	}
	return b
}

func unmarshalOverlap(b []byte) (*overlap, error) {
	o := newOverlap()
	if !bytes.HasPrefix(b, []byte(overlapMagic)) {
		return nil, errs.Permanentf("overlap state: bad header")
	}
	b = b[len(overlapMagic):]
	bad := errs.Permanentf("overlap state is corrupt")
	for len(b) > 0 {
		kind := b[0]
		n, k := binary.Uvarint(b[1:])
		if k <= 0 || uint64(len(b)-1-k) < n {
			return nil, bad
		}
		b = b[1+k:]
		id := string(b[:n])
		b = b[n:]
		var hash []byte
		if kind == 1 {
			if len(b) < event.HashSize {
				return nil, bad
			}
			hash = append([]byte{}, b[:event.HashSize]...)
			b = b[event.HashSize:]
		}
		if len(b) < 8 {
			return nil, bad
		}
		ep := math.Float64frombits(binary.BigEndian.Uint64(b))
		b = b[8:]
		switch kind {
		case 1, 2:
			o.rows[id] = overlapEntry{hash: hash, epoch: ep}
		case 3:
			o.dels[id] = ep
		default:
			return nil, bad
		}
	}
	return o, nil
}
