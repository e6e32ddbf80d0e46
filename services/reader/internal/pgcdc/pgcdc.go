package pgcdc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	pgxconn "github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/reader/internal/pgsource"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
	"github.com/oneway-sync/oneway/shared/source"
)

// LSN is a PostgreSQL WAL position.
type LSN = pglogrepl.LSN

// ParseLSN parses the "X/X" text form of an LSN.
func ParseLSN(s string) (LSN, error) { return pglogrepl.ParseLSN(s) }

// Row is one record's owned values as PostgreSQL text; nil is NULL. It is
// the same type snapshot pages of pgsource return.
type Row = pgsource.Row

// ErrSlotLost means the slot a position refers to no longer exists or was
// invalidated (max_slot_wal_keep_size): changes between the position and
// now are gone, and only a resync repairs the targets.
var ErrSlotLost = errors.New("replication slot lost")

// Config says what to capture.
type Config struct {
	// URL is an ordinary PostgreSQL connection URL; pgcdc adds
	// replication=database for its replication connections. The role needs
	// the REPLICATION attribute (or superuser).
	URL string
	// Application is the application_name of pgcdc's connections.
	Application string
	// Slot and Publication name the replication slot and the publication:
	// 1 to 63 characters of a-z, 0-9 and _, starting with a letter or _.
	// Slot names are global to the PostgreSQL cluster.
	Slot, Publication string
	// Tables are the captured tables, at least one.
	Tables []TableSpec
	// WALBudget is how many bytes of WAL the slot may retain before
	// SlotState reports it over budget (and logs a warning); 0 disables it.
	WALBudget int64
	// StatusInterval is the time between standby status updates. Default
	// 10s; keep it well below the server's wal_sender_timeout (60s).
	StatusInterval time.Duration
	// ChunkChanges and ChunkBytes bound a Chunk: a transaction with more
	// changes or more value bytes is handed over in several. Defaults 1000
	// and 4 MiB.
	ChunkChanges, ChunkBytes int
}

// TableSpec is one captured table.
type TableSpec struct {
	Table pgconn.Table
	// Key is the key column(s); they must be owned and covered by the
	// table's REPLICA IDENTITY.
	Key []string
	// Columns are the owned columns in Row order; empty = all columns.
	Columns []string
}

// Table describes a captured table as rows of it are laid out. A *Table is
// immutable and shared: do not modify it or its Columns.
type Table struct {
	// Index is the table's position in Config.Tables.
	Index int
	// Name is the table.
	Name pgconn.Table
	// Columns describe every Row of this table, in order (as
	// pgsource.Source.Columns does).
	Columns []*onewayv1.Column
	// KeyIdx are the positions of the key columns in Columns, in key order.
	KeyIdx []int
}

// KeyOf returns the key texts of a row of t.
func (t *Table) KeyOf(r Row) []string {
	return source.KeyTexts(r, t.KeyIdx)
}

// typeID identifies a column type as pgoutput's Relation message does.
type typeID struct {
	oid    uint32
	typmod int32
}

// tableMeta is what the capture knows about one configured table.
type tableMeta struct {
	base     *Table // the layout as of Open
	oid      uint32
	types    []typeID // of the owned columns, as of Open
	full     bool     // REPLICA IDENTITY FULL
	colList  string   // quoted owned columns
	keyList  string   // quoted key columns
	keyTypes []string // format_type of the key columns
	names    []string // owned column names
}

// Capture is a PostgreSQL source prepared for logical replication. Its
// methods are safe for concurrent use, but the slot serves one Stream (or
// bridge) at a time.
type Capture struct {
	cfg    Config
	pool   *pgxpool.Pool
	repl   *pgxconn.Config
	tables []*tableMeta
	byOID  map[uint32]*tableMeta
	log    *slog.Logger

	mu         sync.Mutex
	overBudget bool
	typeNames  map[typeID]string
	live       map[io.Closer]struct{} // open snapshots and streams
	closed     bool
	closeOnce  sync.Once
}

var nameRe = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

func validName(what, s string) error {
	if !nameRe.MatchString(s) {
		return errs.Permanentf("cdc %s name %q is not valid: use 1 to 63 characters of a-z, 0-9 and _, starting with a letter or _", what, s)
	}
	return nil
}

