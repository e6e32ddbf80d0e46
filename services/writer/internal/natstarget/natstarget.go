// Package natstarget publishes each change to a NATS subject, for
// downstream consumers.
//
// Each change becomes one message whose data is the change envelope of
// package changejson,
//
//	{"op":"upsert"|"delete","key":"…","fields":{…},"version":N}
//
// with headers Nats-Msg-Id (the change's idempotency key, the same
// sha256(pipeline, target, key, version) scheme as the HTTP target's
// Idempotency-Key) and Oneway-Version (N in decimal). The subject is a
// text/template rendered per change (default oneway.out.<pipeline>.<target>).
//
// Fencing: NATS cannot compare versions, so the target is fenced by a
// PostgreSQL side ledger (package sideledger, table
// <ledger_schema>.nats_ledger_<scope>): a change is published only when it
// is newer than, and differs in content from, what the ledger recorded for
// its key, and the key's ledger row stays locked until the publish is
// acknowledged and the ledger committed. Writers racing on a key therefore
// publish its changes in increasing version order.
//
// Delivery guarantee, precisely:
//
//   - JetStream (Spec.JetStream): each change is stored in the stream bound
//     to its subject before the ledger records it (the publish waits for the
//     stream's ack). A change whose ledger transaction is lost after the ack
//     (crash, commit failure, another change of the call failing) is
//     published again with the same Nats-Msg-Id, which the stream drops as a
//     duplicate within its duplicate window (default 2 minutes): effectively
//     once per change when redelivery happens within the window, at least
//     once otherwise. Per key, the stream holds increasing versions, except
//     that a change published by a call that then failed may be followed by
//     an older one before the newer is published again: the last message of
//     a key is always its newest version, and consumers that keep the
//     highest version per key converge on the source.
//   - Core NATS: the message is handed to the server (publish + flush)
//     before the ledger records it. Core NATS does not store messages: only
//     subscribers connected at that moment receive it, at most once each, and
//     a redelivered change is published again (subscribers deduplicate by
//     Nats-Msg-Id or version). Use core NATS for live notifications, JetStream
//     for anything that must not be lost.
package natstarget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/services/writer/internal/sideledger"
	"github.com/oneway-sync/oneway/services/writer/internal/sideledger/changejson"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/pgconn"
)

// Message headers.
const (
	HeaderMsgID   = "Nats-Msg-Id"
	HeaderVersion = "Oneway-Version"
)

const (
	defaultTimeout = 10 * time.Second
	// window is how many JetStream publishes are in flight before waiting
	// for their acks.
	window = 512
)

// Spec configures a Target.
type Spec struct {
	Pipeline, Target string
	// URL of the NATS server(s), comma-separated, dialled by Open when Conn
	// is nil (the connection is closed by Close).
	URL string
	// Conn is an open connection to publish on instead; Close leaves it
	// open. Give it ReconnectBufSize(-1) so publishes fail at once while it
	// is disconnected instead of waiting out Timeout.
	Conn *nats.Conn
	// Options are added to the connect options of the connection Open
	// dials: credentials, TLS, the inbox prefix the stream's acks come
	// back on (natsbus.AuthOptions).
	Options []nats.Option
	// Subject is a text/template rendered per change with .Key (string:
	// the record key as event.Key renders it), .KeyParts ([]string, the key
	// column values), .Fields (map[string]any, the values typed as in the
	// message; for a delete only the key columns) and .Op ("upsert" or
	// "delete"). "token" escapes a value for use as one subject token:
	// bytes other than ASCII letters, digits, '-' and '_' become %XX, e.g.
	// orders.{{.Op}}.{{.Key | token}}. Default "oneway.out.<pipeline>.<target>".
	Subject string
	// JetStream publishes to the stream bound to the subject and waits for
	// its acks; else core NATS publish, then a flush.
	JetStream bool
	// Timeout bounds the wait for the acks (JetStream) or the flush (core)
	// of one Apply; default 10s.
	Timeout      time.Duration
	Ledger       *pgxpool.Pool // PostgreSQL holding the fencing ledger
	LedgerSchema string        // default "oneway"
}

