// Package pgstage is the stage store in PostgreSQL (pgx/v5), for
// production and for stagers and differs in several processes.
//
// oneway creates and migrates its tables itself, in one schema (default
// oneway_stage) that several pipelines share: schema_migrations (the
// versions applied), scopes (one id per pipeline and side), records,
// pushes and holds. Open applies missing migrations in one transaction
// under an advisory lock, so processes may start at once.
//
// The version guard is INSERT … ON CONFLICT DO UPDATE … WHERE stored
// version < new version: PostgreSQL locks the conflicting row and checks
// the condition against its latest committed state, so concurrent Apply
// calls on one key serialise and the older version loses, whichever commits
// first. Each Apply writes its keys in key order, so two of them never wait
// on each other in a cycle.
package pgstage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/stage"
	"github.com/oneway-sync/oneway/shared/stage/internal/storekit"
)

// DefaultSchema is the schema of the stage tables when Config.Schema is
// empty.
const DefaultSchema = "oneway_stage"

// joinChunk bounds the keys sent in one Join query.
const joinChunk = 5000

// Config configures a Store.
type Config struct {
	// URL is the PostgreSQL connection URL. It may hold a password: it is
	// never logged nor put in an error.
	URL string
	// Schema holds the stage tables (default DefaultSchema); a valid
	// identifier, always quoted.
	Schema string
	// Pipeline is the pipeline this store serves.
	Pipeline string
	// MaxConns bounds the pool (default 4).
	MaxConns int32
}

// Store is the stage of one pipeline in PostgreSQL. Safe for concurrent use.
type Store struct {
	pool     *pgxpool.Pool
	schema   string
	pipeline string
	closed   atomic.Bool
	q        queries

	mu     sync.Mutex
	scopes map[stage.Side]int32
}

var _ stage.Store = (*Store)(nil)

// Open validates cfg, connects, and creates or migrates the schema. An
// unreachable server fails with an errs.Unavailable error; a bad config
// with an errs.Permanent one.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Schema == "" {
		cfg.Schema = DefaultSchema
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 4
	}
	if err := config.ValidIdentifier(cfg.Schema); err != nil {
		return nil, errs.Permanentf("stage schema: %w", err)
	}
	if err := config.ValidName(cfg.Pipeline); err != nil {
		return nil, errs.Permanentf("stage pipeline: %w", err)
	}
	pool, err := pgconn.Open(ctx, cfg.URL, "oneway stage "+cfg.Pipeline, cfg.MaxConns)
	if err != nil {
		return nil, err
	}
	return open(ctx, pool, cfg, len(migrations))
}

func open(ctx context.Context, pool *pgxpool.Pool, cfg Config, upTo int) (*Store, error) {
	if err := migrate(ctx, pool, cfg.Schema, upTo); err != nil {
		pool.Close()
		return nil, pgconn.Classify(fmt.Errorf("stage schema %s: %w", cfg.Schema, err))
	}
	return &Store{
		pool:     pool,
		schema:   cfg.Schema,
		pipeline: cfg.Pipeline,
		q:        newQueries(pgconn.Quote(cfg.Schema)),
		scopes:   map[stage.Side]int32{},
	}, nil
}

// Close closes the pool. Idempotent.
func (s *Store) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		s.pool.Close()
	}
	return nil
}

// queries are the store's SQL, with the schema filled in.
type queries struct {
	scope, apply, versions, join, scan, count                string
	recordPushes, stuck, pushes, clearPushes, clearAllPushes string
	report                                                   string
	hold, approve, getHold, release, holds                   string
}

