// Package natsbus is oneway's NATS JetStream plumbing: connection, stream and
// consumer bootstrap, idempotent publishing that waits out stalls, and the
// durable pull-consumer loop that every consuming service runs.
package natsbus

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/config"
)

// MaxPendingAsync is the async-publish window. JetStream stalls publishers
// past about 4,000 pending acks; Publish waits and retries instead of
// failing or dropping.
const MaxPendingAsync = 4000

// Bus is a connection to NATS with its JetStream context. It is safe for
// concurrent use. Close it when done.
type Bus struct {
	NC  *nats.Conn
	JS  jetstream.JetStream
	log *slog.Logger
	// refused holds the permission violations the server reported on NC
	// (a connection made by Connect; New's never records one).
	refused *refusals
}

// refusals remembers the last permission violation a server reported on a
// connection. The server reports a refused publish asynchronously, and a
// refused request gets no reply: it times out like one to a server that
// is not ready, and only this tells the two apart. Safe for concurrent use.
type refusals struct {
	mu   sync.Mutex
	last error
	at   time.Time
	// logged is when each violation (by its text, which names the
	// subject) was last logged, and how many were not logged since.
	logged map[string]*refusalLog
	now    func() time.Time // time.Now when nil (tests set it)
}

type refusalLog struct {
	at         time.Time
	suppressed int
}

// refusalLogEvery is how often one violation is logged again: a loop that
// is refused (a fetch every 250 ms) must not flood the log.
const refusalLogEvery = time.Minute

// record notes err and reports whether to log it, and how many of the same
// went unlogged before it.
func (r *refusals) record(err error) (log bool, suppressed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.now != nil {
		now = r.now()
	}
	r.last, r.at = err, now
	if r.logged == nil || len(r.logged) > 1000 {
		r.logged = map[string]*refusalLog{}
	}
	l := r.logged[err.Error()]
	if l != nil && now.Sub(l.at) < refusalLogEvery {
		l.suppressed++
		return false, 0
	}
	if l == nil {
		l = &refusalLog{}
		r.logged[err.Error()] = l
	}
	suppressed, l.at, l.suppressed = l.suppressed, now, 0
	return true, suppressed
}

// since is the last violation reported at or after t; nil if none.
func (r *refusals) since(t time.Time) error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil || r.at.Before(t) {
		return nil
	}
	return r.last
}

// Refused is the last permission violation the server reported on this
// connection at or after t, with what to do about it; nil if none (always
// for a Bus made by New). A refused publish or request fails no call: it
// gets no reply, so a caller that waits on one asks this to tell a refusal
// from a slow server.
func (b *Bus) Refused(t time.Time) error {
	if v := b.refused.since(t); v != nil {
		return fmt.Errorf("%w (%s)", v, grantHint)
	}
	return nil
}

// grantHint says what to do about a permission violation.
const grantHint = "the NATS server's authorization does not grant this user what the service needs: `oneway permissions --config FILE` writes every grant the services need"

// Connect dials url and sets up JetStream. The connection reconnects
// forever; disconnects and reconnects are logged. name identifies the client
// to the server (use the service name).
func Connect(ctx context.Context, url, name string, log *slog.Logger, extra ...nats.Option) (*Bus, error) {
	if url == "" {
		return nil, errors.New("connect to NATS: no URL configured")
	}
	denied := &refusals{}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "server", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(c *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				if ok, suppressed := denied.record(err); ok {
					log.Error("NATS refused this user an operation", "user", c.Opts.User, "error", err,
						"refused_since_last_logged", suppressed, "hint", grantHint)
				}
				return
			}
			log.Warn("nats async error", "error", err)
		}),
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	// RetryOnFailedConnect returns at once; wait for the first connection.
	deadline := time.Now().Add(30 * time.Second)
	for !nc.IsConnected() {
		// A server that answers but refuses the credentials or the TLS
		// handshake will not change its mind: say so at once.
		if err := nc.LastError(); err != nil && refused(err) {
			nc.Close()
			return nil, fmt.Errorf("connect to NATS %s: %w", config.Secret(url), err)
		}
		if time.Now().After(deadline) {
			err := nc.LastError()
			nc.Close()
			return nil, fmt.Errorf("connect to NATS %s: no server answered within 30s (last error: %v)", config.Secret(url), err)
		}
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("connect to NATS: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	b, err := New(nc, log)
	if err != nil {
		return nil, err
	}
	b.refused = denied
	return b, nil
}

// refused reports an error a retry cannot fix: bad credentials or TLS.
func refused(err error) bool {
	if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) ||
		errors.Is(err, nats.ErrSecureConnRequired) || errors.Is(err, nats.ErrSecureConnWanted) {
		return true
	}
	var cert *tls.CertificateVerificationError
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	return errors.As(err, &cert) || errors.As(err, &unknown) || errors.As(err, &host)
}

// New wraps an open connection.
func New(nc *nats.Conn, log *slog.Logger) (*Bus, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(MaxPendingAsync))
	if err != nil {
		return nil, fmt.Errorf("open JetStream: %w", err)
	}
	return &Bus{NC: nc, JS: js, log: log}, nil
}