// Target publishes batches to NATS. Safe for concurrent use.
type Target struct {
	spec    Spec
	log     *slog.Logger
	subject *template.Template // nil: fixed
	fixed   string
	nc      *nats.Conn
	own     bool // nc was dialled by Open
	js      jetstream.JetStream
	ledger  *sideledger.Ledger
}

var _ target.Writer = (*Target)(nil)

// Open checks spec, connects (unless spec.Conn is given), registers the
// target in <ledger_schema>.ledger_scopes (table_name "nats:" + subject
// template), creates its ledger table and returns a Target. The NATS server
// need not be up: publishes fail as Unavailable until it is.
func Open(ctx context.Context, spec Spec, log *slog.Logger) (*Target, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if spec.Ledger == nil {
		return nil, errs.Permanentf("nats target %q: no ledger database", spec.Target)
	}
	if spec.Conn == nil && spec.URL == "" {
		return nil, errs.Permanentf("nats target %q: no URL", spec.Target)
	}
	if spec.Timeout <= 0 {
		spec.Timeout = defaultTimeout
	}
	if spec.LedgerSchema == "" {
		spec.LedgerSchema = sideledger.DefaultSchema
	}
	t := &Target{spec: spec, log: log}
	sink := spec.Subject
	if spec.Subject == "" {
		t.fixed = "oneway.out." + spec.Pipeline + "." + spec.Target
		if err := checkSubject(t.fixed); err != nil {
			return nil, errs.Permanentf("nats target %q: default subject: %w", spec.Target, err)
		}
		sink = t.fixed
	} else {
		tmpl, err := template.New("subject").
			Funcs(template.FuncMap{"token": func(v any) string { return Token(text(v)) }}).
			Option("missingkey=error").
			Parse(spec.Subject)
		if err != nil {
			return nil, errs.Permanentf("nats target %q: subject template: %w", spec.Target, err)
		}
		if !strings.Contains(spec.Subject, "{{") {
			if err := checkSubject(spec.Subject); err != nil {
				return nil, errs.Permanentf("nats target %q: %w", spec.Target, err)
			}
			t.fixed = spec.Subject
		} else {
			t.subject = tmpl
		}
	}
	var err error
	t.ledger, err = sideledger.Open(ctx, sideledger.Spec{
		Pipeline: spec.Pipeline, Target: spec.Target, Kind: "nats", Sink: sink,
		Describe: "NATS subject " + sink, Pool: spec.Ledger, Schema: spec.LedgerSchema,
	})
	if err != nil {
		return nil, err
	}
	t.nc = spec.Conn
	if t.nc == nil {
		t.nc, err = nats.Connect(spec.URL, append([]nats.Option{
			nats.Name("oneway-writer-" + spec.Pipeline + "-" + spec.Target),
			nats.MaxReconnects(-1),
			nats.ReconnectWait(250 * time.Millisecond),
			nats.RetryOnFailedConnect(true),
			// Fail publishes while disconnected instead of buffering them.
			nats.ReconnectBufSize(-1),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil {
					log.Warn("nats target disconnected", "target", spec.Target, "error", err)
				}
			}),
			nats.ReconnectHandler(func(c *nats.Conn) {
				log.Info("nats target reconnected", "target", spec.Target, "server", c.ConnectedUrlRedacted())
			}),
		}, spec.Options...)...)
		if err != nil {
			return nil, fmt.Errorf("nats target %q: connect: %w", spec.Target, err)
		}
		t.own = true
	}
	if spec.JetStream {
		t.js, err = jetstream.New(t.nc, jetstream.WithPublishAsyncTimeout(spec.Timeout))
		if err != nil {
			_ = t.Close()
			return nil, fmt.Errorf("nats target %q: JetStream: %w", spec.Target, err)
		}
	}
	return t, nil
}