func newQueries(q string) queries {
	r := strings.NewReplacer("{s}", q)
	const recordCols = "key, parts, version, hash, packed_row, deleted, staged_at"
	const holdCols = "h.state, h.deletes, h.total, h.held_at, coalesce(h.approved_by, ''), h.approved_at"
	return queries{
		scope: r.Replace(`
INSERT INTO {s}.scopes (pipeline, side) VALUES ($1, $2)
ON CONFLICT (pipeline, side) DO UPDATE SET side = excluded.side
RETURNING id`),
		// changed_version moves only when the content or the deleted flag
		// changes, so RETURNING tells a change from a version that moved.
		apply: r.Replace(`
INSERT INTO {s}.records AS r (scope, key, parts, version, hash, packed_row, deleted, changed_version, staged_at)
SELECT $1, u.key, u.parts, u.version, u.hash, u.packed_row, u.deleted, u.version, now()
FROM unnest($2::text[], $3::bytea[], $4::int8[], $5::bytea[], $6::bytea[], $7::bool[])
     WITH ORDINALITY AS u(key, parts, version, hash, packed_row, deleted, ord)
ORDER BY u.ord
ON CONFLICT (scope, key) DO UPDATE SET
  parts = excluded.parts, version = excluded.version, hash = excluded.hash,
  packed_row = excluded.packed_row, deleted = excluded.deleted, staged_at = excluded.staged_at,
  changed_version = CASE WHEN r.deleted = excluded.deleted AND r.hash = excluded.hash
                         THEN r.changed_version ELSE excluded.version END
WHERE r.version < excluded.version
RETURNING r.key, r.changed_version = r.version`),
		versions: r.Replace(`SELECT key, version FROM {s}.records WHERE scope = $1 AND key = ANY($2::text[])`),
		join:     r.Replace(`SELECT scope, ` + recordCols + ` FROM {s}.records WHERE scope = ANY($1::int[]) AND key = ANY($2::text[])`),
		scan: r.Replace(`
(SELECT scope, ` + recordCols + ` FROM {s}.records WHERE scope = $1 AND key > $3 ORDER BY key LIMIT $4)
UNION ALL
(SELECT scope, ` + recordCols + ` FROM {s}.records WHERE scope = $2 AND key > $3 ORDER BY key LIMIT $4)`),
		count: r.Replace(`
SELECT count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE deleted) FROM {s}.records WHERE scope = $1`),
		recordPushes: r.Replace(`
INSERT INTO {s}.pushes AS p (scope, key, version, push_count, first_at, last_at, position)
SELECT $1, u.key, u.version, 1, now(), now(), u.position
FROM unnest($2::text[], $3::int8[], $4::int8[]) WITH ORDINALITY AS u(key, version, position, ord)
ORDER BY u.key
ON CONFLICT (scope, key) DO UPDATE SET
  push_count = CASE WHEN p.version = excluded.version THEN p.push_count + 1 ELSE 1 END,
  first_at = CASE WHEN p.version = excluded.version THEN p.first_at ELSE excluded.first_at END,
  position = CASE WHEN excluded.position > 0 THEN excluded.position
                  WHEN p.version = excluded.version THEN p.position ELSE 0 END,
  version = excluded.version, last_at = excluded.last_at
RETURNING p.key, p.push_count`),
		// The rows are locked in key order (the order RecordPushes writes
		// in), so a stager and the differ never wait on each other in a
		// cycle.
		report: r.Replace(`
UPDATE {s}.pushes AS p SET reported = greatest(p.reported, l.version)
FROM (SELECT q.key, u.version FROM {s}.pushes q
      JOIN unnest($2::text[], $3::int8[]) AS u(key, version) ON u.key = q.key
      WHERE q.scope = $1 ORDER BY q.key FOR UPDATE OF q) AS l
WHERE p.scope = $1 AND p.key = l.key
RETURNING p.key, p.position`),
		stuck: r.Replace(`
SELECT ` + pushCols + ` FROM {s}.pushes
WHERE scope = $1 AND push_count >= $2 AND key > $3 ORDER BY key LIMIT $4`),
		pushes: r.Replace(`
SELECT ` + pushCols + ` FROM {s}.pushes WHERE scope = $1 AND key = ANY($2::text[]) ORDER BY key`),
		clearPushes:    r.Replace(`DELETE FROM {s}.pushes WHERE scope = $1 AND key = ANY($2::text[])`),
		clearAllPushes: r.Replace(`DELETE FROM {s}.pushes WHERE scope = $1`),
		hold: r.Replace(`
INSERT INTO {s}.holds AS h (scope, state, deletes, total, held_at) VALUES ($1, 'held', $2, $3, now())
ON CONFLICT (scope) DO UPDATE SET
  deletes = CASE WHEN h.state = 'held' THEN excluded.deletes ELSE h.deletes END,
  total = CASE WHEN h.state = 'held' THEN excluded.total ELSE h.total END
RETURNING ` + holdCols),
		approve: r.Replace(`
UPDATE {s}.holds AS h SET state = 'approved', approved_by = $2, approved_at = now()
WHERE scope = $1 AND state = 'held'
RETURNING ` + holdCols),
		getHold: r.Replace(`SELECT ` + holdCols + ` FROM {s}.holds h WHERE h.scope = $1`),
		release: r.Replace(`DELETE FROM {s}.holds WHERE scope = $1`),
		holds: r.Replace(`
SELECT sc.side, ` + holdCols + ` FROM {s}.holds h JOIN {s}.scopes sc ON sc.id = h.scope
WHERE sc.pipeline = $1 ORDER BY sc.side COLLATE "C"`),
	}
}

