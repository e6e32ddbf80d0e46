package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/oneway-sync/oneway/integration/testenv"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// Rows 14, 18, 19 and 20 of the reliability matrix: bad input on the
// pipeline's subject, a source whose clock and time zone differ from the
// reader's, source schema changes and an operator deleting the writer's
// consumer or the pipeline's stream.

// Row 14: three malformed messages are published on the pipeline's source
// subject while the workload runs: bytes that are no batch, a batch of an
// unknown schema version and a batch without a key column. The writer
// dead-letters each with its cause (oneway dlq list shows it, the
// oneway_dead_letters_total metric counts it) and every other change
// arrives. The foreign publishes move the source subject under the
// reader's fenced publish (Nats-Expected-Last-Subject-Sequence): the
// reader stands by, takes its lease again and resumes from its saved
// position, losing nothing.
func chaosMalformed(r *chaosRow) {
	chaosMalformedOn(r, false)
}

// Row 14 in staged mode: the same three messages on the source subject,
// which the stager dead-letters, and on the push subject, which the writer
// dead-letters.
func chaosMalformedStaged(r *chaosRow) {
	chaosMalformedOn(r, true)
}

func chaosMalformedOn(r *chaosRow, staged bool) {
	t := r.t
	r.setup(chaosSetup{Staged: staged})
	admin := freeAddr(t)
	cfg := r.config(chaosConfig{})
	rd := r.start("reader", cfg)
	r.start("writer", r.config(chaosConfig{AdminAddr: admin}))
	if staged {
		r.start("stager", cfg)
		r.start("differ", cfg)
	}
	r.loaded()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	subject := bus.SourceSubject(chaosPipeline)
	st, err := r.stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	unknown, err := event.Decode(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	unknown.SchemaVersion = event.SchemaVersion + 98
	noKey, err := event.Decode(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range noKey.GetColumns() {
		c.Key = false
	}
	unknownData, err := event.Encode(unknown)
	if err != nil {
		t.Fatal(err)
	}
	noKeyData, err := event.Encode(noKey)
	if err != nil {
		t.Fatal(err)
	}
	garbage := []struct {
		what  string
		data  []byte
		cause string
	}{
		{"bad bytes", []byte("\xff\xfe\x00 this is no change batch"), "decode batch"},
		{"unknown schema version", unknownData, "unknown schema_version 99"},
		{"no key", noKeyData, "batch has no key column"},
	}
	subjects := []string{subject}
	if staged {
		subjects = append(subjects, bus.PushSubject(chaosPipeline, r.targetName))
	}
	r.fault()
	for _, subj := range subjects {
		for _, g := range garbage {
			if _, err := r.js.Publish(ctx, subj, g.data); err != nil {
				t.Fatalf("publish %s on %s: %v", g.what, subj, err)
			}
			r.flowing(50) // the others keep flowing
		}
	}
	r.heal()
	r.wantDeadLetters = uint64(len(garbage) * len(subjects))
	fenced := logCount("another reader published meanwhile; this reader stands by", []*testenv.Proc{rd})
	r.note("the reader fenced by the foreign publishes %d times, resumed from its saved position", fenced)
	r.finish()
	if staged {
		r.note("3 dead letters from the stager (source subject), 3 from the writer (push subject)")
		return
	}

	entries := dlqList(t, cfg, "")
	if len(entries) != len(garbage) {
		t.Fatalf("oneway dlq list shows %d dead letters, want %d: %+v", len(entries), len(garbage), entries)
	}
	for _, g := range garbage {
		found := false
		for _, e := range entries {
			found = found || strings.Contains(e.err, g.cause)
		}
		if !found {
			t.Errorf("no dead letter of the %s message with cause %q: %+v", g.what, g.cause, entries)
		}
	}
	metric := fmt.Sprintf(`oneway_dead_letters_total{pipeline=%q,target="pg"} %d`, chaosPipeline, len(garbage))
	if body := httpGet(t, "http://"+admin+"/metrics"); !strings.Contains(body, metric) {
		t.Errorf("the writer's /metrics has no %q", metric)
	}
	r.note("3 dead letters with their causes (dlq list) and counted (oneway_dead_letters_total)")
}

// Row 18: the source database runs in another time zone than the reader
// (UTC+14, set on the database) and the workload's timestamps come from the
// database's clock. The watermark and its commit-safe bound are read from
// the database, so nothing is missed. A real clock skew cannot be injected
// here: the reader is a Go binary, which reads the clock through the vDSO,
// so libfaketime does not move it, and the machine's one clock is shared.
func chaosClockSkew(r *chaosRow) {
	t := r.t
	r.setup(chaosSetup{})
	u, err := url.Parse(r.srcURL)
	if err != nil {
		t.Fatal(err)
	}
	db := testenv.Connect(t, r.srcURL)
	db.Exec(t, fmt.Sprintf(`ALTER DATABASE %q SET timezone TO 'Pacific/Kiritimati'`, strings.TrimPrefix(u.Path, "/")))
	cfg := r.config(chaosConfig{})
	r.start("reader", cfg)
	r.start("writer", cfg)
	r.fault()
	r.loaded()
	r.flowing(200)
	r.heal()
	r.note("source database at time zone UTC+14, timestamps from its clock; a skewed reader clock cannot be injected here (libfaketime does not move a Go binary's clock), and the reader never reads its own clock for the watermark or its bound (TestSafeBound)")
	r.finish()
}

// Row 19: the source table's schema changes while the workload runs.
//
//   - add: a column the pipeline does not own is added; nothing changes
//     for the pipeline.
//   - widen: the owned column payload, varchar(80), is widened to text and
//     longer values follow; they arrive whole.
//   - widen beyond the target: the same, with the target's column still
//     varchar(80): the longer values are dead-lettered with their key,
//     never cut; the operator widens the target column and retries them.
//   - drop, rename: an owned column (note, which the workload does not
//     write) is dropped or renamed; the reader halts with an error naming
//     the table and the column and publishes nothing more. The operator
//     takes the column out of the pipeline's columns and starts the reader
//     again; it resumes from its saved position.
//
// With cdc the reader halts on the first change after the drop or rename
// (its Relation message lacks the column) and resumes from its slot.
func chaosSchemaChange(change string, cdc bool) func(r *chaosRow) {
	return func(r *chaosRow) {
		t := r.t
		r.setup(chaosSetup{CDC: cdc})
		src, dst := testenv.Connect(t, r.srcURL), testenv.Connect(t, r.dstURL)
		c := chaosConfig{}
		switch change {
		case "widen":
			src.Exec(t, "ALTER TABLE public.chaos ALTER COLUMN payload TYPE varchar(80)")
		case "widen beyond the target":
			src.Exec(t, "ALTER TABLE public.chaos ALTER COLUMN payload TYPE varchar(80)")
			dst.Exec(t, "ALTER TABLE public.chaos ALTER COLUMN payload TYPE varchar(80)")
		case "drop", "rename":
			src.Exec(t, "ALTER TABLE public.chaos ADD COLUMN note text NOT NULL DEFAULT 'owned note'")
			dst.Exec(t, "ALTER TABLE public.chaos ADD COLUMN note text")
			c.Columns = []string{"id", "version", "payload", "updated_at", "note"}
		}
		cfg := r.config(c)
		rd := r.start("reader", cfg)
		r.start("writer", cfg)
		r.loaded()
		r.fault()
		switch change {
		case "add":
			src.Exec(t, "ALTER TABLE public.chaos ADD COLUMN extra text NOT NULL DEFAULT 'not owned'")
			r.flowing(100)
		case "widen":
			src.Exec(t, "ALTER TABLE public.chaos ALTER COLUMN payload TYPE text")
			r.work.SetPad(200)
			r.flowing(100)
			r.note("payloads of up to %d characters after the widening", r.work.MaxPayload())
		case "widen beyond the target":
			// The target's column stays varchar(80): the longer values are
			// dead-lettered with their key, never cut to 80 characters. The
			// operator widens the target and retries the dead letters.
			src.Exec(t, "ALTER TABLE public.chaos ALTER COLUMN payload TYPE text")
			r.work.SetPad(200)
			var dead uint64
			r.poll(time.Minute, func(ctx context.Context) (err error) {
				if dead, err = r.deadLetters(ctx); err == nil && dead < 5 {
					err = fmt.Errorf("%d dead letters", dead)
				}
				return err
			})
			r.heal()
			r.poll(chaosDrain, func(ctx context.Context) error {
				if p, err := r.pending(ctx); err != nil || p > 0 {
					return fmt.Errorf("writer consumer: %d pending (%v)", p, err)
				}
				return nil
			})
			cut := pgtest.QueryInt(t, r.dstURL, "SELECT count(*) FROM public.chaos WHERE length(payload) = 80")
			if cut > 0 {
				t.Errorf("%d payloads at the target cut to 80 characters", cut)
			}
			rows := dlqList(t, cfg, "")
			if len(rows) == 0 || !strings.Contains(rows[0].err, "too long") {
				t.Errorf("dead letters %+v, want values too long for the target", rows)
			}
			dead, _ = r.deadLetters(context.Background())
			dst.Exec(t, "ALTER TABLE public.chaos ALTER COLUMN payload TYPE text")
			mustDLQ(t, cfg, "", "retry", "--all", "--target", "pg")
			r.note("%d dead letters (too long for varchar(80)), none cut; retried after the operator widened the target", dead)
		case "drop", "rename":
			if change == "drop" {
				src.Exec(t, "ALTER TABLE public.chaos DROP COLUMN note")
			} else {
				src.Exec(t, "ALTER TABLE public.chaos RENAME COLUMN note TO memo")
			}
			testenv.WaitFor(t, time.Minute, func() error {
				if done, _ := rd.Exited(); !done {
					return fmt.Errorf("the reader still runs after the %s of an owned column", change)
				}
				return nil
			})
			_, code := rd.Exited()
			halt := lastLine(rd.Output(), "note")
			if !strings.Contains(halt, "chaos") || !strings.Contains(halt, `note`) {
				t.Errorf("the reader exited (%d) without naming the table and the column note:\n%s", code, rd.Output())
			}
			r.note("the reader halted (exit %d): %s", code, halt)
			r.start("reader", r.config(chaosConfig{})) // the operator's fix: note is no longer owned
			r.flowing(100)
		}
		if r.healAt.IsZero() {
			r.heal()
		}
		r.finish()
	}
}

// Row 20: an operator deletes the writer's durable consumer, or the
// pipeline's whole stream, mid-run.
//
//   - consumer: the writer sees its consumer gone, creates it again from
//     its config, and the new consumer delivers the stream from its start;
//     the ledger skips what was applied (its own checkpoint).
//   - stream: the messages not yet applied are gone with it. The reader
//     sees that the stream no longer holds what it published, creates the
//     stream again with its sequences continuing above every version
//     published before (so the writers' ledger, which fences on them, does
//     not take new changes for old ones), and reads the source again from
//     the start; the writer creates its consumer again.
//
// In staged mode (stream only) the stager and the differ create their
// consumers again too, and the differ's push messages are numbered above
// the same floor.
func chaosDelete(what string, staged bool) func(r *chaosRow) {
	return func(r *chaosRow) {
		t := r.t
		r.setup(chaosSetup{Staged: staged})
		cfg := r.config(chaosConfig{})
		rd := r.start("reader", cfg)
		w := r.start("writer", cfg)
		if staged {
			r.start("stager", cfg)
			r.start("differ", cfg)
		}
		r.loaded()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		before := r.lastSeq()
		r.fault()
		var err error
		if what == "consumer" {
			err = r.js.DeleteConsumer(ctx, bus.StreamName(chaosPipeline), bus.WriterConsumer(chaosPipeline, r.targetName))
		} else {
			err = r.js.DeleteStream(ctx, bus.StreamName(chaosPipeline))
		}
		if err != nil {
			t.Fatalf("delete the %s: %v", what, err)
		}
		r.flowing(100)
		r.heal()
		recreated := logCount("consumer missing; created again from the config", []*testenv.Proc{w})
		if recreated == 0 {
			t.Errorf("the writer did not log that it created its consumer again")
		}
		r.note("the writer created its consumer again (%d log lines)", recreated)
		if what == "stream" {
			reset := logCount("the pipeline stream lost what this reader published; reading the source again from the start", []*testenv.Proc{rd})
			if reset == 0 {
				t.Errorf("the reader did not log that the stream lost its messages")
			}
			st, err := r.stream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.State.FirstSeq <= before {
				t.Errorf("the recreated stream starts at sequence %d, not above %d (the last before the delete)", info.State.FirstSeq, before)
			}
			r.note("stream was at %d; recreated starting at %d; the reader re-read the source (%d log lines)", before, info.State.FirstSeq, reset)
		}
		r.finish()
	}
}

// httpGet is the body of a GET of u.
func httpGet(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	return string(b)
}

// lastLine is the last line of out that contains s, "" if none.
func lastLine(out, s string) string {
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return strings.TrimSpace(lines[i])
		}
	}
	return ""
}