func (cfg *Config) validate() error {
	if err := validName("slot", cfg.Slot); err != nil {
		return err
	}
	if err := validName("publication", cfg.Publication); err != nil {
		return err
	}
	if len(cfg.Tables) == 0 {
		return errs.Permanentf("cdc: no tables to capture")
	}
	seen := map[pgconn.Table]bool{}
	for _, t := range cfg.Tables {
		if seen[t.Table] {
			return errs.Permanentf("cdc: table %s is listed twice", t.Table)
		}
		seen[t.Table] = true
		if len(t.Key) == 0 {
			return errs.Permanentf("cdc: table %s has no key columns", t.Table)
		}
	}
	if cfg.WALBudget < 0 {
		return errs.Permanentf("cdc: wal budget %d is negative", cfg.WALBudget)
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 10 * time.Second
	}
	if cfg.ChunkChanges <= 0 {
		cfg.ChunkChanges = 1000
	}
	if cfg.ChunkBytes <= 0 {
		cfg.ChunkBytes = 4 << 20
	}
	if cfg.Application == "" {
		cfg.Application = "oneway-cdc"
	}
	return nil
}

// Open checks the source (wal_level, the role's REPLICATION attribute, each
// table's columns, key and replica identity), then creates the publication
// or reuses it (adding missing tables). It does not create the slot. Errors
// are Permanent when only a change of configuration or of the source can
// fix them, and name the table and the fix. Close releases the Capture.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Capture, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	repl, err := pgxconn.ParseConfig(cfg.URL)
	if err != nil {
		// pgx's parse errors can echo the URL; never log a password.
		return nil, errs.Permanentf("parse PostgreSQL URL for %s: invalid connection string", cfg.Application)
	}
	repl.RuntimeParams["application_name"] = cfg.Application
	repl.RuntimeParams["replication"] = "database"
	for k, v := range pgconn.SessionParams {
		repl.RuntimeParams[k] = v
	}
	pool, err := pgconn.Open(ctx, cfg.URL, cfg.Application, 4)
	if err != nil {
		return nil, err
	}
	c := &Capture{cfg: cfg, pool: pool, repl: repl, byOID: map[uint32]*tableMeta{},
		log: log.With("slot", cfg.Slot), typeNames: map[typeID]string{}, live: map[io.Closer]struct{}{}}
	if err := c.setup(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return c, nil
}

func (c *Capture) setup(ctx context.Context) error {
	var level string
	if err := c.pool.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return pgconn.Classify(fmt.Errorf("read wal_level of the source: %w", err))
	}
	if err := checkWALLevel(level); err != nil {
		return err
	}
	var role string
	var canReplicate bool
	err := c.pool.QueryRow(ctx, "SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user").
		Scan(&role, &canReplicate)
	if err != nil {
		return pgconn.Classify(fmt.Errorf("read the attributes of the source role: %w", err))
	}
	if !canReplicate {
		return errs.Permanentf("cdc: role %q may not use replication: run ALTER ROLE %s REPLICATION", role, pgconn.Quote(role))
	}
	for i, spec := range c.cfg.Tables {
		m, err := c.describe(ctx, i, spec)
		if err != nil {
			return err
		}
		c.tables = append(c.tables, m)
		c.byOID[m.oid] = m
	}
	return c.ensurePublication(ctx)
}

// checkWALLevel says why a source with this wal_level cannot be captured.
func checkWALLevel(level string) error {
	if level == "logical" {
		return nil
	}
	return errs.Permanentf("cdc: the source runs with wal_level=%s; logical replication needs wal_level=logical: run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL", level)
}

