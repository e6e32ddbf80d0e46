package capture

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/retry"
	"github.com/oneway-sync/oneway/shared/source"
)

// Cycle is the synthetic pattern (Window zero) and the window pattern.
//
// Each cycle reads the table (or the window) in order-key order in one
// query and merges it with the previous cycle's hash list: a key the list
// lacks is an insert, a key whose hash changed an update, a key of the
// list that was not read a delete (window: a key that is still in the
// source but left the window is dropped from the list, and its state is
// sent if it changed). Unchanged records emit nothing. The new list is
// written to a temporary file as the cycle goes, and replaces the stored
// one (Store, object ObjectName) only once every change of the cycle was
// acknowledged.
//
// Crash safety. The stored list always describes what the targets were
// sent up to the end of some cycle; changes published after it are in the
// stream. When a cycle is interrupted (crash, failover, a read error) it
// starts over, and for every key up to the largest order key it may have
// published before (Position.Dirty, taken from the position and from the
// tag of the last batch on the subject) it emits the current state
// whatever the hashes say. Without that, a key changed (and published)
// and then changed back before the restart would compare equal to the old
// list and its last state would never be sent. It also merges with the
// keys the interrupted attempts inserted (published.go: recorded by this
// process, read back from the stream after a restart): the stored list
// lacks them (in a first cycle there is no list at all), so one deleted
// before the restart would otherwise never be deleted. Duplicates are
// absorbed by the writers' ledger, which skips a change whose hash it
// already applied.
type Cycle struct {
	Source     Source
	Layout     Layout
	Store      *Store
	ObjectName string
	// Window, when > 0, restricts each cycle to rows whose window column is
	// at or after now() minus Window.
	Window    time.Duration
	BatchSize int
	Interval  time.Duration
	Lookback  time.Duration
	// TempDir holds the hash list files; "" is the system's.
	TempDir string
	Log     *slog.Logger
	Retry   retry.Policy
	// Published reads back what the reader published, for a cycle that
	// resumes after a restart (nil: not read back, and the keys inserted
	// before the restart and deleted meanwhile are not deleted).
	Published Published
	// Reported, for a target's read-back in staged mode, reads the
	// writers' applied reports on the target (see reported.go); nil for a
	// source.
	Reported Published

	// reportKeys, when > 0, replaces the package's bound on the reported
	// keys one cycle merges (tests).
	reportKeys int

	// Of the last cycle attempt.
	lastBound   string
	lastRows    int
	lastChanges int
}

var _ Capture = (*Cycle)(nil)

func (c *Cycle) pattern() onewayv1.CapturePattern {
	if c.Window > 0 {
		return onewayv1.CapturePattern_CAPTURE_PATTERN_WINDOW
	}
	return onewayv1.CapturePattern_CAPTURE_PATTERN_SYNTHETIC
}

