// Package dlq reads, re-drives and deletes a pipeline's dead letters: the
// changes a target rejected, kept in the pipeline's stream on
// oneway.<p>.dlq.<target> (see the writer and shared/natsbus).
//
// Re-driving keeps version order. A change's version is derived from the
// stream sequence of the message that first carried it, and the writer's
// ledger fences on it. Republishing a dead letter to the source subject
// would give it a new, higher sequence and could overwrite a newer change
// of its key. So Retry publishes it to the target's retry subject with its
// original sequence in a header; the writer applies it with that sequence,
// and the ledger skips it when the key changed since.
package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/event"
)

// Letter is one dead letter.
type Letter struct {
	Seq     uint64 // its sequence in the pipeline's stream
	Subject string
	Target  string // from the subject
	Key     string // empty when a whole message was dead-lettered
	// OriginalSubject and OriginalSeq name the message the change came
	// from (OriginalSeq 0: unknown).
	OriginalSubject string
	OriginalSeq     uint64
	Attempts        string
	Time            time.Time
	Error           string
	Header          nats.Header
	Data            []byte
}

// Store is a pipeline's dead letters.
type Store struct {
	pipeline string
	js       jetstream.JetStream
	st       jetstream.Stream // nil: the pipeline has no stream yet
}

// ErrNotFound is returned for a sequence that holds no dead letter.
var ErrNotFound = errors.New("no such dead letter")

// Open finds the pipeline's stream. It creates nothing: a pipeline that
// never ran has no stream and no dead letters.
func Open(ctx context.Context, js jetstream.JetStream, pipeline string) (*Store, error) {
	s := &Store{pipeline: pipeline, js: js}
	st, err := js.Stream(ctx, bus.StreamName(pipeline))
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return nil, fmt.Errorf("open stream %s: %w", bus.StreamName(pipeline), err)
	default:
		s.st = st
	}
	return s, nil
}

// HasStream reports whether the pipeline's stream exists.
func (s *Store) HasStream() bool { return s.st != nil }

// List returns the dead letters of target (all targets when empty), in
// stream order.
func (s *Store) List(ctx context.Context, target string) ([]Letter, error) {
	if s.st == nil {
		return nil, nil
	}
	filter := bus.DLQSubjects(s.pipeline)
	if target != "" {
		filter = bus.DLQSubject(s.pipeline, target)
	}
	var out []Letter
	for seq := uint64(1); ; {
		m, err := s.st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read dead letters at stream seq %d: %w", seq, err)
		}
		out = append(out, s.letter(m))
		seq = m.Sequence + 1
	}
}

// Get returns the dead letter at stream sequence seq.
func (s *Store) Get(ctx context.Context, seq uint64) (Letter, error) {
	if s.st == nil {
		return Letter{}, fmt.Errorf("stream seq %d: %w (pipeline %s has no stream yet)", seq, ErrNotFound, s.pipeline)
	}
	m, err := s.st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Letter{}, fmt.Errorf("stream seq %d: %w", seq, ErrNotFound)
	}
	if err != nil {
		return Letter{}, fmt.Errorf("read stream seq %d: %w", seq, err)
	}
	l := s.letter(m)
	if l.Target == "" {
		return Letter{}, fmt.Errorf("stream seq %d: %w (it is on %s)", seq, ErrNotFound, m.Subject)
	}
	return l, nil
}

func (s *Store) letter(m *jetstream.RawStreamMsg) Letter {
	h := m.Header
	if h == nil {
		h = nats.Header{}
	}
	l := Letter{
		Seq: m.Sequence, Subject: m.Subject, Key: h.Get(bus.HeaderKey),
		OriginalSubject: h.Get(bus.HeaderSubject), Attempts: h.Get(bus.HeaderAttempts),
		Time: m.Time, Error: h.Get(bus.HeaderError), Header: h, Data: m.Data,
	}
	if prefix := bus.DLQSubject(s.pipeline, ""); strings.HasPrefix(m.Subject, prefix) {
		l.Target = strings.TrimPrefix(m.Subject, prefix)
	}
	l.OriginalSeq, _ = strconv.ParseUint(h.Get(bus.HeaderSequence), 10, 64)
	return l
}

// CheckConsumer fails when the target's writer consumer exists but does
// not receive the target's retry subject (writers older than retries
// created it): a retry published now would never be applied. A consumer
// that does not exist yet is created by the writers from the start of the
// stream, retries included.
func (s *Store) CheckConsumer(ctx context.Context, target string) error {
	name := bus.WriterConsumer(s.pipeline, target)
	c, err := s.js.Consumer(ctx, bus.StreamName(s.pipeline), name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read consumer %s: %w", name, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return fmt.Errorf("read consumer %s: %w", name, err)
	}
	filters := info.Config.FilterSubjects
	if info.Config.FilterSubject != "" {
		filters = append(filters, info.Config.FilterSubject)
	}
	if len(filters) == 0 {
		return nil // the whole stream
	}
	retry := bus.RetrySubject(s.pipeline, target)
	for _, f := range filters {
		if SubjectMatches(f, retry) {
			return nil
		}
	}
	return fmt.Errorf("writer consumer %s does not receive %s (filter %s): run this version's writers for target %s once (they update the consumer), then retry",
		name, retry, strings.Join(filters, ", "), target)
}