// where names the store in errors.
func (s *Store) where(side stage.Side) string {
	return fmt.Sprintf("stage %s (pipeline %q, side %q)", s.schema, s.pipeline, string(side))
}

// fail wraps and classifies an error of operation op on side.
func (s *Store) fail(op string, side stage.Side, err error) error {
	if s.closed.Load() {
		return fmt.Errorf("%s: %s: %w", s.where(side), op, stage.ErrClosed)
	}
	return pgconn.Classify(fmt.Errorf("%s: %s: %w", s.where(side), op, err))
}

// scope returns the id of side, registering it the first time.
func (s *Store) scope(ctx context.Context, side stage.Side) (int32, error) {
	if s.closed.Load() {
		return 0, fmt.Errorf("%s: %w", s.where(side), stage.ErrClosed)
	}
	if err := side.Validate(); err != nil {
		return 0, fmt.Errorf("stage of pipeline %q: %w", s.pipeline, err)
	}
	s.mu.Lock()
	id, ok := s.scopes[side]
	s.mu.Unlock()
	if ok {
		return id, nil
	}
	if err := s.pool.QueryRow(ctx, s.q.scope, s.pipeline, string(side)).Scan(&id); err != nil {
		return 0, s.fail("register scope", side, err)
	}
	s.mu.Lock()
	s.scopes[side] = id
	s.mu.Unlock()
	return id, nil
}

// targetScope validates a target name and returns its scope.
func (s *Store) targetScope(ctx context.Context, target string) (int32, stage.Side, error) {
	if err := stage.ValidateTarget(target); err != nil {
		return 0, "", fmt.Errorf("stage of pipeline %q: %w", s.pipeline, err)
	}
	side := stage.TargetSide(target)
	id, err := s.scope(ctx, side)
	return id, side, err
}

// Apply implements stage.Records.
func (s *Store) Apply(ctx context.Context, side stage.Side, recs []stage.Record) (stage.Applied, error) {
	return s.apply(ctx, side, recs, false)
}

// ApplyReports implements stage.Records.
func (s *Store) ApplyReports(ctx context.Context, target string, recs []stage.Record) (stage.Applied, error) {
	if err := stage.ValidateTarget(target); err != nil {
		return stage.Applied{}, fmt.Errorf("stage of pipeline %q: %w", s.pipeline, err)
	}
	return s.apply(ctx, stage.TargetSide(target), recs, true)
}