// Run implements Capture.
func (c *Cycle) Run(ctx context.Context, pos Position, last *onewayv1.Batch, emit func(Page) error) error {
	if pos.Phase != PhaseCycle || pos.Lineage == "" || pos.Cycle == 0 {
		return errs.Permanentf("cycle capture started at a position of phase %q (lineage %q, cycle %d)", pos.Phase, pos.Lineage, pos.Cycle)
	}
	dir, err := os.MkdirTemp(c.TempDir, "oneway-hashes-")
	if err != nil {
		return fmt.Errorf("hash list directory: %w", err)
	}
	defer os.RemoveAll(dir)

	// The list of the last completed cycle, if the store has one of this
	// lineage.
	prev := filepath.Join(dir, "prev")
	hasPrev := true
	err = retry.Do(ctx, c.Retry, func(ctx context.Context) error {
		err := c.Store.GetFile(ctx, c.ObjectName, pos.Lineage, prev)
		if errors.Is(err, errNoList) {
			hasPrev = false
			return nil
		}
		return err
	})
	if err != nil {
		return err
	}

	// What may have been published past the saved position.
	dirty := maxOrd(pos.Dirty, lastTag(last, pos.Lineage, pos.Cycle))
	// What the attempts of the current cycle inserted.
	pub := &runs{dir: dir}
	defer pub.reset()
	// What the writers reported applied since the last cycle's read began.
	repDir := filepath.Join(dir, "reported")
	if err := os.Mkdir(repDir, 0o700); err != nil {
		return fmt.Errorf("hash list directory: %w", err)
	}
	rep := &runs{dir: repDir}
	defer rep.reset()
	if dirty != nil && c.Published != nil {
		if err := c.readPublished(ctx, pos.Lineage, pos.Cycle, pub); err != nil {
			return fmt.Errorf("read back what cycle %d published: %w", pos.Cycle, err)
		}
		dirty = maxOrd(dirty, pub.hi)
	}
	for n := 0; ; n++ {
		next := filepath.Join(dir, "next-"+strconv.Itoa(n))
		started := time.Now()
		var lastSent []byte
		var reported uint64
		err := retry.Do(ctx, c.Retry, func(ctx context.Context) error {
			dirty = maxOrd(dirty, maxOrd(lastSent, pub.hi))
			if !bytes.Equal(dirty, pos.Dirty) {
				// Save the dirty bound before publishing anything past it.
				pos.Dirty = dirty
				if err := emit(Page{Next: pos, Save: true}); err != nil {
					return err
				}
			}
			rep.reset()
			reported = pos.Reported
			if c.Reported != nil {
				var err error
				if reported, err = c.readReported(ctx, pos.Reported, rep); err != nil {
					return fmt.Errorf("read the applied reports: %w", err)
				}
			}
			var err error
			lastSent, err = c.cycle(ctx, pos, hasPrev, prev, pub, rep, next, emit)
			return err
		})
		if err != nil {
			return err
		}
		// The cycle is complete: its list replaces the stored one once
		// everything it sent is acknowledged.
		bound := c.lastBound
		done := make(chan struct{})
		cycle := pos.Cycle
		lineage := pos.Lineage
		nextPos := pos
		nextPos.Cycle, nextPos.Dirty, nextPos.DoneBound, nextPos.Reported = pos.Cycle+1, nil, bound, reported
		commit := func(ctx context.Context) error {
			if err := c.Store.PutFile(ctx, c.ObjectName, lineage, cycle, next); err != nil {
				return err
			}
			select {
			case <-done:
			default:
				close(done)
			}
			return nil
		}
		if err := emit(Page{Next: nextPos, Commit: commit, Save: true, CaughtUp: true}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-done:
		}
		// From the start of the read until every change is acknowledged
		// and the list stored. Quiet cycles log at debug.
		level := slog.LevelDebug
		if c.lastChanges > 0 {
			level = slog.LevelInfo
		}
		c.Log.Log(ctx, level, "cycle done", "cycle", cycle, "rows", c.lastRows, "changes", c.lastChanges,
			"seconds", time.Since(started).Seconds())
		if hasPrev {
			os.Remove(prev)
		}
		if err := os.Rename(next, prev); err != nil {
			return fmt.Errorf("keep hash list: %w", err)
		}
		hasPrev = true
		pub.reset()
		rep.reset()
		pos, dirty = nextPos, nil
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(c.Interval):
		}
	}
}

