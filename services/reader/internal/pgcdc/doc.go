// Package pgcdc captures changes from PostgreSQL by logical replication
// (the pgoutput plugin, protocol version 1) for the reader's cdc pattern.
//
// # Setup
//
// [Open] checks the source and prepares it: wal_level must be logical, the
// role needs the REPLICATION attribute, every configured table must exist
// with its key and owned columns, and its REPLICA IDENTITY must carry the
// key (DEFAULT with a primary key that covers the key, USING INDEX an index
// that covers it, or FULL); otherwise a delete could not be turned into a
// key. Errors name the table and the statement that fixes it. These checks
// run before the publication is touched, because PostgreSQL refuses UPDATE
// and DELETE on a published table without a replica identity. Open then
// creates the publication (FOR TABLE the configured tables), or reuses it
// and adds missing tables. The replication slot is created by the first
// [Capture.StartSnapshot], never by Open.
//
// # Text form of values
//
// Rows are [pgsource.Row]s holding exactly the text pgsource reads for the
// same columns: pgoutput sends values through the types' output functions
// on the walsender, and the replication connection sets the same session
// parameters as every oneway pool (shared/pgconn.SessionParams: DateStyle,
// TimeZone, IntervalStyle, extra_float_digits, bytea_output), so a
// timestamptz, numeric, jsonb, bytea, array… packs identically whether a
// snapshot page or the stream read it. Column types come from the catalog
// (format_type), as in pgsource; a column whose type changes (ALTER …
// TYPE) gets a new [*Table] from that point of the stream on.
//
// # Snapshot → stream hand-off
//
// A fresh pipeline calls StartSnapshot, which creates the slot with an
// exported snapshot (CREATE_REPLICATION_SLOT … LOGICAL pgoutput
// EXPORT_SNAPSHOT) and imports it into a REPEATABLE READ, READ ONLY
// transaction on a pooled connection (SET TRANSACTION SNAPSHOT). That
// transaction sees the database exactly as of the slot's consistent point
// L: every transaction whose commit record lies before L is visible, and
// the slot streams exactly the transactions that commit at or after L. The
// caller reads the tables in key-ordered pages ([Snapshot.Page]) and then
// streams from L ([Capture.Stream]): no change is lost and none is seen
// twice. The exporting replication connection is closed once the snapshot
// is imported (an imported snapshot lives as long as its importing
// transaction), so nothing has to keep a replication protocol connection
// idle while pages are read.
//
// # When the process dies mid-snapshot
//
// The exported snapshot dies with its transaction, but the slot survives,
// still at the point where the snapshot was taken (nothing confirms it
// during a snapshot). Dropping the slot and starting over would lose the
// deletes of rows already published: a new snapshot no longer has them,
// and a new slot starts after them. Resuming with a plain new snapshot and
// then streaming from the old point would replay older changes after newer
// snapshot rows, so a target would go back in time for a while. pgcdc does
// neither. A resumed StartSnapshot (the slot exists) creates a temporary
// slot with an exported snapshot at a new point L1, imports it, and drops
// the temporary slot; the caller then drains a bridge ([Snapshot.Bridge]):
// the permanent slot's transactions from the caller's position P (the last
// stream position it saved, at least the slot's confirmed LSN) up to, and
// not including, L1, exactly the transactions the new snapshot already
// contains. Then it reads the remaining pages (from its last published key
// on) in the new snapshot, and streams the permanent slot from L1. This is
// how PostgreSQL's own table synchronisation catches up with its apply
// worker. For every key the published sequence moves forward only:
//
//	keys already published: rows at L0, changes [P, L1) in commit order, changes from L1
//	the other keys:         changes [P, L1) (harmless upserts and deletes), rows at L1, changes from L1
//
// Nothing is lost, nothing goes backwards, and changes of [P, L1) to keys
// not yet published appear twice (as a change, then inside a row), which
// the writers' fencing absorbs. The same holds when the process dies again
// in the bridge or in the resumed pages: the caller saves P as each bridge
// transaction is acknowledged and as L1 once the bridge ended, and the next
// attempt bridges from there. If the slot is gone while the caller still has
// a position, the history between is lost: [ErrSlotLost], the caller must
// resync.
//
// # The caller's protocol
//
// The caller (the reader) keeps one position, saved only after JetStream
// acknowledged what it covers: a phase, a stream LSN and, while in the
// snapshot, the table and last key published.
//
//	c, _ := pgcdc.Open(ctx, cfg, log)
//	if pos.Phase != "stream" {
//		snap, _ := c.StartSnapshot(ctx, pos.LSN) // pos.LSN is 0 the first time
//		bridge, _ := snap.Bridge(ctx)
//		for ch, err := bridge.Next(ctx); err != io.EOF; ch, err = bridge.Next(ctx) {
//			publish(ch) // Msg-Id from (CommitLSN, Seq); on ch.Last: save pos.LSN = ch.EndLSN, bridge.Confirm(ch.EndLSN)
//		}
//		bridge.Close()
//		save(pos.LSN = snap.LSN())
//		for each table from pos.Table, pages after pos.Key: publish rows; save pos.Table, pos.Key
//		snap.Close()
//		save(pos = {Phase: "stream", LSN: snap.LSN()})
//	}
//	s, _ := c.Stream(ctx, pos.LSN)
//	for { ch, _ := s.Next(ctx); publish(ch); on ch.Last: save pos.LSN = ch.EndLSN, s.Confirm(ch.EndLSN) }
//
// Any error: close what is open and start over from the saved position
// (ErrSlotLost: resync). Confirm only what is saved-or-acknowledged; never
// confirm while the saved phase is still the snapshot's, except bridge
// transactions.
//
// # Streaming and confirmation
//
// [Capture.Stream] starts the slot from an LSN and hands over [Chunk]s in
// commit order; a transaction larger than Config.ChunkChanges or
// Config.ChunkBytes comes as several chunks (same CommitLSN, Seq 0, 1, …),
// so memory stays bounded by a few chunks whatever the transaction size.
// Chunking is deterministic: a replay yields the same chunks, so (CommitLSN,
// Seq) is a stable message id. Only the last chunk of a transaction (Last)
// carries EndLSN, the one position worth confirming and restarting from:
// [Stream.Confirm] it once JetStream acknowledged every chunk of that
// transaction and of those before it. A restart from a confirmed EndLSN
// resumes with the next transaction; one that was handed over but not
// confirmed comes again, whole (at least once).
//
// A goroutine owned by the Stream reads the connection and sends standby
// status updates every Config.StatusInterval and whenever the server asks
// for a reply, even while the caller is slow to take chunks (the walsender
// would otherwise end the connection after wal_sender_timeout). The updates
// report as flushed only what the caller confirmed, with one addition that
// keeps an idle slot from pinning WAL (the heartbeat): when everything
// handed over has been confirmed and no transaction is open, the server's
// keepalive position (the walsender's sent pointer: every transaction that
// committed before it has been decoded and sent) and the end of any
// transaction that held nothing for this capture are reported instead.
// That is safe because no change the caller has not confirmed lies below
// them. Writes to other tables or databases move WAL, and the slot follows.
//
// Truncate is reported as an [OpTruncate] change (the caller decides;
// likely a resync). Type, Origin and logical decoding messages are skipped.
//
// # Unchanged TOASTed values
//
// An UPDATE that does not touch a large (TOASTed) value sends it as
// "unchanged", without the value. With REPLICA IDENTITY FULL the old row,
// which PostgreSQL always sends in full, supplies it: exact. Otherwise pgcdc
// reads the column again by key from the source, which gives its current
// value: the change then pairs this transaction's changed columns with a
// possibly newer value of the large column, a state that may never have
// existed, which the following changes overwrite (the target converges). A
// row deleted since is skipped (its delete follows in the stream). Set
// REPLICA IDENTITY FULL on tables with large owned columns when every
// intermediate state must be exact.
//
// # Lag and WAL budget
//
// [Capture.SlotState] reports the slot's lag (current WAL position minus
// confirmed LSN) and the WAL it retains (current minus restart LSN), and
// marks it over budget, with a warning log when it crosses
// Config.WALBudget, so an operator is told before the disk fills. A slot
// invalidated by max_slot_wal_keep_size is [ErrSlotLost]. [Capture.Drop]
// drops the slot for a resync.
package pgcdc
