package verify

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/bus"
)

// NATSSpec says where a NATS target's changes are.
type NATSSpec struct {
	Pipeline, Target string
	// URL of the NATS server(s), comma-separated.
	URL string
	// Subject is the target's subject template ("" = the default,
	// oneway.out.<pipeline>.<target>).
	Subject string
	// Options are added to the connect options: the target's credentials,
	// TLS and inbox prefix (natsbus.AuthOptions).
	Options []nats.Option
}

// FilterSubject is the subject filter that matches every subject a NATS
// target's template can render: the template's literal tokens up to the
// first token holding an action, then ">" (an action may render any
// number of tokens).
func FilterSubject(pipeline, target, template string) string {
	if template == "" {
		return "oneway.out." + pipeline + "." + target
	}
	toks := strings.Split(template, ".")
	for i, t := range toks {
		if strings.Contains(t, "{{") {
			return strings.Join(append(toks[:i:i], ">"), ".")
		}
	}
	return template
}

// ErrNoStream says that no JetStream stream holds a NATS target's subject.
var ErrNoStream = errors.New("no JetStream stream holds the subject")

// ScanNATS is a Scan of the JetStream stream bound to a NATS target's
// subject: an ordered consumer reads every message matching the subject
// filter, from the first to the last stored when the read catches up.
// Messages whose Nats-Msg-Id is not this target's idempotency key of their
// key and version (another target's, or a stranger's, on a shared subject)
// are not counted. Only JetStream keeps messages: a core NATS subject
// with no stream bound to it fails with ErrNoStream.
func ScanNATS(spec NATSSpec, l *Layout) Scan {
	return func(ctx context.Context, emit func(Change) error) error {
		filter := FilterSubject(spec.Pipeline, spec.Target, spec.Subject)
		nc, err := nats.Connect(spec.URL, append([]nats.Option{nats.Name("oneway-verify-" + spec.Pipeline + "-" + spec.Target)}, spec.Options...)...)
		if err != nil {
			return fmt.Errorf("nats target %s: connect: %w", spec.Target, err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return fmt.Errorf("nats target %s: %w", spec.Target, err)
		}
		name, err := js.StreamNameBySubject(ctx, filter)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("nats target %s: subject %s: %w", spec.Target, filter, ErrNoStream)
		}
		if err != nil {
			return fmt.Errorf("nats target %s: find the stream of %s: %w", spec.Target, filter, err)
		}
		stream, err := js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("nats target %s: stream %s: %w", spec.Target, name, err)
		}
		cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{filter}, DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		if err != nil {
			return fmt.Errorf("nats target %s: read stream %s: %w", spec.Target, name, err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return fmt.Errorf("nats target %s: read stream %s: %w", spec.Target, name, err)
		}
		if info.NumPending == 0 {
			return nil
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(1000))
		if err != nil {
			return fmt.Errorf("nats target %s: read stream %s: %w", spec.Target, name, err)
		}
		defer it.Stop()
		for {
			m, err := it.Next(jetstream.NextContext(ctx))
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("nats target %s: read stream %s: %w", spec.Target, name, err)
			}
			meta, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("nats target %s: stream %s: %w", spec.Target, name, err)
			}
			if err := natsChange(spec, l, m, emit); err != nil {
				return fmt.Errorf("nats target %s: stream %s seq %d: %w", spec.Target, name, meta.Sequence.Stream, err)
			}
			if meta.NumPending == 0 {
				return nil
			}
		}
	}
}

func natsChange(spec NATSSpec, l *Layout, m jetstream.Msg, emit func(Change) error) error {
	e, err := decodeEnvelope(m.Data())
	if err != nil || e.Key == nil || e.Version == nil {
		return nil // not a change envelope: not this target's
	}
	if m.Headers().Get("Nats-Msg-Id") != bus.IdempotencyKey(spec.Pipeline, spec.Target, *e.Key, *e.Version) {
		return nil
	}
	c, err := l.change(e)
	if err != nil {
		return err
	}
	return emit(c)
}