// apply is Apply, and with reports ApplyReports on a target side.
func (s *Store) apply(ctx context.Context, side stage.Side, recs []stage.Record, reports bool) (stage.Applied, error) {
	scope, err := s.scope(ctx, side)
	if err != nil {
		return stage.Applied{}, err
	}
	kept, dropped, err := storekit.Prepare(recs)
	if err != nil {
		return stage.Applied{}, fmt.Errorf("%s: apply: %w", s.where(side), err)
	}
	res := stage.Applied{Stale: dropped}
	if len(kept) == 0 {
		return res, nil
	}
	n := len(kept)
	keys, parts, hashes, packed := make([]string, n), make([][]byte, n), make([][]byte, n), make([][]byte, n)
	versions, deleted := make([]int64, n), make([]bool, n)
	for i, r := range kept {
		keys[i], parts[i], versions[i], packed[i], deleted[i] = r.Key.Text, storekit.PackParts(r.Key.Parts), r.Version, r.Row, r.Deleted
		hashes[i] = r.Hash
		if hashes[i] == nil {
			hashes[i] = []byte{} // NOT NULL; a tombstone's hash is empty
		}
	}
	written := make(map[string]bool, n) // key → content changed
	var current []stage.Key
	confirmed := map[string]bool{}
	stale := 0
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		clear(written)
		clear(confirmed)
		current, stale = current[:0], 0
		rows, err := tx.Query(ctx, s.q.apply, scope, keys, parts, versions, hashes, packed, deleted)
		if err != nil {
			return err
		}
		var key string
		var changed bool
		if _, err := pgx.ForEachRow(rows, []any{&key, &changed}, func() error {
			written[key] = changed
			return nil
		}); err != nil {
			return err
		}
		if reports {
			if err := s.markReported(ctx, tx, scope, keys, versions, confirmed); err != nil {
				return err
			}
		}
		if len(written) == n {
			return nil
		}
		// The rest were not written: a redelivery (same version stored) or
		// stale (newer stored). The guard's row lock holds them as read.
		var left []string
		given := make(map[string]int64, n-len(written))
		for i, k := range keys {
			if _, ok := written[k]; !ok {
				left = append(left, k)
				given[k] = versions[i]
			}
		}
		vrows, err := tx.Query(ctx, s.q.versions, scope, left)
		if err != nil {
			return err
		}
		var version int64
		_, err = pgx.ForEachRow(vrows, []any{&key, &version}, func() error {
			if version == given[key] {
				current = append(current, stage.Key{Text: key})
			} else {
				stale++
			}
			return nil
		})
		return err
	})
	if err != nil {
		return stage.Applied{}, s.fail(fmt.Sprintf("apply %d records", n), side, err)
	}
	res.Stale += stale
	// Results in key order, with the caller's key parts.
	cur := make(map[string]bool, len(current))
	for _, k := range current {
		cur[k.Text] = true
	}
	for _, r := range kept {
		switch changed, ok := written[r.Key.Text]; {
		case ok && changed:
			res.Changed = append(res.Changed, r.Key)
		case ok || cur[r.Key.Text]:
			res.Current = append(res.Current, r.Key)
		}
		if confirmed[r.Key.Text] {
			res.Confirmed = append(res.Confirmed, r.Key)
		}
	}
	return res, nil
}

// markReported raises the push log's reported position of keys (one
// version each) in tx, and sets confirmed[key] for the keys whose last
// push (position > 0) the version reaches.
func (s *Store) markReported(ctx context.Context, tx pgx.Tx, scope int32, keys []string, versions []int64, confirmed map[string]bool) error {
	given := make(map[string]int64, len(keys))
	for i, k := range keys {
		given[k] = versions[i]
	}
	rows, err := tx.Query(ctx, s.q.report, scope, keys, versions)
	if err != nil {
		return fmt.Errorf("mark reported pushes: %w", err)
	}
	var key string
	var position int64
	if _, err := pgx.ForEachRow(rows, []any{&key, &position}, func() error {
		if position > 0 && position <= given[key] {
			confirmed[key] = true
		}
		return nil
	}); err != nil {
		return fmt.Errorf("mark reported pushes: %w", err)
	}
	return nil
}

// scanRecord reads the columns "scope, " + recordCols.
func scanRecord(row pgx.CollectableRow) (int32, stage.Record, error) {
	var scope int32
	var r stage.Record
	var parts []byte
	if err := row.Scan(&scope, &r.Key.Text, &parts, &r.Version, &r.Hash, &r.Row, &r.Deleted, &r.StagedAt); err != nil {
		return 0, r, err
	}
	var err error
	if r.Key.Parts, err = storekit.UnpackParts(parts); err != nil {
		return 0, r, fmt.Errorf("key %s: %w", r.Key.Text, err)
	}
	if r.Deleted {
		r.Row, r.Hash = nil, nil
	}
	return scope, r, nil
}

// collect reads records and splits them by scope.
func collect(rows pgx.Rows, srcScope int32) (src, tgt []stage.Record, err error) {
	defer rows.Close()
	for rows.Next() {
		scope, r, err := scanRecord(rows)
		if err != nil {
			return nil, nil, err
		}
		if scope == srcScope {
			src = append(src, r)
		} else {
			tgt = append(tgt, r)
		}
	}
	return src, tgt, rows.Err()
}

