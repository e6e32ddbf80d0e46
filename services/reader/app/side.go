package app

import (
	"fmt"
	"log/slog"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

// side is what one reader reads and where it publishes: the pipeline's
// source, or a target read back (staged mode). Everything a reader keeps
// (lease, position, capture state objects, Msg-Ids) is named after the
// side, so the readers of one pipeline never share state, and each fences
// its own subject.
type side struct {
	// name is "source" or "target.<t>" (the stage side it feeds).
	name string
	// src is what is read: the source, or for a read-back the target's
	// URL and table with the source's key and owned columns and the
	// read-back's capture.
	src config.Source
	// subject is where its batches go.
	subject string
	// applied is, for a read-back, the target's applied subject, whose
	// reports a synthetic or window cycle merges (capture.Cycle.Reported);
	// "" for the source.
	applied string
	// service labels its logs, metrics and health: "reader" or
	// "readback-<t>".
	service string
}

func sourceSide(cfg *config.Pipeline) side {
	return side{name: "source", src: cfg.Source, subject: bus.SourceSubject(cfg.Pipeline), service: "reader"}
}

// readbackSide is the read-back of target: its table, read like a source
// (the source's key and owned columns, the read-back's pattern), published
// on the target's subject with origin "target.<t>" — what the stager
// stages as the target's side.
func readbackSide(cfg *config.Pipeline, target string) (side, error) {
	t, ok := cfg.Target(target)
	if !ok {
		return side{}, errs.Permanentf("pipeline %s has no target %q", cfg.Pipeline, target)
	}
	switch {
	case !cfg.Staged():
		return side{}, errs.Permanentf("target %s: a read-back runs in staged mode only (mode is %s)", target, cfg.Mode)
	case t.Kind != config.KindPostgres && t.Kind != config.KindSQLite:
		return side{}, errs.Permanentf("target %s: a read-back reads PostgreSQL and SQLite targets only, not %s", target, t.Kind)
	case t.Readback == nil:
		return side{}, errs.Permanentf("target %s has no readback configured (targets[].readback)", target)
	}
	rb := t.Readback
	capt := config.Capture{Pattern: rb.Pattern, Column: rb.Column, Window: rb.Window,
		BatchSize: rb.BatchSize, PollInterval: rb.PollInterval}
	src := config.Source{Kind: t.Kind, URL: t.URL, Table: t.Table,
		Key: cfg.Source.Key, Columns: cfg.Source.Columns, Capture: capt}
	name := "target." + target
	return side{name: name, src: src, subject: bus.TargetSubject(cfg.Pipeline, target), service: "readback-" + target,
		applied: bus.AppliedSubject(cfg.Pipeline, target)}, nil
}

// origin is the Origin of the side's batches: "source", or "target.<t>".
func (s side) origin() string { return s.name }

// NewReadback returns the read-back reader of target: a reader of the
// target's table (PostgreSQL or SQLite) that publishes what it finds on
// oneway.<p>.target.<t>, for the stager. The target must have readback
// configured and the pipeline must be staged. metrics may be nil.
func NewReadback(cfg *config.Pipeline, target string, b *natsbus.Bus, log *slog.Logger, metrics *telemetry.Metrics) (*Reader, error) {
	s, err := readbackSide(cfg, target)
	if err != nil {
		return nil, fmt.Errorf("read-back: %w", err)
	}
	return newReader(cfg, s, b, log.With("target", target), metrics), nil
}
