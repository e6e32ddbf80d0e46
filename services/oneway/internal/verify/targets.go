package verify

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// SkipError says that a target cannot be read back, and why.
type SkipError struct{ Reason string }

func (e *SkipError) Error() string { return "cannot be read back: " + e.Reason }

// TargetSpec is one configured target to read back.
type TargetSpec struct {
	Pipeline string
	Target   config.Target
	Layout   *Layout
	// TempDir holds the fold databases of targets read as logs; empty =
	// os.TempDir(). They take about the size of the target's live data.
	TempDir string
	// Progress, when set, is called while a log is folded with the number
	// of changes read so far.
	Progress func(scanned int64)
}

// OpenTarget reads a configured target as a Side, by kind: a PostgreSQL
// table directly in key order; a SQLite table, a JSONL file, a NATS
// JetStream stream and a Kafka topic folded (Fold). It returns a
// *SkipError for a target that cannot be read back (an HTTP API, a core
// NATS subject no stream keeps). what describes the target for the
// report (table, file, subject or topic).
func OpenTarget(ctx context.Context, s TargetSpec) (side Side, what string, err error) {
	t := s.Target
	fold := func(scan Scan) (Side, error) { return Fold(ctx, s.Layout, s.TempDir, scan, s.Progress) }
	switch t.Kind {
	case config.KindPostgres:
		schema, table, err := config.SplitTable(t.Table)
		if err != nil {
			return nil, "", err
		}
		pool, err := pgconn.Open(ctx, t.URL.Value(), "oneway-verify", 2)
		if err != nil {
			return nil, "", err
		}
		tbl := pgconn.Table{Schema: schema, Name: table}
		side, err := OpenPostgres(ctx, pool, tbl, s.Layout)
		if err != nil {
			pool.Close()
			return nil, "", fmt.Errorf("target %s: %w", t.Name, err)
		}
		return &closer{Side: side, close: pool.Close}, tbl.String(), nil
	case config.KindSQLite:
		table := t.Table
		if _, name, err := config.SplitTable(t.Table); err == nil {
			table = name // SQLite has no schemas: the writer drops it
		}
		side, err := fold(ScanSQLite(t.URL.Value(), table, s.Layout))
		return side, fmt.Sprintf("%s in %s", table, t.URL.Value()), wrap(t, err)
	case config.KindJSONL:
		side, err := fold(ScanJSONL(t.URL.Value(), s.Layout))
		return side, t.URL.Value(), wrap(t, err)
	case config.KindNATS:
		spec := NATSSpec{Pipeline: s.Pipeline, Target: t.Name, URL: t.URL.Value(), Subject: t.NATS.Subject,
			Options: natsbus.AuthOptions(t.NATS.NATSAuth)}
		what = "subject " + FilterSubject(spec.Pipeline, spec.Target, spec.Subject)
		side, err := fold(ScanNATS(spec, s.Layout))
		if errors.Is(err, ErrNoStream) && !t.NATS.JetStream {
			return nil, what, &SkipError{Reason: "core NATS keeps no messages and no JetStream stream holds the subject"}
		}
		return side, what, wrap(t, err)
	case config.KindKafka:
		var brokers []string
		for _, b := range strings.Split(t.URL.Value(), ",") {
			if b = strings.TrimSpace(b); b != "" {
				brokers = append(brokers, b)
			}
		}
		side, err := fold(ScanKafka(brokers, t.Kafka.Topic, t.Kafka.KafkaAuth, s.Layout))
		return side, "topic " + t.Kafka.Topic, wrap(t, err)
	case config.KindMySQL:
		return openMySQL(ctx, s, fold)
	case config.KindHTTP:
		return nil, "", &SkipError{Reason: "an HTTP API has no read-back yet, so its records are not compared"}
	}
	return nil, "", &SkipError{Reason: fmt.Sprintf("no read-back for kind %q", t.Kind)}
}

func wrap(t config.Target, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("target %s: %w", t.Name, err)
}

// closer closes a resource after its side.
type closer struct {
	Side
	close func()
}

func (c *closer) Close() error {
	err := c.Side.Close()
	c.close()
	return err
}