// Close closes the connection Open dialled (a Spec.Conn stays open).
func (t *Target) Close() error {
	if t.own {
		t.nc.Close()
	}
	return nil
}

// Ledger is this target's ledger table.
func (t *Target) Ledger() pgconn.Table { return t.ledger.Table() }

// Scope is this target's id in the ledger catalog.
func (t *Target) Scope() int32 { return t.ledger.Scope() }

// Apply publishes the items' changes, fenced by the ledger, in one ledger
// transaction. Items must share one column layout. A change that cannot be
// published for good (its subject does not render or is invalid, it exceeds
// the server's max payload or the stream's max message size) comes back in
// Result.Failed; any other failure (server down, no stream answering, acks
// not in within Timeout) fails the call as errs.Unavailable, and nothing is
// recorded.
func (t *Target) Apply(ctx context.Context, items []target.Item) (target.Result, error) {
	return t.ledger.Apply(ctx, items, t.send)
}

// send publishes the batch and waits until the server has it.
func (t *Target) send(ctx context.Context, b sideledger.Batch) ([]sideledger.Outcome, error) {
	outs := make([]sideledger.Outcome, len(b.Decisions))
	msgs := make([]*nats.Msg, 0, len(b.Decisions))
	idx := make([]int, 0, len(b.Decisions)) // msgs[i] is decision idx[i]
	for i, d := range b.Decisions {
		m, err := t.message(b, d)
		if err != nil {
			outs[i].Err = err
			continue
		}
		msgs = append(msgs, m)
		idx = append(idx, i)
	}
	if len(msgs) == 0 {
		return outs, nil
	}
	wctx, cancel := context.WithTimeout(ctx, t.spec.Timeout)
	defer cancel()
	if t.js != nil {
		if err := t.publishJS(ctx, wctx, b, msgs, idx, outs); err != nil {
			return nil, err
		}
		return outs, nil
	}
	for i, m := range msgs {
		if err := t.nc.PublishMsg(m); err != nil {
			if permanent(err) {
				outs[idx[i]].Err = errs.Permanent(fmt.Errorf("publish key %s to %s: %w", b.Decisions[idx[i]].Key, m.Subject, err))
				continue
			}
			return nil, t.unavailable(ctx, "publish to "+m.Subject, err)
		}
	}
	if err := t.nc.FlushWithContext(wctx); err != nil {
		if ctx.Err() != nil {
			// Published messages may still reach the server: keep their
			// keys locked until they have, or cannot any more.
			t.settle(b, func() { _ = t.nc.FlushTimeout(t.spec.Timeout) })
		}
		return nil, t.unavailable(ctx, "flush", err)
	}
	return outs, nil
}

// settle keeps b's keys locked until wait returns.
func (t *Target) settle(b sideledger.Batch, wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait()
	}()
	b.Settle(done)
}

// publishJS publishes msgs to JetStream, window at a time, and waits for
// every ack.
func (t *Target) publishJS(ctx, wctx context.Context, b sideledger.Batch, msgs []*nats.Msg, idx []int, outs []sideledger.Outcome) error {
	futs := make([]jetstream.PubAckFuture, 0, min(window, len(msgs)))
	for start := 0; start < len(msgs); start += window {
		end := min(start+window, len(msgs))
		futs = futs[:0]
		for _, m := range msgs[start:end] {
			f, err := t.js.PublishMsgAsync(m)
			if err != nil {
				if permanent(err) {
					f = failed{err}
				} else {
					return t.unavailable(ctx, "publish to "+m.Subject, err)
				}
			}
			futs = append(futs, f)
		}
		for j, f := range futs {
			m := msgs[start+j]
			select {
			case <-f.Ok():
			case err := <-f.Err():
				if permanent(err) {
					outs[idx[start+j]].Err = errs.Permanent(fmt.Errorf("publish to %s: %w", m.Subject, err))
					continue
				}
				return t.unavailable(ctx, "publish to "+m.Subject, err)
			case <-wctx.Done():
				if ctx.Err() != nil {
					// Published messages may still be stored: keep their
					// keys locked until they are acked or time out.
					pending := slices.Clone(futs[j:])
					t.settle(b, func() {
						for _, f := range pending {
							select {
							case <-f.Ok():
							case <-f.Err():
							case <-time.After(t.spec.Timeout + time.Second):
								return
							}
						}
					})
				}
				return t.unavailable(ctx, fmt.Sprintf("wait for the acks of %d messages", end-start), wctx.Err())
			}
		}
	}
	return nil
}

