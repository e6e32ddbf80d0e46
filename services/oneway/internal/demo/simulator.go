package demo

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Simulator changes the SoR the way an application would: every Every it
// makes a burst of Burst changes in one transaction, about 60% updates
// (status, amount), 25% inserts and 15% deletes. Bursts with quiet in
// between let the status page show the target falling behind and catching
// up. Run it as a runner component.
type Simulator struct {
	Path  string // the SoR file
	Every time.Duration
	Burst int
	Log   *slog.Logger
}

// NewSimulator returns the demo's simulator of d's SoR: a burst of burst
// changes every every (burst 0 disables it: Run only waits).
func (d *Demo) NewSimulator(every time.Duration, burst int, log *slog.Logger) *Simulator {
	return &Simulator{Path: d.SourcePath, Every: every, Burst: burst, Log: log}
}

// Name implements runner.Component.
func (s *Simulator) Name() string { return "demo-simulator" }

// Run makes bursts until ctx ends. A burst that fails (the file locked
// beyond the busy timeout) is logged and skipped: the next one tries again.
func (s *Simulator) Run(ctx context.Context) error {
	if s.Burst <= 0 || s.Every <= 0 {
		<-ctx.Done()
		return nil
	}
	db, err := open(s.Path, false)
	if err != nil {
		return fmt.Errorf("demo simulator: %w", err)
	}
	defer db.Close()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	tick := time.NewTicker(s.Every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		n, err := s.burst(ctx, db, r)
		switch {
		case errors.Is(err, context.Canceled) && ctx.Err() != nil:
			return nil
		case err != nil:
			s.Log.Warn("demo simulator burst failed", "error", err)
		default:
			s.Log.Debug("demo simulator changed the SoR", "inserted", n.inserted, "updated", n.updated, "deleted", n.deleted)
		}
	}
}

type counts struct{ inserted, updated, deleted int }

func (s *Simulator) burst(ctx context.Context, db *sql.DB, r *rand.Rand) (counts, error) {
	var n counts
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return n, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	now := timestamp(time.Now())
	for range s.Burst {
		p := r.IntN(100)
		switch {
		case p < 25:
			_, err = tx.ExecContext(ctx, `INSERT INTO invoices (id, customer, amount, status, updated_at)
  VALUES ((SELECT coalesce(max(id), 0) + 1 FROM invoices), ?, ?, 'draft', ?)`,
				customers[r.IntN(len(customers))], amount(r), now)
			n.inserted++
		case p < 40:
			_, err = tx.ExecContext(ctx, "DELETE FROM invoices WHERE id = (SELECT id FROM invoices ORDER BY random() LIMIT 1)")
			n.deleted++
		default:
			_, err = tx.ExecContext(ctx, `UPDATE invoices SET status = ?, amount = ?, updated_at = ?
  WHERE id = (SELECT id FROM invoices ORDER BY random() LIMIT 1)`,
				statuses[r.IntN(len(statuses))], amount(r), now)
			n.updated++
		}
		if err != nil {
			return counts{}, fmt.Errorf("change the demo SoR: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return counts{}, fmt.Errorf("commit: %w", err)
	}
	return n, nil
}