// Close drains the connection: in-flight publishes and subscriptions finish.
func (b *Bus) Close() {
	if b == nil || b.NC == nil {
		return
	}
	if err := b.NC.Drain(); err != nil {
		b.NC.Close()
	}
}

// StreamSpec is what a pipeline's stream must look like.
type StreamSpec struct {
	Pipeline        string
	MaxBytes        int64
	MaxAge          time.Duration
	Replicas        int
	DuplicateWindow time.Duration
}

// PipelineStream is the stream spec every service of a pipeline ensures.
func PipelineStream(cfg *config.Pipeline) StreamSpec {
	return StreamSpec{
		Pipeline: cfg.Pipeline, MaxBytes: cfg.NATS.MaxBytes, MaxAge: cfg.NATS.MaxAge.Duration,
		Replicas: cfg.NATS.Replicas, DuplicateWindow: cfg.NATS.DuplicateWindow.Duration,
	}
}

// EnsureStream creates or updates the pipeline's stream: file storage, limits
// retention, DiscardNew (a full stream refuses publishes instead of silently
// dropping unconsumed changes), and the Nats-Msg-Id duplicate window.
// It is idempotent and safe to call from every service at start.
func (b *Bus) EnsureStream(ctx context.Context, s StreamSpec) (jetstream.Stream, error) {
	replicas := max(s.Replicas, 1)
	cfg := jetstream.StreamConfig{
		Name:        bus.StreamName(s.Pipeline),
		Description: "oneway pipeline " + s.Pipeline,
		Subjects:    bus.StreamSubjects(s.Pipeline),
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    s.MaxBytes,
		MaxAge:      s.MaxAge,
		Replicas:    replicas,
		Duplicates:  s.DuplicateWindow,
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = -1
	}
	var st jetstream.Stream
	err := b.setup(ctx, "stream "+cfg.Name, func(ctx context.Context) (err error) {
		// A stream that is already as wanted is left alone: every service
		// of a pipeline ensures it at start, and an update racing the
		// others' consumer creation is the server's least-trodden path
		// (nats-server 2.15 reports a data race between the two).
		// Services starting together must not update a stream another one
		// just created (CreateOrUpdateStream tries an update first): create
		// it when it is missing, update it only when it differs.
		st, err = b.JS.Stream(ctx, cfg.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			st, err = b.JS.CreateStream(ctx, cfg)
			if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return err
			}
			// Created meanwhile by another service, with other settings.
			st, err = b.JS.Stream(ctx, cfg.Name)
		}
		if err != nil {
			return err
		}
		if sameStream(st.CachedInfo().Config, cfg) {
			return nil
		}
		st, err = b.JS.UpdateStream(ctx, cfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
	}
	return st, nil
}

// sameStream reports whether an existing stream's config has every
// setting EnsureStream sets as wanted.
func sameStream(have, want jetstream.StreamConfig) bool {
	return slices.Equal(have.Subjects, want.Subjects) && have.Description == want.Description &&
		have.Storage == want.Storage && have.Retention == want.Retention && have.Discard == want.Discard &&
		have.MaxBytes == want.MaxBytes && have.MaxAge == want.MaxAge && have.Replicas == want.Replicas &&
		have.Duplicates == want.Duplicates
}

// ConsumerSpec is a durable pull consumer.
type ConsumerSpec struct {
	Stream  string
	Durable string
	// FilterSubject and FilterSubjects select the subjects the consumer
	// receives; both may be set, and their union is used (one subject is
	// configured as the server's single filter_subject).
	FilterSubject  string
	FilterSubjects []string
	AckWait        time.Duration
	// MaxAckPending bounds the messages handed out and not yet acked.
	MaxAckPending int
}

// PipelineConsumer ensures, in this order, the pipeline's stream, the
// state bucket and the durable consumer spec describes, and returns the
// bucket and the consumer: what a staged-push service (stager, differ)
// needs before it consumes. Idempotent, like the calls it makes.
func (b *Bus) PipelineConsumer(ctx context.Context, cfg *config.Pipeline, spec ConsumerSpec) (jetstream.KeyValue, jetstream.Consumer, error) {
	if _, err := b.EnsureStream(ctx, PipelineStream(cfg)); err != nil {
		return nil, nil, err
	}
	kv, err := b.StateKV(ctx, cfg.NATS.Replicas)
	if err != nil {
		return nil, nil, err
	}
	cons, err := b.EnsureConsumer(ctx, spec)
	if err != nil {
		return nil, nil, err
	}
	return kv, cons, nil
}

// EnsureConsumer creates or updates a durable pull consumer with explicit
// acks and unlimited deliveries (the consume loop dead-letters by its own
// count, so the server never silently gives up on a message).
func (b *Bus) EnsureConsumer(ctx context.Context, s ConsumerSpec) (jetstream.Consumer, error) {
	cfg := jetstream.ConsumerConfig{
		Durable:       s.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: s.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if subjects := s.filters(); len(subjects) == 1 {
		cfg.FilterSubject = subjects[0]
	} else {
		cfg.FilterSubjects = subjects
	}
	var c jetstream.Consumer
	err := b.setup(ctx, "consumer "+s.Durable, func(ctx context.Context) (err error) {
		c, err = b.JS.CreateOrUpdateConsumer(ctx, s.Stream, cfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s on %s: %w", s.Durable, s.Stream, err)
	}
	return c, nil
}

// filters is the union of FilterSubject and FilterSubjects, in order,
// without repeats.
func (s ConsumerSpec) filters() []string {
	var out []string
	seen := map[string]bool{}
	for _, f := range append([]string{s.FilterSubject}, s.FilterSubjects...) {
		if f != "" && !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	return out
}

// StateKV opens (creating if needed) the bucket of reader positions.
func (b *Bus) StateKV(ctx context.Context, replicas int) (jetstream.KeyValue, error) {
	var kv jetstream.KeyValue
	want := jetstream.KeyValueConfig{
		Bucket:      bus.StateBucket,
		Description: "oneway reader positions and leases",
		History:     5,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
	err := b.setup(ctx, "bucket "+bus.StateBucket, func(ctx context.Context) (err error) {
		// As EnsureStream: a bucket already as wanted is not updated.
		if kv, err = b.JS.KeyValue(ctx, want.Bucket); err == nil {
			if st, err := b.JS.Stream(ctx, "KV_"+want.Bucket); err == nil {
				c := st.CachedInfo().Config
				if c.Description == want.Description && c.MaxMsgsPerSubject == int64(want.History) &&
					c.Storage == want.Storage && c.Replicas == want.Replicas {
					return nil
				}
			}
		}
		kv, err = b.JS.CreateOrUpdateKeyValue(ctx, want)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open state bucket %s: %w", bus.StateBucket, err)
	}
	return kv, nil
}

// CaptureStore opens (creating if needed) the Object Store bucket of
// capture state (hash lists, overlap hashes).
func (b *Bus) CaptureStore(ctx context.Context, replicas int) (jetstream.ObjectStore, error) {
	st, err := b.JS.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      bus.CaptureBucket,
		Description: "oneway capture state: hash lists and overlap hashes",
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("open capture state bucket %s: %w", bus.CaptureBucket, err)
	}
	return st, nil
}

// PublishAsync publishes data with a Nats-Msg-Id so that a retry of the same
// message is a duplicate, not a second event. When the async window is full
// it waits for acks to come back and tries again, until ctx ends: it never
// drops a message. The returned future reports the broker's ack; a caller
// that sees an error on it must publish again with the same msgID.
func (b *Bus) PublishAsync(ctx context.Context, subject string, data []byte, msgID string) (jetstream.PubAckFuture, error) {
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	return b.PublishMsgAsync(ctx, msg, msgID)
}

// PublishMsgAsync is PublishAsync for a message with headers.
func (b *Bus) PublishMsgAsync(ctx context.Context, msg *nats.Msg, msgID string) (jetstream.PubAckFuture, error) {
	for {
		f, err := b.JS.PublishMsgAsync(msg, jetstream.WithMsgID(msgID), jetstream.WithStallWait(250*time.Millisecond))
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return nil, fmt.Errorf("publish to %s: %w", msg.Subject, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("publish to %s: %w", msg.Subject, ctx.Err())
		case <-b.JS.PublishAsyncComplete():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitAcks waits for the broker's acks of async publishes and returns the
// first failure (the caller publishes again with the same Msg-Ids), or
// ctx's error. Acks that have not come within AckTimeout are a failure
// too (a connection lost meanwhile).
func WaitAcks(ctx context.Context, futures []jetstream.PubAckFuture) error {
	if len(futures) == 0 {
		return nil
	}
	timeout := time.NewTimer(AckTimeout)
	defer timeout.Stop()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("publish to %s: %w", f.Msg().Subject, err)
		case <-timeout.C:
			return fmt.Errorf("publish to %s: no ack within %s", f.Msg().Subject, AckTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// AckTimeout bounds WaitAcks.
const AckTimeout = 30 * time.Second

// PublishMsg publishes synchronously and waits for the broker's ack.
func (b *Bus) PublishMsg(ctx context.Context, msg *nats.Msg, msgID string) (*jetstream.PubAck, error) {
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	ack, err := b.JS.PublishMsg(ctx, msg, opts...)
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", msg.Subject, err)
	}
	return ack, nil
}

// WatchRefusals reports on the connection's permissions for a readiness
// probe: every `every` it calls notReady while the server refused this
// user an operation within the last `window`, and ready otherwise (ready
// and notReady as telemetry.Health.Register returns them). A service stuck
// on a missing grant after its start (a refused fetch, publish or ack is
// retried, not fatal) then shows on /readyz, not only in its log. It
// returns nil when ctx ends.
func (b *Bus) WatchRefusals(ctx context.Context, every, window time.Duration, ready, notReady func()) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if b.refused.since(time.Now().Add(-window)) != nil {
			notReady()
		} else {
			ready()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