// describe checks one table against the catalog.
func (c *Capture) describe(ctx context.Context, index int, spec TableSpec) (*tableMeta, error) {
	t := spec.Table
	all, found, err := pgconn.Columns(ctx, c.pool, t)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, errs.Permanentf("cdc: source table %s does not exist (or the role cannot see it)", t)
	}
	names := spec.Columns
	if len(names) == 0 {
		for _, col := range all {
			names = append(names, col.Name)
		}
	}
	cols, err := pgconn.Pick(t, all, names)
	if err != nil {
		return nil, fmt.Errorf("cdc: %w", err)
	}
	m := &tableMeta{base: &Table{Index: index, Name: t}, names: names,
		colList: pgconn.QuoteList("", names), keyList: pgconn.QuoteList("", spec.Key)}
	idx := map[string]int{}
	for i, col := range cols {
		idx[col.Name] = i
	}
	isKey := map[int]bool{}
	for _, k := range spec.Key {
		i, ok := idx[k]
		if !ok {
			return nil, errs.Permanentf("cdc: source table %s: key column %q is not among the owned columns", t, k)
		}
		m.base.KeyIdx = append(m.base.KeyIdx, i)
		m.keyTypes = append(m.keyTypes, cols[i].Type)
		isKey[i] = true
	}
	for i, col := range cols {
		m.base.Columns = append(m.base.Columns, &onewayv1.Column{Name: col.Name, Type: col.Type, Key: isKey[i]})
	}

	// Types and generated columns, which pgoutput does not send.
	var ident string
	err = c.pool.QueryRow(ctx, "SELECT c.oid, c.relreplident::text FROM pg_class c WHERE c.oid = to_regclass($1)", t.Quoted()).
		Scan(&m.oid, &ident)
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("read replica identity of %s: %w", t, err))
	}
	rows, err := c.pool.Query(ctx, `
SELECT attname, atttypid, atttypmod, attgenerated <> ''
FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped`, m.oid)
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("read column types of %s: %w", t, err))
	}
	type attr struct {
		typ       typeID
		generated bool
	}
	attrs := map[string]attr{}
	for rows.Next() {
		var name string
		var a attr
		if err := rows.Scan(&name, &a.typ.oid, &a.typ.typmod, &a.generated); err != nil {
			rows.Close()
			return nil, pgconn.Classify(fmt.Errorf("read column types of %s: %w", t, err))
		}
		attrs[name] = a
	}
	if err := rows.Err(); err != nil {
		return nil, pgconn.Classify(fmt.Errorf("read column types of %s: %w", t, err))
	}
	for _, n := range names {
		a := attrs[n]
		if a.generated {
			return nil, errs.Permanentf("cdc: column %q of %s is GENERATED, and logical replication does not carry generated columns: leave it out of the owned columns", n, t)
		}
		m.types = append(m.types, a.typ)
	}

	// The replica identity must carry the key, or deletes have no key.
	var identCols []string
	switch ident {
	case "f":
		m.full = true
	case "n":
		return nil, errs.Permanentf("cdc: table %s has REPLICA IDENTITY NOTHING, so deletes carry no key: run ALTER TABLE %s REPLICA IDENTITY DEFAULT (with a primary key on %s) or REPLICA IDENTITY FULL",
			t, t.Quoted(), m.keyList)
	case "d", "i":
		cond := "i.indisprimary"
		if ident == "i" {
			cond = "i.indisreplident"
		}
		err := c.pool.QueryRow(ctx, `
SELECT coalesce(array_agg(a.attname::text ORDER BY k.n), '{}')
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1 AND `+cond, m.oid).Scan(&identCols)
		if err != nil {
			return nil, pgconn.Classify(fmt.Errorf("read replica identity of %s: %w", t, err))
		}
		if len(identCols) == 0 {
			if ident == "d" {
				return nil, errs.Permanentf("cdc: table %s has no primary key, so its default REPLICA IDENTITY gives deletes no key: add a primary key on %s, or run ALTER TABLE %s REPLICA IDENTITY FULL (or USING INDEX a unique index on the key)",
					t, m.keyList, t.Quoted())
			}
			return nil, errs.Permanentf("cdc: the REPLICA IDENTITY index of table %s is gone: run ALTER TABLE %s REPLICA IDENTITY USING INDEX … (a unique index on %s) or REPLICA IDENTITY FULL",
				t, t.Quoted(), m.keyList)
		}
		for _, k := range spec.Key {
			if !slices.Contains(identCols, k) {
				what := "primary key"
				if ident == "i" {
					what = "REPLICA IDENTITY index"
				}
				return nil, errs.Permanentf("cdc: key column %q of table %s is not part of its %s (%s), so deletes would not carry it: use the %s as the key, or run ALTER TABLE %s REPLICA IDENTITY FULL (or USING INDEX a unique index on %s)",
					k, t, what, pgconn.QuoteList("", identCols), what, t.Quoted(), m.keyList)
			}
		}
	default:
		return nil, errs.Permanentf("cdc: table %s has an unknown replica identity %q", t, ident)
	}
	return m, nil
}