// failed is a PubAckFuture for a publish refused before it was sent.
type failed struct{ err error }

func (f failed) Ok() <-chan *jetstream.PubAck { return nil }
func (f failed) Err() <-chan error {
	ch := make(chan error, 1)
	ch <- f.err
	return ch
}
func (f failed) Msg() *nats.Msg { return nil }

// message builds one change's message.
func (t *Target) message(b sideledger.Batch, d sideledger.Decision) (*nats.Msg, error) {
	subj := t.fixed
	if t.subject != nil {
		op := changejson.OpUpsert
		if d.Delete {
			op = changejson.OpDelete
		}
		var sb strings.Builder
		err := t.subject.Execute(&sb, subjectData{
			Key: d.Key, KeyParts: changejson.KeyParts(d.Values, b.KeyIdx),
			Fields: changejson.Fields(b.Columns, d.Values, d.Delete), Op: op,
		})
		if err != nil {
			return nil, errs.Permanentf("render subject of key %s: %w", d.Key, err)
		}
		subj = sb.String()
		if err := checkSubject(subj); err != nil {
			return nil, errs.Permanentf("render subject of key %s: %w", d.Key, err)
		}
	}
	data, err := changejson.Envelope(b.Columns, d.Values, d.Key, d.Delete, d.Version)
	if err != nil {
		return nil, errs.Permanentf("encode key %s: %w", d.Key, err)
	}
	m := nats.NewMsg(subj)
	m.Data = data
	m.Header.Set(HeaderMsgID, t.ledger.IdempotencyKey(d.Key, d.Version))
	m.Header.Set(HeaderVersion, strconv.FormatInt(d.Version, 10))
	return m, nil
}

// subjectData is what the subject template sees.
type subjectData struct {
	Key      string
	KeyParts []string
	Fields   map[string]any
	Op       string
}

// permanent reports whether a publish error rejects that one message for
// good: too large for the server or the stream, or a bad subject.
func permanent(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, nats.ErrBadSubject):
		return true
	case errors.As(err, &apiErr):
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
	}
	return false
}

// unavailable wraps a publish failure: ctx's own error when it ended, else
// an outage.
func (t *Target) unavailable(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errs.Unavailable(fmt.Errorf("nats target %s: %s: %w", t.spec.Target, what, err))
}

// checkSubject accepts a subject to publish to: dot-separated non-empty
// tokens, no wildcard token, no whitespace or control characters.
func checkSubject(s string) error {
	if s == "" {
		return errors.New("empty subject")
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return fmt.Errorf("subject %q: empty or wildcard token", s)
		}
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }); i >= 0 {
		return fmt.Errorf("subject %q: whitespace or control character", s)
	}
	return nil
}

// Token escapes s for use as one subject token: bytes other than ASCII
// letters, digits, '-' and '_' become %XX (upper-case hex); "" becomes "%".
func Token(s string) string {
	if s == "" {
		return "%"
	}
	const hex = "0123456789ABCDEF"
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			sb.WriteByte(c)
			continue
		}
		sb.WriteByte('%')
		sb.WriteByte(hex[c>>4])
		sb.WriteByte(hex[c&15])
	}
	return sb.String()
}

// text prints a template value: NULL is empty, json.Number its digits.
func text(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}