// Join implements stage.Records.
func (s *Store) Join(ctx context.Context, target string, keys []string) ([]stage.Pair, error) {
	tscope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return nil, err
	}
	sscope, err := s.scope(ctx, stage.SourceSide)
	if err != nil {
		return nil, err
	}
	keys = storekit.UniqueKeys(keys)
	srcBy := make(map[string]*stage.Record, len(keys))
	tgtBy := make(map[string]*stage.Record, len(keys))
	for chunk := range slices.Chunk(keys, joinChunk) {
		rows, err := s.pool.Query(ctx, s.q.join, []int32{sscope, tscope}, chunk)
		if err != nil {
			return nil, s.fail("join", side, err)
		}
		src, tgt, err := collect(rows, sscope)
		if err != nil {
			return nil, s.fail("join", side, err)
		}
		for i := range src {
			srcBy[src[i].Key.Text] = &src[i]
		}
		for i := range tgt {
			tgtBy[tgt[i].Key.Text] = &tgt[i]
		}
	}
	return storekit.Join(keys, srcBy, tgtBy), nil
}

// Scan implements stage.Records.
func (s *Store) Scan(ctx context.Context, target string, after string, limit int) ([]stage.Pair, error) {
	if err := storekit.CheckPage(limit); err != nil {
		return nil, fmt.Errorf("stage of pipeline %q: scan: %w", s.pipeline, err)
	}
	tscope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return nil, err
	}
	sscope, err := s.scope(ctx, stage.SourceSide)
	if err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, s.q.scan, sscope, tscope, after, limit)
	if err != nil {
		return nil, s.fail("scan", side, err)
	}
	src, tgt, err := collect(rows, sscope)
	if err != nil {
		return nil, s.fail("scan", side, err)
	}
	// UNION ALL keeps each branch's order in practice; do not rely on it.
	byKey := func(a, b stage.Record) int { return strings.Compare(a.Key.Text, b.Key.Text) }
	slices.SortFunc(src, byKey)
	slices.SortFunc(tgt, byKey)
	return storekit.Page(src, tgt, limit), nil
}

// Count implements stage.Records.
func (s *Store) Count(ctx context.Context, side stage.Side) (stage.Counts, error) {
	scope, err := s.scope(ctx, side)
	if err != nil {
		return stage.Counts{}, err
	}
	var c stage.Counts
	if err := s.pool.QueryRow(ctx, s.q.count, scope).Scan(&c.Live, &c.Deleted); err != nil {
		return stage.Counts{}, s.fail("count", side, err)
	}
	return c, nil
}

// RecordPushes implements stage.PushLog.
func (s *Store) RecordPushes(ctx context.Context, target string, pushes []stage.Push) ([]int, error) {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return nil, err
	}
	if err := storekit.CheckPushes(pushes); err != nil {
		return nil, fmt.Errorf("%s: record pushes: %w", s.where(side), err)
	}
	if len(pushes) == 0 {
		return []int{}, nil
	}
	keys, versions, positions := make([]string, len(pushes)), make([]int64, len(pushes)), make([]int64, len(pushes))
	for i, p := range pushes {
		keys[i], versions[i], positions[i] = p.Key, p.Version, p.Position
	}
	counts := make(map[string]int, len(pushes))
	rows, err := s.pool.Query(ctx, s.q.recordPushes, scope, keys, versions, positions)
	if err != nil {
		return nil, s.fail("record pushes", side, err)
	}
	var key string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&key, &n}, func() error {
		counts[key] = n
		return nil
	}); err != nil {
		return nil, s.fail("record pushes", side, err)
	}
	out := make([]int, len(pushes))
	for i, p := range pushes {
		out[i] = counts[p.Key]
	}
	return out, nil
}

// Stuck implements stage.PushLog.
func (s *Store) Stuck(ctx context.Context, target string, minCount int, after string, limit int) ([]stage.PushState, error) {
	if err := storekit.CheckPage(limit); err != nil {
		return nil, fmt.Errorf("stage of pipeline %q: stuck: %w", s.pipeline, err)
	}
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, s.q.stuck, scope, minCount, after, limit)
	if err != nil {
		return nil, s.fail("list stuck keys", side, err)
	}
	out, err := pgx.CollectRows(rows, scanPushState)
	if err != nil {
		return nil, s.fail("list stuck keys", side, err)
	}
	return out, nil
}

// pushCols are the columns scanPushState reads.
const pushCols = `key, version, push_count, position, reported, first_at, last_at`

func scanPushState(row pgx.CollectableRow) (stage.PushState, error) {
	var p stage.PushState
	err := row.Scan(&p.Key, &p.Version, &p.Count, &p.Position, &p.Reported, &p.FirstAt, &p.LastAt)
	return p, err
}

