// Package storekit holds what every stage.Store implementation does the
// same way outside its database: checking and collapsing the input of
// Apply, packing key parts, and merging two sides into pairs.
package storekit

import (
	"fmt"
	"slices"
	"strings"

	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/stage"
)

// Prepare validates recs and returns normalised copies (the caller's
// records are not modified), one per key, the highest version of each,
// sorted by key text (a stable lock order across concurrent writers).
// dropped counts the other records of repeated keys.
func Prepare(recs []stage.Record) (kept []stage.Record, dropped int, err error) {
	kept = make([]stage.Record, 0, len(recs))
	for i := range recs {
		r := recs[i]
		if err := r.Validate(); err != nil {
			return nil, 0, fmt.Errorf("record %d: %w", i, err)
		}
		r.Normalize()
		kept = append(kept, r)
	}
	// Sort by key, highest version first, then keep the first of each key.
	slices.SortStableFunc(kept, func(a, b stage.Record) int {
		if c := strings.Compare(a.Key.Text, b.Key.Text); c != 0 {
			return c
		}
		switch {
		case a.Version > b.Version:
			return -1
		case a.Version < b.Version:
			return 1
		}
		return 0
	})
	out := kept[:0]
	for i, r := range kept {
		if i > 0 && r.Key.Text == kept[i-1].Key.Text {
			dropped++
			continue
		}
		out = append(out, r)
	}
	return out, dropped, nil
}

// UniqueKeys returns the distinct keys, sorted.
func UniqueKeys(keys []string) []string {
	out := slices.Clone(keys)
	slices.Sort(out)
	return slices.Compact(out)
}

// PackParts packs key parts as a row of non-NULL values (event.PackRow).
func PackParts(parts []string) []byte {
	var b []byte
	for _, p := range parts {
		b = event.AppendString(b, p)
	}
	return b
}

// UnpackParts is the inverse of PackParts.
func UnpackParts(b []byte) ([]string, error) {
	vals, err := event.Row(b, nil)
	if err != nil {
		return nil, errs.Permanentf("stored key parts: %w", err)
	}
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = string(v)
	}
	return parts, nil
}

// Page merges one page of each side into pairs, in key order. src and tgt
// are each sorted by key and were each read with limit; a side that
// returned limit records may have more after its last key, so the pairs
// stop at the smaller last key of a full side, and at limit pairs. When at
// least one side is full the result has limit pairs.
func Page(src, tgt []stage.Record, limit int) []stage.Pair {
	bound, bounded := "", false
	for _, side := range [][]stage.Record{src, tgt} {
		if len(side) >= limit && len(side) > 0 {
			last := side[len(side)-1].Key.Text
			if !bounded || last < bound {
				bound, bounded = last, true
			}
		}
	}
	pairs := make([]stage.Pair, 0, min(limit, len(src)+len(tgt)))
	i, j := 0, 0
	for len(pairs) < limit && (i < len(src) || j < len(tgt)) {
		var p stage.Pair
		switch {
		case j == len(tgt) || (i < len(src) && src[i].Key.Text < tgt[j].Key.Text):
			p = stage.Pair{Key: src[i].Key, Source: &src[i]}
			i++
		case i == len(src) || tgt[j].Key.Text < src[i].Key.Text:
			p = stage.Pair{Key: tgt[j].Key, Target: &tgt[j]}
			j++
		default:
			p = stage.Pair{Key: src[i].Key, Source: &src[i], Target: &tgt[j]}
			i++
			j++
		}
		if bounded && p.Key.Text > bound {
			break
		}
		pairs = append(pairs, p)
	}
	return pairs
}

// Join pairs the records found for keys (sorted, distinct) on each side.
func Join(keys []string, src, tgt map[string]*stage.Record) []stage.Pair {
	pairs := make([]stage.Pair, len(keys))
	for i, k := range keys {
		p := stage.Pair{Key: stage.Key{Text: k}, Source: src[k], Target: tgt[k]}
		switch {
		case p.Source != nil:
			p.Key = p.Source.Key
		case p.Target != nil:
			p.Key = p.Target.Key
		}
		pairs[i] = p
	}
	return pairs
}

// CheckPushes validates the input of RecordPushes: keys present and
// distinct, versions and positions ≥ 0.
func CheckPushes(pushes []stage.Push) error {
	seen := make(map[string]bool, len(pushes))
	for i, p := range pushes {
		switch {
		case p.Key == "":
			return errs.Permanentf("push %d has no key", i)
		case p.Version < 0:
			return errs.Permanentf("push %d of key %s has a negative version %d", i, p.Key, p.Version)
		case p.Position < 0:
			return errs.Permanentf("push %d of key %s has a negative position %d", i, p.Key, p.Position)
		case seen[p.Key]:
			return errs.Permanentf("push %d repeats key %s", i, p.Key)
		}
		seen[p.Key] = true
	}
	return nil
}

// CheckPage validates the paging arguments of Scan and Stuck.
func CheckPage(limit int) error {
	if limit < 1 {
		return errs.Permanentf("page limit %d: want at least 1", limit)
	}
	return nil
}
