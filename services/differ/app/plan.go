package app

import (
	"context"
	"fmt"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/services/differ/internal/diff"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/stage"
)

// Plan is what the next diff of one target would do, as `oneway diff
// --dry-run` prints it.
type Plan struct {
	Target string
	// Counts and Samples are by action name (diff.Action.String, plus
	// "stuck": a push the push cap stops).
	Counts  map[string]int64
	Samples map[string][]string
	// Deletes are the deletes the diff would push; Total the live records
	// staged for the target; Limit the deletes the breaker lets through in
	// a window without approval.
	Deletes, Total, Limit int64
	// Breaker is "off" (allow: true), "approved", "held", "would hold" or
	// "ok".
	Breaker string
	Hold    *stage.Hold
}

// maxStuck bounds the stuck keys a dry run loads.
const maxStuck = 100_000

// DryRun joins every key of target without publishing anything and says
// what the differ would do. cols are the stage layout's columns with the
// source's types (for normalised comparison); samples bounds the keys kept
// per action.
func DryRun(ctx context.Context, cfg *config.Pipeline, store stage.Store, cols []*onewayv1.Column, target string, samples int) (Plan, error) {
	t, ok := cfg.Target(target)
	if !ok {
		return Plan{}, fmt.Errorf("pipeline %s has no target %q", cfg.Pipeline, target)
	}
	pol := PolicyOf(*t)
	cmp := diff.NewComparer(cols)
	equal := func(a, b *stage.Record) bool { return string(a.Hash) == string(b.Hash) || cmp.Equal(a.Row, b.Row) }

	stuck := map[string]int64{}
	for after := ""; len(stuck) < maxStuck; {
		page, err := store.Stuck(ctx, target, t.MaxPushesPerVersion, after, 1000)
		if err != nil {
			return Plan{}, fmt.Errorf("read stuck keys of target %s: %w", target, err)
		}
		if len(page) == 0 {
			break
		}
		for _, s := range page {
			stuck[s.Key] = s.Version
		}
		after = page[len(page)-1].Key
	}

	p := Plan{Target: target, Counts: map[string]int64{}, Samples: map[string][]string{}}
	for after := ""; ; {
		pairs, err := store.Scan(ctx, target, after, chunk)
		if err != nil {
			return Plan{}, fmt.Errorf("scan target %s: %w", target, err)
		}
		if len(pairs) == 0 {
			break
		}
		after = pairs[len(pairs)-1].Key.Text
		for _, pair := range pairs {
			a := diff.Decide(pair, pol, equal)
			name := a.String()
			if v, ok := stuck[pair.Key.Text]; ok && a.Pushes() && v == sourceVersion(pair) {
				name = "stuck"
			} else if a.Deletes() {
				p.Deletes++
			}
			p.Counts[name]++
			if a != diff.None && len(p.Samples[name]) < samples {
				p.Samples[name] = append(p.Samples[name], pair.Key.Text)
			}
		}
	}
	c, err := store.Count(ctx, stage.TargetSide(target))
	if err != nil {
		return Plan{}, fmt.Errorf("count records of target %s: %w", target, err)
	}
	p.Total = c.Live
	p.Limit = deleteLimit(t.Breaker.MaxDeleteShare, p.Total)
	holds, err := store.Holds(ctx)
	if err != nil {
		return Plan{}, fmt.Errorf("read holds: %w", err)
	}
	for i := range holds {
		if holds[i].Target == target {
			p.Hold = &holds[i]
		}
	}
	switch {
	case t.Breaker.Allow:
		p.Breaker = "off"
	case p.Hold != nil && p.Hold.State == stage.HoldApproved:
		p.Breaker = "approved"
	case p.Hold != nil:
		p.Breaker = "held"
	case p.Deletes > p.Limit:
		p.Breaker = "would hold"
	default:
		p.Breaker = "ok"
	}
	return p, nil
}