// OriginalSequence is the stream sequence of the message the dead-lettered
// change first came in, which gives its version. A dead letter made by the
// consume loop from a retry message names that message instead; the
// original is then read from the retry message's header, while it is still
// in the stream.
func (s *Store) OriginalSequence(ctx context.Context, l Letter) (uint64, error) {
	source := bus.SourceSubject(s.pipeline)
	switch l.OriginalSubject {
	case source, bus.PushSubject(s.pipeline, l.Target):
		if l.OriginalSeq == 0 {
			return 0, fmt.Errorf("dead letter %d has no valid %s header: its original version is unknown", l.Seq, bus.HeaderSequence)
		}
		return l.OriginalSeq, nil
	case bus.RetrySubject(s.pipeline, l.Target):
		if l.OriginalSeq == 0 || s.st == nil {
			return 0, fmt.Errorf("dead letter %d names no retry message: its original version is unknown", l.Seq)
		}
		m, err := s.st.GetMsg(ctx, l.OriginalSeq)
		if err != nil {
			return 0, fmt.Errorf("dead letter %d came from retry message %d, which cannot be read (%v): its original version is unknown", l.Seq, l.OriginalSeq, err)
		}
		orig, err := strconv.ParseUint(m.Header.Get(bus.HeaderSequence), 10, 64)
		if m.Subject != l.OriginalSubject || err != nil || orig == 0 || orig >= m.Sequence {
			return 0, fmt.Errorf("dead letter %d came from retry message %d, which names no valid original sequence", l.Seq, l.OriginalSeq)
		}
		return orig, nil
	case bus.StagedSubject(s.pipeline):
		return 0, fmt.Errorf("dead letter %d is key %s, which the differ stopped pushing to target %s because the target did not converge: fix the target and drop this dead letter; the differ pushes the key again when its source changes",
			l.Seq, l.Key, l.Target)
	default:
		return 0, fmt.Errorf("dead letter %d came from subject %q, not from %s or the target's push subject: only source changes and pushes can be retried", l.Seq, l.OriginalSubject, source)
	}
}

// Retried is what Retry did.
type Retried struct {
	OriginalSeq uint64
	RetrySeq    uint64 // the retry message's stream sequence
	Duplicate   bool   // an earlier retry of this dead letter had published it
}

// Retry re-drives one dead letter: it publishes its data to the target's
// retry subject with the original subject and sequence in headers, and
// deletes the dead letter once the publish is acknowledged. The Msg-Id
// "retry:<seq>" makes a repeated retry (after a crash between publish and
// delete) a duplicate within the stream's duplicate window; after it, a
// second copy is harmless: it carries the same version and the ledger
// fences it.
func (s *Store) Retry(ctx context.Context, l Letter) (Retried, error) {
	if l.Target == "" {
		return Retried{}, fmt.Errorf("stream seq %d is not a dead letter", l.Seq)
	}
	if _, err := event.Decode(l.Data); err != nil {
		return Retried{}, fmt.Errorf("dead letter %d does not decode (%v): retrying cannot help; inspect it with `dlq show` and drop it", l.Seq, err)
	}
	orig, err := s.OriginalSequence(ctx, l)
	if err != nil {
		return Retried{}, err
	}
	m := &nats.Msg{Subject: bus.RetrySubject(s.pipeline, l.Target), Data: l.Data, Header: nats.Header{}}
	m.Header.Set(bus.HeaderPipeline, s.pipeline)
	m.Header.Set(bus.HeaderTarget, l.Target)
	subject := bus.SourceSubject(s.pipeline)
	if l.OriginalSubject == bus.PushSubject(s.pipeline, l.Target) {
		subject = l.OriginalSubject // staged mode: a push, versioned on its subject
	}
	m.Header.Set(bus.HeaderSubject, subject)
	m.Header.Set(bus.HeaderSequence, strconv.FormatUint(orig, 10))
	m.Header.Set(bus.HeaderRetryOf, strconv.FormatUint(l.Seq, 10))
	if l.Key != "" {
		m.Header.Set(bus.HeaderKey, l.Key)
	}
	ack, err := s.js.PublishMsg(ctx, m, jetstream.WithMsgID("retry:"+strconv.FormatUint(l.Seq, 10)))
	if err != nil {
		return Retried{}, fmt.Errorf("retry dead letter %d: publish to %s: %w", l.Seq, m.Subject, err)
	}
	if err := s.Drop(ctx, l.Seq); err != nil {
		return Retried{}, fmt.Errorf("retry dead letter %d: published as stream seq %d, but %w (retrying it again is safe)", l.Seq, ack.Sequence, err)
	}
	return Retried{OriginalSeq: orig, RetrySeq: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// Drop deletes the dead letter at seq. A dead letter already gone is no
// error.
func (s *Store) Drop(ctx context.Context, seq uint64) error {
	if s.st == nil {
		return nil
	}
	err := s.st.DeleteMsg(ctx, seq)
	if err == nil {
		return nil
	}
	// The server's "no message found" comes back as a failed deletion.
	if _, gerr := s.st.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return nil
	}
	return fmt.Errorf("delete dead letter %d: %w", seq, err)
}

// SubjectMatches reports whether subject matches the NATS filter (tokens
// "*" and a trailing ">").
func SubjectMatches(filter, subject string) bool {
	ft, st := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, f := range ft {
		if f == ">" {
			return i < len(st)
		}
		if i >= len(st) || (f != "*" && f != st[i]) {
			return false
		}
	}
	return len(ft) == len(st)
}