// cycle runs one attempt of a cycle: it reads the source, merges it with
// prev, with what the earlier attempts published (pub) and with the keys
// the writers reported applied (rep), writes next and emits the changes,
// recording what it inserts in pub. It returns the largest order key it
// sent (nil if none), also on error.
func (c *Cycle) cycle(ctx context.Context, pos Position, hasPrev bool, prev string, pub, rep *runs, next string, emit func(Page) error) (lastSent []byte, err error) {
	c.lastRows, c.lastChanges = 0, 0
	lookback := c.Lookback.Seconds()
	// The time bound before the read: every change this cycle does not see
	// has a watermark at or after it (see Position.DoneBound).
	if c.lastBound, err = c.Source.SafeBound(ctx, lookback); err != nil {
		return nil, err
	}
	from := ""
	if c.Window > 0 {
		if from, err = c.Source.WindowStart(ctx, c.Window.Seconds()); err != nil {
			return nil, err
		}
	}
	var old entryIter
	if hasPrev {
		lr, err := openList(prev)
		if err != nil {
			return nil, err
		}
		defer lr.Close()
		old = lr
	}
	// This attempt's own batches go to a new run, after the ones it reads.
	if err := pub.end(); err != nil {
		return nil, err
	}
	published, err := openPubSet(append(slices.Clone(pub.paths), rep.paths...))
	if err != nil {
		return nil, err
	}
	defer published.Close()
	defer func() {
		if perr := pub.end(); err == nil {
			err = perr
		}
	}()
	out, err := createList(next)
	if err != nil {
		return nil, err
	}
	closed := false
	defer func() {
		if !closed {
			out.Abort()
		}
	}()
	// A window cycle without a list reads the whole table once, so the
	// targets get the rows outside the window too.
	scan, err := c.Source.Scan(ctx, source.ScanOptions{WindowFrom: from, Whole: !hasPrev})
	if err != nil {
		return nil, err
	}
	defer scan.Close()
	rows := &pgRows{src: c.Source, scan: scan, count: &c.lastRows}

	pattern := c.pattern()
	if !hasPrev {
		// Without a list every row is sent, as by a snapshot: writers may
		// then load new keys by COPY.
		pattern = onewayv1.CapturePattern_CAPTURE_PATTERN_SNAPSHOT
	}
	tag := func(ord []byte) string { return cycleTag(pos.Lineage, pos.Cycle, ord) }
	var page []mergeEvent
	flush := func() error {
		if len(page) == 0 {
			return nil
		}
		changes, ords, err := c.changes(ctx, page, hasPrev)
		if err != nil {
			return err
		}
		// The keys this page inserts (sent as insert or upsert).
		var keys [][]byte
		for _, ev := range page {
			if ev.kind == evInsert {
				keys = append(keys, c.Layout.packKey(ev.owned))
			}
		}
		page = page[:0]
		if len(changes) == 0 {
			return nil
		}
		c.lastChanges += len(changes)
		// Recorded before it is emitted: a later attempt of the cycle
		// merges with it whether or not it was published.
		if err := pub.add(ords[0], ords[len(ords)-1], keys); err != nil {
			return err
		}
		err = c.Layout.send(pattern, changes, func(int) Position { return pos },
			func(i int) string { return tag(ords[i]) }, emit)
		if err != nil {
			return err
		}
		lastSent = ords[len(ords)-1]
		return nil
	}
	var lastOrd []byte
	err = merge(rows, old, published, pos.Dirty, out, &c.Layout, func(ev mergeEvent) error {
		if bytes.Equal(ev.ord, reportHi) {
			// A reported key gone (they come last): it takes the largest
			// order key found so far, which then bounds what was sent.
			ev.ord = maxOrd(lastOrd, rows.last)
			if ev.ord == nil {
				ev.ord = []byte{}
			}
		}
		lastOrd = ev.ord
		page = append(page, ev)
		if len(page) >= c.BatchSize {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return lastSent, err
	}
	closed = true
	return lastSent, out.Close()
}

// changes turns a page of findings into changes (and their order keys).
// For the window pattern a key that was not read is looked up: still in
// the source means it left the window (its state is sent if it changed;
// it leaves the list either way), absent (or marked deleted) means it was
// deleted.
func (c *Cycle) changes(ctx context.Context, page []mergeEvent, hasPrev bool) ([]*onewayv1.Change, [][]byte, error) {
	found := map[string]source.Row{}
	if c.Window > 0 {
		var keys [][]string
		var vals [][]byte
		for _, ev := range page {
			if ev.kind != evGone {
				continue
			}
			var err error
			if vals, err = event.Row(ev.key, vals[:0]); err != nil {
				return nil, nil, err
			}
			k := make([]string, len(vals))
			for i, v := range vals {
				k[i] = string(v)
			}
			keys = append(keys, k)
		}
		if len(keys) > 0 {
			var rows []source.Row
			err := retry.Do(ctx, c.Retry, func(ctx context.Context) (err error) {
				rows, err = c.Source.Lookup(ctx, keys)
				return err
			})
			if err != nil {
				return nil, nil, err
			}
			for _, r := range rows {
				found[string(c.Layout.packKey(c.Source.Owned(r)))] = r
			}
		}
	}
	now := nowNano()
	changes := make([]*onewayv1.Change, 0, len(page))
	ords := make([][]byte, 0, len(page))
	add := func(ch *onewayv1.Change, ord []byte) {
		changes = append(changes, ch)
		ords = append(ords, ord)
	}
	for _, ev := range page {
		switch ev.kind {
		case evInsert:
			op := onewayv1.Op_OP_INSERT
			if !hasPrev {
				op = onewayv1.Op_OP_UPSERT
			}
			add(rowChange(op, ev.owned, now), ev.ord)
		case evUpdate:
			add(rowChange(onewayv1.Op_OP_UPDATE, ev.owned, now), ev.ord)
		case evDelete:
			add(c.Layout.deleteChange(mustRow(ev.key), now), ev.ord)
		case evGone:
			r, ok := found[string(ev.key)]
			if !ok || c.Source.IsDeleted(r) {
				add(c.Layout.deleteChange(mustRow(ev.key), now), ev.ord)
				continue
			}
			// Left the window: send its state if it changed since.
			ch := rowChange(onewayv1.Op_OP_UPDATE, c.Source.Owned(r), now)
			if ev.force || !bytes.Equal(ch.GetHash(), ev.hash) {
				add(ch, ev.ord)
			}
		}
	}
	return changes, ords, nil
}

func mustRow(packed []byte) [][]byte {
	vals, err := event.Row(packed, nil)
	if err != nil {
		panic(err) // written by this package
	}
	return vals
}

// pgRows adapts a scan to the merge, checking that the order keys
// strictly increase (two rows with one order key would break the merge).
type pgRows struct {
	src   Source
	scan  source.Scan
	last  []byte
	count *int
}

func (p *pgRows) next() (scanRow, bool, error) {
	r, ok := p.scan.Next()
	if !ok {
		return scanRow{}, false, p.scan.Err()
	}
	ord, err := p.src.OrdKey(nil, r)
	if err != nil {
		return scanRow{}, false, err
	}
	if p.last != nil && bytes.Compare(ord, p.last) <= 0 {
		return scanRow{}, false, errs.Permanentf("source returned rows out of key order or a key twice (order key %x after %x)", ord, p.last)
	}
	p.last = ord
	*p.count++
	return scanRow{ord: ord, owned: p.src.Owned(r), deleted: p.src.IsDeleted(r), outside: !p.scan.InWindow(r)}, true, nil
}

// cycleTag is the Position of the last change of a cycle's batch: the
// cycle and the order key of that change, so that a restarted cycle knows
// how far it may have published (lastTag).
func cycleTag(lineage string, cycle uint64, ord []byte) string {
	return "cycle/" + lineage + "/" + strconv.FormatUint(cycle, 10) + "/" + base64.RawURLEncoding.EncodeToString(ord)
}

// lastTag returns the order key in the tag of the last batch when that
// batch belongs to the given cycle, else nil.
func lastTag(b *onewayv1.Batch, lineage string, cycle uint64) []byte {
	if b == nil || len(b.GetChanges()) == 0 {
		return nil
	}
	ord, _ := parseTag(b.GetChanges()[len(b.GetChanges())-1].GetPosition(), lineage, cycle)
	return ord
}

// parseTag returns the order key of a cycleTag of the given cycle; ok is
// false for a tag of another cycle or lineage, or no tag.
func parseTag(tag, lineage string, cycle uint64) (ord []byte, ok bool) {
	parts := strings.SplitN(tag, "/", 4)
	if len(parts) != 4 || parts[0] != "cycle" || parts[1] != lineage || parts[2] != strconv.FormatUint(cycle, 10) {
		return nil, false
	}
	ord, err := base64.RawURLEncoding.DecodeString(parts[3])
	if err != nil || len(ord) == 0 {
		return nil, false
	}
	return ord, true
}

func maxOrd(a, b []byte) []byte {
	if bytes.Compare(a, b) >= 0 {
		return a
	}
	return b
}