// Pushes implements stage.PushLog.
func (s *Store) Pushes(ctx context.Context, target string, keys []string) ([]stage.PushState, error) {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return nil, err
	}
	keys = storekit.UniqueKeys(keys)
	var out []stage.PushState
	for len(keys) > 0 {
		n := min(len(keys), joinChunk)
		rows, err := s.pool.Query(ctx, s.q.pushes, scope, keys[:n])
		if err != nil {
			return nil, s.fail("read pushes", side, err)
		}
		page, err := pgx.CollectRows(rows, scanPushState)
		if err != nil {
			return nil, s.fail("read pushes", side, err)
		}
		out = append(out, page...)
		keys = keys[n:]
	}
	return out, nil
}

// ClearPushes implements stage.PushLog.
func (s *Store) ClearPushes(ctx context.Context, target string, keys []string) (int64, error) {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return 0, err
	}
	var tag interface{ RowsAffected() int64 }
	if keys == nil {
		tag, err = s.pool.Exec(ctx, s.q.clearAllPushes, scope)
	} else {
		tag, err = s.pool.Exec(ctx, s.q.clearPushes, scope, keys)
	}
	if err != nil {
		return 0, s.fail("clear pushes", side, err)
	}
	return tag.RowsAffected(), nil
}

func scanHold(row pgx.Row, target string) (stage.Hold, error) {
	h := stage.Hold{Target: target}
	var state string
	var approvedAt *time.Time
	if err := row.Scan(&state, &h.Deletes, &h.Total, &h.HeldAt, &h.ApprovedBy, &approvedAt); err != nil {
		return h, err
	}
	h.State = stage.HoldState(state)
	if approvedAt != nil {
		h.ApprovedAt = *approvedAt
	}
	return h, nil
}

// Hold implements stage.Approvals.
func (s *Store) Hold(ctx context.Context, target string, c stage.HoldCounts) (stage.Hold, error) {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return stage.Hold{}, err
	}
	h, err := scanHold(s.pool.QueryRow(ctx, s.q.hold, scope, c.Deletes, c.Total), target)
	if err != nil {
		return stage.Hold{}, s.fail("hold diff", side, err)
	}
	return h, nil
}

// Approve implements stage.Approvals.
func (s *Store) Approve(ctx context.Context, target, by string) (stage.Hold, error) {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return stage.Hold{}, err
	}
	if err := stage.ValidateApprover(by); err != nil {
		return stage.Hold{}, fmt.Errorf("%s: %w", s.where(side), err)
	}
	h, err := scanHold(s.pool.QueryRow(ctx, s.q.approve, scope, by), target)
	if errors.Is(err, pgx.ErrNoRows) {
		// Already approved, or nothing held.
		h, err = scanHold(s.pool.QueryRow(ctx, s.q.getHold, scope), target)
		if errors.Is(err, pgx.ErrNoRows) {
			return stage.Hold{}, errs.Permanent(fmt.Errorf("%s: approve: %w", s.where(side), stage.ErrNoHold))
		}
	}
	if err != nil {
		return stage.Hold{}, s.fail("approve", side, err)
	}
	return h, nil
}

// Release implements stage.Approvals.
func (s *Store) Release(ctx context.Context, target string) error {
	scope, side, err := s.targetScope(ctx, target)
	if err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, s.q.release, scope); err != nil {
		return s.fail("release hold", side, err)
	}
	return nil
}

// Holds implements stage.Approvals.
func (s *Store) Holds(ctx context.Context) ([]stage.Hold, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("%s: %w", s.where(""), stage.ErrClosed)
	}
	rows, err := s.pool.Query(ctx, s.q.holds, s.pipeline)
	if err != nil {
		return nil, s.fail("list holds", "", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (stage.Hold, error) {
		var side string
		var state string
		var approvedAt *time.Time
		h := stage.Hold{}
		if err := row.Scan(&side, &state, &h.Deletes, &h.Total, &h.HeldAt, &h.ApprovedBy, &approvedAt); err != nil {
			return h, err
		}
		h.Target, _ = stage.Side(side).Target()
		h.State = stage.HoldState(state)
		if approvedAt != nil {
			h.ApprovedAt = *approvedAt
		}
		return h, nil
	})
	if err != nil {
		return nil, s.fail("list holds", "", err)
	}
	slices.SortFunc(out, func(a, b stage.Hold) int { return cmp.Compare(a.Target, b.Target) })
	return out, nil
}