// ensurePublication creates the publication or checks and completes it.
func (c *Capture) ensurePublication(ctx context.Context) error {
	pub := c.cfg.Publication
	var all, ins, upd, del, trunc bool
	err := c.pool.QueryRow(ctx, "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1", pub).
		Scan(&all, &ins, &upd, &del, &trunc)
	if errors.Is(err, pgx.ErrNoRows) {
		list := make([]string, len(c.tables))
		for i, m := range c.tables {
			list[i] = m.base.Name.Quoted()
		}
		_, err := c.pool.Exec(ctx, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", pgconn.Quote(pub), strings.Join(list, ", ")))
		var pgErr *pgxconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42710" { // created meanwhile
			return c.ensurePublication(ctx)
		}
		if err != nil {
			return pgconn.Classify(fmt.Errorf("create publication %s: %w", pub, err))
		}
		c.log.Info("publication created", "publication", pub, "tables", len(list))
		return nil
	}
	if err != nil {
		return pgconn.Classify(fmt.Errorf("read publication %s: %w", pub, err))
	}
	if !ins || !upd || !del {
		return errs.Permanentf("cdc: publication %s does not publish every insert, update and delete: run ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate')",
			pub, pgconn.Quote(pub))
	}
	if !trunc {
		c.log.Warn("publication does not publish truncate: a TRUNCATE of a captured table goes unseen",
			"publication", pub)
	}
	if all {
		return nil
	}
	for _, m := range c.tables {
		var in bool
		err := c.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
			pub, m.base.Name.Schema, m.base.Name.Name).Scan(&in)
		if err != nil {
			return pgconn.Classify(fmt.Errorf("read tables of publication %s: %w", pub, err))
		}
		if in {
			continue
		}
		if _, err := c.pool.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pgconn.Quote(pub), m.base.Name.Quoted())); err != nil {
			return pgconn.Classify(fmt.Errorf("add table %s to publication %s: %w", m.base.Name, pub, err))
		}
		c.log.Warn("table added to an existing publication: its changes before now were not published; resync it if the slot already existed",
			"publication", pub, "table", m.base.Name.String())
	}
	return nil
}

// Tables describes the captured tables, in Config.Tables order, as snapshot
// pages lay out their rows.
func (c *Capture) Tables() []*Table {
	out := make([]*Table, len(c.tables))
	for i, m := range c.tables {
		out[i] = m.base
	}
	return out
}

// Close closes the snapshots and streams still open, then releases the
// Capture's connections. Safe to call more than once.
func (c *Capture) Close() {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		live := make([]io.Closer, 0, len(c.live))
		for x := range c.live {
			live = append(live, x)
		}
		c.mu.Unlock()
		for _, x := range live {
			_ = x.Close()
		}
		c.pool.Close()
	})
}

// errClosed is returned by methods called after Close.
var errClosed = errors.New("cdc capture closed")

// track registers an open snapshot or stream, so that Close closes it.
func (c *Capture) track(x io.Closer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClosed
	}
	c.live[x] = struct{}{}
	return nil
}

func (c *Capture) untrack(x io.Closer) {
	c.mu.Lock()
	delete(c.live, x)
	c.mu.Unlock()
}

// SlotState is the slot as PostgreSQL reports it.
type SlotState struct {
	// Exists is false when there is no slot of that name (yet).
	Exists bool
	// Active is true while a connection streams from the slot.
	Active bool
	// ConfirmedFlushLSN is the position the slot resumes from.
	ConfirmedFlushLSN LSN
	// RestartLSN is the oldest WAL the slot keeps.
	RestartLSN LSN
	// CurrentLSN is pg_current_wal_lsn() when the state was read.
	CurrentLSN LSN
	// LagBytes is CurrentLSN - ConfirmedFlushLSN: WAL not yet confirmed.
	LagBytes int64
	// RetainedBytes is CurrentLSN - RestartLSN: WAL kept on disk for the
	// slot; the budget applies to it.
	RetainedBytes int64
	// WALStatus is pg_replication_slots.wal_status (reserved, extended,
	// unreserved, lost).
	WALStatus string
	// OverBudget is true when RetainedBytes exceeds Config.WALBudget.
	OverBudget bool
}

