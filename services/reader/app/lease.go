package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// One reader per pipeline side is active at a time. Liveness comes from a
// lease in the state bucket: the holder renews it every leaseRenew; a
// standby takes it over once it has not been renewed for leaseTTL. Safety
// does not rest on the lease (clocks and pauses make leases fallible): every
// publish also carries the stream sequence the reader expects to be last on
// its subject, so a reader that lost the lease without knowing (a paused
// process waking up) has its next publish refused. See publishFenced.
const (
	leaseTTL   = 6 * time.Second
	leaseRenew = 2 * time.Second
)

type leaseValue struct {
	Holder  string    `json:"holder"`
	Renewed time.Time `json:"renewed"`
}

// lease is a held lease. lost is closed when a renewal fails.
type lease struct {
	lost chan struct{}
	stop func()
}

func holderID() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%d", host, os.Getpid(), time.Now().UnixNano())
}

// acquireLease blocks until this reader holds the lease under key, or ctx
// ends. It then renews the lease in the background until stop is called or
// a renewal fails (lost is closed).
func acquireLease(ctx context.Context, kv jetstream.KeyValue, key, holder string, log *slog.Logger) (*lease, error) {
	waiting := false
	for {
		rev, err := tryLease(ctx, kv, key, holder)
		if err == nil {
			if waiting {
				log.Info("reader lease taken over; this reader is now active", "lease", key)
			}
			return renewLease(ctx, kv, key, holder, rev, log), nil
		}
		if !errors.Is(err, errLeaseHeld) {
			log.Warn("reader lease check failed; retrying", "error", err)
		} else if !waiting {
			waiting = true
			log.Info("another reader holds the lease; standing by", "lease", key)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(leaseRenew):
		}
	}
}

var errLeaseHeld = errors.New("lease held by another reader")

// tryLease takes the lease if it is free or expired, with compare-and-set
// on the entry's revision so two standbys cannot both take it.
func tryLease(ctx context.Context, kv jetstream.KeyValue, key, holder string) (uint64, error) {
	val, _ := json.Marshal(leaseValue{Holder: holder, Renewed: time.Now()})
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		rev, err := kv.Create(ctx, key, val)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return 0, errLeaseHeld
		}
		return rev, err
	}
	if err != nil {
		return 0, err
	}
	var cur leaseValue
	_ = json.Unmarshal(e.Value(), &cur)
	if cur.Holder != holder && time.Since(cur.Renewed) < leaseTTL && time.Since(e.Created()) < leaseTTL {
		return 0, errLeaseHeld
	}
	rev, err := kv.Update(ctx, key, val, e.Revision())
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, errLeaseHeld // another reader took or renewed it first
	}
	return rev, err
}

func renewLease(ctx context.Context, kv jetstream.KeyValue, key, holder string, rev uint64, log *slog.Logger) *lease {
	l := &lease{lost: make(chan struct{})}
	done := make(chan struct{})
	finished := make(chan struct{})
	l.stop = func() {
		close(done)
		<-finished
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(leaseRenew)
		defer t.Stop()
		for {
			select {
			case <-done:
				// Release, so a standby need not wait for the TTL.
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				_ = kv.Delete(rctx, key, jetstream.LastRevision(rev))
				cancel()
				return
			case <-t.C:
			}
			val, _ := json.Marshal(leaseValue{Holder: holder, Renewed: time.Now()})
			rctx, cancel := context.WithTimeout(ctx, leaseRenew)
			next, err := kv.Update(rctx, key, val, rev)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					log.Warn("reader lease lost", "lease", key, "error", err)
				}
				close(l.lost)
				<-done
				return
			}
			rev = next
		}
	}()
	return l
}
