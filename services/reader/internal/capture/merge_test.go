package capture

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/event"
)

// ---- hash list ---------------------------------------------------------------

func ordOf(k int) []byte { return binary.BigEndian.AppendUint64(nil, uint64(k)^(1<<63)) }

func hashOf(s string) []byte { return event.RowHash([]byte(s)) }

func TestHashListRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l")
	w, err := createList(path)
	if err != nil {
		t.Fatal(err)
	}
	keys := []int{-5, 0, 3, 1 << 40}
	for _, k := range keys {
		if err := w.Add(ordOf(k), event.PackRow([][]byte{[]byte(fmt.Sprint(k))}), hashOf(fmt.Sprint(k))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Add(ordOf(3), nil, hashOf("x")); err == nil {
		t.Fatal("an entry out of order was accepted")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := openList(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, k := range keys {
		e, ok, err := r.Next()
		if err != nil || !ok {
			t.Fatalf("entry %d: ok=%v err=%v", k, ok, err)
		}
		vals, _ := event.Row(e.key, nil)
		if string(e.ord) != string(ordOf(k)) || string(vals[0]) != fmt.Sprint(k) || string(e.hash) != string(hashOf(fmt.Sprint(k))) {
			t.Fatalf("entry %d read back wrong: %+v", k, e)
		}
	}
	if _, ok, err := r.Next(); ok || err != nil {
		t.Fatalf("after the last entry: ok=%v err=%v", ok, err)
	}

	// A file cut anywhere before its trailer is refused, never read as a
	// shorter list.
	data, _ := os.ReadFile(path)
	for cut := len(listMagic); cut < len(data)-1; cut += 7 {
		p := filepath.Join(dir, fmt.Sprintf("cut%d", cut))
		_ = os.WriteFile(p, data[:cut], 0o600)
		r, err := openList(p)
		if err != nil {
			continue
		}
		var last error
		for {
			_, ok, err := r.Next()
			if err != nil || !ok {
				last = err
				break
			}
		}
		r.Close()
		if last == nil {
			t.Fatalf("a list cut at byte %d of %d read without error", cut, len(data))
		}
	}
}

// ---- merge ---------------------------------------------------------------------

// fakeRows are this cycle's rows, "k=v" (v "-" for a row marked deleted,
// a leading "~" for a row outside the window).
type fakeRows struct{ rows []string }

func (f *fakeRows) next() (scanRow, bool, error) {
	if len(f.rows) == 0 {
		return scanRow{}, false, nil
	}
	s := f.rows[0]
	f.rows = f.rows[1:]
	outside := strings.HasPrefix(s, "~")
	s = strings.TrimPrefix(s, "~")
	k, v, _ := strings.Cut(s, "=")
	var n int
	fmt.Sscan(k, &n)
	r := scanRow{ord: ordOf(n), owned: [][]byte{[]byte(k), []byte(v)}, outside: outside}
	if v == "-" {
		r.deleted, r.owned[1] = true, nil
	}
	return r, true, nil
}

// list writes a hash list of "k=v" entries and opens it.
func list(t *testing.T, entries ...string) *listReader {
	t.Helper()
	path := filepath.Join(t.TempDir(), "old")
	w, err := createList(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		k, v, _ := strings.Cut(e, "=")
		var n int
		fmt.Sscan(k, &n)
		if err := w.Add(ordOf(n), event.PackRow([][]byte{[]byte(k)}), event.RowHash(event.PackRow([][]byte{[]byte(k), []byte(v)}))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := openList(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestMerge(t *testing.T) {
	layout := &Layout{Columns: []*onewayv1.Column{{Name: "id", Key: true}, {Name: "v"}}, KeyIdx: []int{0}}
	tests := []struct {
		name  string
		old   []string // nil: no list
		rows  []string
		dirty int // 0: none
		// pub is what earlier attempts published: runs of batches
		// "lo-hi:k,k" (the order keys of the batch's ends, its inserted
		// keys).
		pub  [][]string
		want string
		list string // keys of the new list
	}{
		{name: "no list: every row is new", old: nil, rows: []string{"1=a", "2=b"},
			want: "insert 1, insert 2", list: "1 2"},
		{name: "nothing changed: nothing emitted", old: []string{"1=a", "2=b", "3=c"}, rows: []string{"1=a", "2=b", "3=c"},
			want: "", list: "1 2 3"},
		{name: "insert, update, delete", old: []string{"1=a", "3=c", "5=e"}, rows: []string{"1=a", "2=b", "3=C", "6=f"},
			want: "insert 2, update 3, gone 5, insert 6", list: "1 2 3 6"},
		{name: "deletes at both ends and in a row", old: []string{"1=a", "2=b", "3=c", "4=d", "9=z"}, rows: []string{"3=c"},
			want: "gone 1, gone 2, gone 4, gone 9", list: "3"},
		{name: "empty source", old: []string{"1=a"}, rows: nil, want: "gone 1", list: ""},
		{name: "a row marked deleted is a delete, and leaves the list", old: []string{"1=a", "2=b"}, rows: []string{"1=-", "2=b", "3=-"},
			want: "delete 1", list: "2"},
		{name: "dirty range: everything up to it is emitted", old: []string{"1=a", "2=b", "3=c", "5=e", "7=g"}, rows: []string{"1=a", "2=b", "4=d", "5=-", "6=-", "7=g", "8=h"},
			// 6 is marked deleted but above the dirty bound and not listed:
			// nothing to emit. 7 is unchanged.
			dirty: 5, want: "update! 1, update! 2, gone! 3, insert! 4, delete! 5, insert 8",
			list: "1 2 4 7 8"},
		{name: "rows outside the window are sent but not listed", old: nil, rows: []string{"1=a", "~2=b", "3=c"},
			want: "insert 1, insert 2, insert 3", list: "1 3"},
		{name: "no list, published keys not read are gone once the read passed their batch",
			rows: []string{"1=a", "3=c", "5=e", "7=g", "8=h"}, dirty: 6,
			pub:  [][]string{{"1-3:1,2,3", "4-6:4,5,6"}},
			want: "insert! 1, insert! 3, gone! 2, insert! 5, gone! 4, gone! 6, insert 7, insert 8", list: "1 3 5 7 8"},
		{name: "overlapping runs beside a list",
			old: []string{"1=a", "2=b", "5=e"}, rows: []string{"1=a", "3=c", "5=e", "8=h"}, dirty: 7,
			pub:  [][]string{{"3-4:3,4"}, {"3-3:3", "4-7:7"}},
			want: "update! 1, gone! 2, insert! 3, gone! 4, update! 5, gone! 7, insert 8", list: "1 3 5 8"},
		{name: "published keys past the last row", rows: []string{"1=a"}, dirty: 2,
			pub:  [][]string{{"1-2:1,2"}},
			want: "insert! 1, gone! 2", list: "1"},
		{name: "batches of a run sharing an end", rows: []string{"1=a", "3=c", "4=d"}, dirty: 5,
			pub:  [][]string{{"1-3:1,3", "3-5:5"}},
			want: "insert! 1, insert! 3, insert! 4, gone! 5", list: "1 3 4"},
		{name: "a published key marked deleted is a delete", rows: []string{"1=-", "2=b"}, dirty: 2,
			pub:  [][]string{{"1-2:1,2"}},
			want: "delete! 1, insert! 2", list: "2"},
		{name: "a batch the read skipped entirely", old: []string{"9=z"}, rows: []string{"1=a", "9=z"}, dirty: 6,
			pub:  [][]string{{"1-1:1", "2-3:2,3", "5-6:5"}},
			want: "insert! 1, gone! 2, gone! 3, gone! 5", list: "1 9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var old entryIter
			if tt.old != nil {
				old = list(t, tt.old...)
			}
			var dirty []byte
			if tt.dirty != 0 {
				dirty = ordOf(tt.dirty)
			}
			outPath := filepath.Join(t.TempDir(), "new")
			out, err := createList(outPath)
			if err != nil {
				t.Fatal(err)
			}
			pub := pubRuns(t, layout, tt.pub)
			defer pub.Close()
			var got []string
			var lastOrd []byte
			err = merge(&fakeRows{rows: tt.rows}, old, pub, dirty, out, layout, func(ev mergeEvent) error {
				if bytes.Compare(ev.ord, lastOrd) < 0 {
					t.Errorf("finding at ord %x after %x", ev.ord, lastOrd)
				}
				lastOrd = ev.ord
				name := map[evKind]string{evInsert: "insert", evUpdate: "update", evDelete: "delete", evGone: "gone"}[ev.kind]
				if ev.force {
					name += "!"
				}
				var k []byte
				if ev.owned != nil {
					k = ev.owned[0]
				} else {
					vals, _ := event.Row(ev.key, nil)
					k = vals[0]
				}
				got = append(got, name+" "+string(k))
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := out.Close(); err != nil {
				t.Fatal(err)
			}
			if g := strings.Join(got, ", "); g != tt.want {
				t.Errorf("events:\n got: %s\nwant: %s", g, tt.want)
			}
			r, err := openList(outPath)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			var keys []string
			for {
				e, ok, err := r.Next()
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					break
				}
				vals, _ := event.Row(e.key, nil)
				keys = append(keys, string(vals[0]))
			}
			if g := strings.Join(keys, " "); g != tt.list {
				t.Errorf("new list: got %q, want %q", g, tt.list)
			}
		})
	}
}

// pubRuns writes runs of "lo-hi:k,k" batches and opens them (nil: none).
func pubRuns(t *testing.T, layout *Layout, batches [][]string) *pubSet {
	t.Helper()
	if batches == nil {
		return nil
	}
	rs := &runs{dir: t.TempDir()}
	for _, run := range batches {
		if err := rs.end(); err != nil {
			t.Fatal(err)
		}
		for _, b := range run {
			var lo, hi int
			span, ks, _ := strings.Cut(b, ":")
			fmt.Sscanf(span, "%d-%d", &lo, &hi)
			var keys [][]byte
			for _, k := range strings.Split(ks, ",") {
				keys = append(keys, layout.packKey([][]byte{[]byte(k), nil}))
			}
			if err := rs.add(ordOf(lo), ordOf(hi), keys); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := rs.end(); err != nil {
		t.Fatal(err)
	}
	s, err := openPubSet(rs.paths)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ---- overlap -------------------------------------------------------------------

func TestOverlap(t *testing.T) {
	o := newOverlap()
	k1, k2 := []byte("k1"), []byte("k2")
	h1, h2 := hashOf("1"), hashOf("2")
	steps := []struct {
		name string
		do   func() bool
		want bool
	}{
		{"first sight is emitted", func() bool { return o.row(k1, h1, 10) }, true},
		{"read again: not emitted", func() bool { return o.row(k1, h1, 10) }, false},
		{"changed: emitted", func() bool { return o.row(k1, h2, 11) }, true},
		{"changed back: emitted", func() bool { return o.row(k1, h1, 12) }, true},
		{"marked deleted: emitted", func() bool { return o.row(k1, nil, 13) }, true},
		{"still deleted: not emitted", func() bool { return o.row(k1, nil, 13) }, false},
		{"re-inserted: emitted", func() bool { return o.row(k1, h1, 14) }, true},
		{"a delete event: emitted", func() bool { return o.deleted(k2, "t20", 20) }, true},
		{"the same delete read again: not emitted", func() bool { return o.deleted(k2, "t20", 20) }, false},
		{"re-inserted after the delete, same content as before it: emitted", func() bool { return o.row(k2, h2, 21) }, true},
		{"deleted again later: emitted", func() bool { return o.deleted(k2, "t22", 22) }, true},
		{"the first delete read again: still not emitted", func() bool { return o.deleted(k2, "t20", 20) }, false},
	}
	for _, s := range steps {
		if got := s.do(); got != s.want {
			t.Fatalf("%s: emitted=%v, want %v", s.name, got, s.want)
		}
	}
	back, err := unmarshalOverlap(o.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if back.row(k1, h1, 14) || back.deleted(k2, "t22", 22) || !back.row(k1, h2, 15) {
		t.Fatal("the state read back differs")
	}
	o.prune(21)
	if _, ok := o.dels["k2\x00t20"]; ok {
		t.Error("prune kept an entry below the bound")
	}
	if _, ok := o.dels["k2\x00t22"]; !ok {
		t.Error("prune dropped an entry above the bound")
	}
	if _, err := unmarshalOverlap([]byte(overlapMagic + "\x01\x05ab")); err == nil {
		t.Error("a truncated state was accepted")
	}
}

// ---- transition ------------------------------------------------------------------

func TestTransition(t *testing.T) {
	const src = "public.t(id)"
	wm := Position{Pattern: "watermark", Source: src, Column: "updated_at", Phase: PhaseWatermark, Watermark: "W", WatermarkKey: []string{"9"}}
	legacy := Position{Phase: PhaseWatermark, Watermark: "W", WatermarkKey: []string{"9"}}
	cycle := Position{Pattern: "synthetic", Source: src, Phase: PhaseCycle, Cycle: 7, Lineage: "L", DoneBound: "B"}
	cdcPos := Position{Pattern: "cdc", Source: src, Phase: PhaseStream, Slot: "s1", LSN: "0/16B3748"}
	tests := []struct {
		name  string
		pos   Position
		setup Setup
		check func(t *testing.T, p Position, note string)
		err   string
	}{
		{name: "fresh watermark", setup: Setup{Pattern: "watermark", Source: src, Column: "updated_at"},
			check: func(t *testing.T, p Position, note string) {
				expect(t, p.Phase == "" && p.Column == "updated_at" && note == "", p)
			}},
		{name: "fresh synthetic", setup: Setup{Pattern: "synthetic", Source: src},
			check: func(t *testing.T, p Position, _ string) {
				expect(t, p.Phase == PhaseCycle && p.Cycle == 1 && p.Lineage != "", p)
			}},
		{name: "same pattern: unchanged", pos: wm, setup: Setup{Pattern: "watermark", Source: src, Column: "updated_at"},
			check: func(t *testing.T, p Position, note string) { expect(t, equalPosition(p, wm) && note == "", p) }},
		{name: "a legacy position is watermark", pos: legacy, setup: Setup{Pattern: "watermark", Source: src, Column: "updated_at"},
			check: func(t *testing.T, p Position, note string) {
				expect(t, p.Watermark == "W" && slices.Equal(p.WatermarkKey, []string{"9"}) && note == "", p)
			}},
		{name: "watermark to watermark_cdc", pos: wm, setup: Setup{Pattern: "watermark_cdc", Source: src, Column: "updated_at"},
			check: func(t *testing.T, p Position, note string) {
				expect(t, p.Pattern == "watermark_cdc" && p.Watermark == "W" && p.Lineage != "" && note != "", p)
			}},
		{name: "watermark_cdc to watermark reads the watermark again", pos: Position{Pattern: "watermark_cdc", Source: src, Column: "c", Phase: PhaseWatermark, Watermark: "W", WatermarkKey: []string{"9"}, Lineage: "L"},
			setup: Setup{Pattern: "watermark", Source: src, Column: "c"},
			check: func(t *testing.T, p Position, _ string) {
				expect(t, p.Watermark == "W" && p.WatermarkKey == nil && p.Lineage == "", p)
			}},
		{name: "watermark to synthetic: no list", pos: wm, setup: Setup{Pattern: "synthetic", Source: src},
			check: func(t *testing.T, p Position, note string) {
				expect(t, p.Phase == PhaseCycle && p.Cycle == 1 && p.Lineage != "" && p.Watermark == "" && note != "", p)
			}},
		{name: "synthetic to window keeps the list", pos: cycle, setup: Setup{Pattern: "window", Source: src},
			check: func(t *testing.T, p Position, _ string) {
				expect(t, p.Lineage == "L" && p.Cycle == 7 && p.Pattern == "window", p)
			}},
		{name: "synthetic to watermark starts at the last cycle's bound", pos: cycle, setup: Setup{Pattern: "watermark", Source: src, Column: "u"},
			check: func(t *testing.T, p Position, _ string) {
				expect(t, p.Phase == PhaseWatermark && p.Watermark == "B" && p.WatermarkKey == nil && p.Column == "u", p)
			}},
		{name: "synthetic to watermark_cdc", pos: cycle, setup: Setup{Pattern: "watermark_cdc", Source: src, Column: "u"},
			check: func(t *testing.T, p Position, _ string) {
				expect(t, p.Phase == PhaseWatermark && p.Watermark == "B" && p.Lineage != "" && p.Lineage != "L", p)
			}},
		{name: "synthetic without a completed cycle to watermark: snapshot", pos: Position{Pattern: "synthetic", Source: src, Phase: PhaseCycle, Cycle: 1, Lineage: "L"},
			setup: Setup{Pattern: "watermark", Source: src, Column: "u"},
			check: func(t *testing.T, p Position, _ string) { expect(t, p.Phase == "", p) }},
		{name: "synthetic to a numeric watermark: snapshot", pos: cycle, setup: Setup{Pattern: "watermark", Source: src, Column: "seq", NumericWatermark: true},
			check: func(t *testing.T, p Position, _ string) { expect(t, p.Phase == "", p) }},
		{name: "another table", pos: wm, setup: Setup{Pattern: "watermark", Source: "public.u(id)", Column: "updated_at"}, err: "oneway resync"},
		{name: "another watermark column", pos: wm, setup: Setup{Pattern: "watermark", Source: src, Column: "changed_at"}, err: "watermark column changed"},
		{name: "an unknown pattern", pos: Position{Pattern: "magic", Source: src, Phase: "x"}, setup: Setup{Pattern: "watermark", Source: src, Column: "u"}, err: `pattern "magic"`},
		{name: "fresh cdc: a snapshot with the slot", setup: Setup{Pattern: "cdc", Source: src, Slot: "s1"},
			check: func(t *testing.T, p Position, note string) {
				expect(t, p.Pattern == "cdc" && p.Phase == PhaseSnapshot && p.Slot == "s1" && p.LSN == "" && note == "", p)
			}},
		{name: "cdc stays cdc", pos: cdcPos, setup: Setup{Pattern: "cdc", Source: src, Slot: "s1"},
			check: func(t *testing.T, p Position, note string) { expect(t, equalPosition(p, cdcPos) && note == "", p) }},
		{name: "watermark to cdc: a snapshot", pos: wm, setup: Setup{Pattern: "cdc", Source: src, Slot: "s1"},
			check: func(t *testing.T, p Position, note string) {
				expect(t, p.Pattern == "cdc" && p.Phase == PhaseSnapshot && p.Slot == "s1" && p.Watermark == "" && strings.Contains(note, "snapshot"), p)
			}},
		{name: "synthetic to cdc: a snapshot", pos: cycle, setup: Setup{Pattern: "cdc", Source: src, Slot: "s1"},
			check: func(t *testing.T, p Position, note string) {
				expect(t, p.Phase == PhaseSnapshot && p.Lineage == "" && p.Cycle == 0 && strings.Contains(note, "deleted"), p)
			}},
		{name: "cdc with another slot", pos: cdcPos, setup: Setup{Pattern: "cdc", Source: src, Slot: "s2"}, err: "slot changed from s1 to s2"},
		{name: "cdc to watermark: resync drops the slot first", pos: cdcPos, setup: Setup{Pattern: "watermark", Source: src, Column: "u"}, err: "run `oneway resync` first (it drops the slot)"},
		{name: "cdc to synthetic: resync first", pos: cdcPos, setup: Setup{Pattern: "synthetic", Source: src}, err: "replication slot s1"},
		{name: "cdc of another table", pos: cdcPos, setup: Setup{Pattern: "cdc", Source: "public.u(id)", Slot: "s1"}, err: "oneway resync"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, note, err := Transition(tt.pos, tt.setup)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, p, note)
		})
	}
}

func expect(t *testing.T, ok bool, p Position) {
	t.Helper()
	if !ok {
		t.Fatalf("unexpected position %+v", p)
	}
}

func TestLastTag(t *testing.T) {
	b := func(tag string) *onewayv1.Batch {
		return &onewayv1.Batch{Changes: []*onewayv1.Change{{}, {Position: tag}}}
	}
	ord := []byte{0x80, 0, 1}
	if tag := cycleTag("L", 4, ord); tag != "cycle/L/4/gAAB" {
		t.Errorf("tag %q", tag)
	}
	if got := lastTag(b("cycle/L/4/gAAB"), "L", 4); string(got) != string(ord) {
		t.Errorf("tag of cycle 4: %x", got)
	}
	for _, tag := range []string{"cycle/L/3/gAAB", "cycle/M/4/gAAB", "cycle/L/4", "", "watermark/L/4/gAAB", "cycle/L/4/!!"} {
		if got := lastTag(b(tag), "L", 4); got != nil {
			t.Errorf("tag %q read as %x", tag, got)
		}
	}
	if lastTag(nil, "L", 1) != nil {
		t.Error("nil batch")
	}
}