// SlotState reads the slot's state. It logs a warning when the slot goes
// over the WAL budget and an info line when it is back under.
func (c *Capture) SlotState(ctx context.Context) (SlotState, error) {
	var s SlotState
	var confirmed, restart *string
	var cur string
	err := c.pool.QueryRow(ctx, `
SELECT pg_current_wal_lsn()::text, coalesce(s.active, false), s.confirmed_flush_lsn::text, s.restart_lsn::text, coalesce(s.wal_status, '')
FROM (SELECT 1) one LEFT JOIN pg_replication_slots s ON s.slot_name = $1`, c.cfg.Slot).
		Scan(&cur, &s.Active, &confirmed, &restart, &s.WALStatus)
	if err != nil {
		return s, pgconn.Classify(fmt.Errorf("read state of slot %s: %w", c.cfg.Slot, err))
	}
	if s.CurrentLSN, err = ParseLSN(cur); err != nil {
		return s, fmt.Errorf("read state of slot %s: %w", c.cfg.Slot, err)
	}
	if s.WALStatus == "" {
		return s, nil
	}
	s.Exists = true
	if confirmed != nil {
		if s.ConfirmedFlushLSN, err = ParseLSN(*confirmed); err != nil {
			return s, fmt.Errorf("read state of slot %s: %w", c.cfg.Slot, err)
		}
		s.LagBytes = max(0, int64(s.CurrentLSN)-int64(s.ConfirmedFlushLSN))
	}
	if restart != nil {
		if s.RestartLSN, err = ParseLSN(*restart); err != nil {
			return s, fmt.Errorf("read state of slot %s: %w", c.cfg.Slot, err)
		}
		s.RetainedBytes = max(0, int64(s.CurrentLSN)-int64(s.RestartLSN))
	}
	s.OverBudget = c.cfg.WALBudget > 0 && s.RetainedBytes > c.cfg.WALBudget
	c.mu.Lock()
	was := c.overBudget
	c.overBudget = s.OverBudget
	c.mu.Unlock()
	switch {
	case s.OverBudget && !was:
		c.log.Warn("replication slot retains more WAL than its budget: the reader is behind or stopped, and the source's disk fills",
			"retained_bytes", s.RetainedBytes, "lag_bytes", s.LagBytes, "wal_budget_bytes", c.cfg.WALBudget, "wal_status", s.WALStatus)
	case !s.OverBudget && was:
		c.log.Info("replication slot back under its WAL budget", "retained_bytes", s.RetainedBytes, "wal_budget_bytes", c.cfg.WALBudget)
	}
	return s, nil
}

// slot reports whether the slot exists and its confirmed LSN. It fails
// with ErrSlotLost when the slot was invalidated, and when a slot of that
// name belongs to another database or plugin.
func (c *Capture) slot(ctx context.Context) (exists bool, confirmed LSN, err error) {
	var plugin, db, here, status string
	var confirmedText *string
	err = c.pool.QueryRow(ctx, `
SELECT coalesce(plugin, ''), coalesce(database, ''), current_database(), coalesce(wal_status, ''), confirmed_flush_lsn::text
FROM pg_replication_slots WHERE slot_name = $1`, c.cfg.Slot).Scan(&plugin, &db, &here, &status, &confirmedText)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, pgconn.Classify(fmt.Errorf("read slot %s: %w", c.cfg.Slot, err))
	}
	if plugin != "pgoutput" || db != here {
		return false, 0, errs.Permanentf("cdc: replication slot %s exists but belongs to database %q with plugin %q, not to %q with pgoutput: choose another slot name",
			c.cfg.Slot, db, plugin, here)
	}
	if status == "lost" || confirmedText == nil {
		return true, 0, errs.Permanent(fmt.Errorf("cdc: slot %s was invalidated (max_slot_wal_keep_size): %w; drop it and resync", c.cfg.Slot, ErrSlotLost))
	}
	confirmed, err = ParseLSN(*confirmedText)
	if err != nil {
		return false, 0, fmt.Errorf("read slot %s: %w", c.cfg.Slot, err)
	}
	return true, confirmed, nil
}

// CurrentLSN is the server's current WAL insert position: every transaction
// committed before the call ends below it (Stream.Idle tells when a stream
// has handed over all of them).
func (c *Capture) CurrentLSN(ctx context.Context) (LSN, error) {
	var text string
	if err := c.pool.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&text); err != nil {
		return 0, pgconn.Classify(fmt.Errorf("read the current WAL position: %w", err))
	}
	return ParseLSN(text)
}

// Drop drops the slot (for a resync; the next StartSnapshot creates it
// again). It is a no-op when the slot does not exist, and fails while a
// connection streams from it. The publication stays.
func (c *Capture) Drop(ctx context.Context) error {
	_, err := c.pool.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", c.cfg.Slot)
	if err != nil {
		return pgconn.Classify(fmt.Errorf("drop replication slot %s: %w", c.cfg.Slot, err))
	}
	c.log.Info("replication slot dropped")
	return nil
}

// DropPublication drops the publication when it exists (teardown).
func (c *Capture) DropPublication(ctx context.Context) error {
	if _, err := c.pool.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgconn.Quote(c.cfg.Publication)); err != nil {
		return pgconn.Classify(fmt.Errorf("drop publication %s: %w", c.cfg.Publication, err))
	}
	return nil
}

// waitReleased waits until the backend pid no longer holds the slot.
func (c *Capture) waitReleased(ctx context.Context, pid uint32) error {
	for {
		var held bool
		err := c.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active_pid = $2)",
			c.cfg.Slot, int64(pid)).Scan(&held)
		if err != nil {
			return pgconn.Classify(fmt.Errorf("read slot %s: %w", c.cfg.Slot, err))
		}
		if !held {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// connect opens a replication connection.
func (c *Capture) connect(ctx context.Context) (*pgxconn.PgConn, error) {
	conn, err := pgxconn.ConnectConfig(ctx, c.repl)
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("open replication connection for slot %s: %w", c.cfg.Slot, err))
	}
	return conn, nil
}

// typeName returns format_type of a column type, cached.
func (c *Capture) typeName(ctx context.Context, id typeID) (string, error) {
	c.mu.Lock()
	n, ok := c.typeNames[id]
	c.mu.Unlock()
	if ok {
		return n, nil
	}
	if err := c.pool.QueryRow(ctx, "SELECT format_type($1, $2)", id.oid, id.typmod).Scan(&n); err != nil {
		return "", pgconn.Classify(fmt.Errorf("name type %d: %w", id.oid, err))
	}
	c.mu.Lock()
	c.typeNames[id] = n
	c.mu.Unlock()
	return n, nil
}

// readRow reads the owned columns of one row by key with the pool, nil
// when it does not exist.
func (c *Capture) readRow(ctx context.Context, m *tableMeta, key []string) (Row, error) {
	params := make([]string, len(key))
	args := []any{pgx.QueryResultFormats{pgx.TextFormatCode}}
	for i, k := range key {
		params[i] = fmt.Sprintf("$%d::text::%s", i+1, m.keyTypes[i])
		args = append(args, k)
	}
	q := fmt.Sprintf("SELECT %s FROM %s WHERE (%s) = (%s)", m.colList, m.base.Name.Quoted(), m.keyList, strings.Join(params, ", "))
	rows, err := queryRows(ctx, c.pool, q, args)
	if err != nil {
		return nil, pgconn.Classify(fmt.Errorf("read row of %s again for an unchanged TOASTed value: %w", m.base.Name, err))
	}
	if len(rows) == 0 {
		return nil, nil
	}
	return rows[0], nil
}

// queryRows runs a query with text results into Rows (one allocation per
// row, as pgsource does).
func queryRows(ctx context.Context, q pgconn.Querier, sql string, args []any) ([]Row, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Row
	for rows.Next() {
		out = append(out, copyRow(rows.RawValues()))
	}
	return out, rows.Err()
}

func copyRow(raw [][]byte) Row {
	size := 0
	for _, v := range raw {
		size += len(v)
	}
	buf := make([]byte, 0, size)
	r := make(Row, len(raw))
	for i, v := range raw {
		if v == nil {
			continue
		}
		start := len(buf)
		buf = append(buf, v...)
		r[i] = buf[start:len(buf):len(buf)]
	}
	return r
}
