package natstarget

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/services/writer/internal/sideledger"
	lt "github.com/oneway-sync/oneway/services/writer/internal/sideledger/ledgertest"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/errs"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/testkit/pgtest"
)

// natsSink is one subject on its own embedded server, read back by a core
// subscription or from the stream bound to it.
type natsSink struct {
	name, subject string
	jetStream     bool
	srv           *server.Server
	url           string
	nc            *nats.Conn
	stream        jetstream.Stream // JetStream
	msgs          chan *nats.Msg   // core
	mu            sync.Mutex
	got           []*nats.Msg
}

func newSink(jetStream bool, subject string) lt.NewSink {
	return func(t *testing.T, name string) lt.Sink {
		srv, url := bustest.StartJetStream(t)
		s := &natsSink{name: name, subject: subject, jetStream: jetStream, srv: srv, url: url}
		if s.subject == "" {
			s.subject = "oneway.out.p." + name
		}
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		t.Cleanup(nc.Close)
		s.nc = nc
		filter := regexp.MustCompile(`\{\{[^}]*\}\}`).ReplaceAllString(s.subject, "*")
		if jetStream {
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			s.stream, err = js.CreateStream(lt.Ctx(t), jetstream.StreamConfig{Name: "OUT_" + name, Subjects: []string{filter}, MaxMsgSize: 64 << 10})
			if err != nil {
				t.Fatalf("create stream: %v", err)
			}
		} else {
			s.msgs = make(chan *nats.Msg, 100000)
			sub, err := nc.ChanSubscribe(filter, s.msgs)
			if err != nil {
				t.Fatalf("subscribe: %v", err)
			}
			_ = sub.SetPendingLimits(-1, -1)
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		return s
	}
}

func (s *natsSink) spec(pool *pgxpool.Pool) Spec {
	sp := Spec{Pipeline: "p", Target: s.name, URL: s.url, JetStream: s.jetStream, Timeout: 2 * time.Second, Ledger: pool}
	if !strings.HasPrefix(s.subject, "oneway.out.") {
		sp.Subject = s.subject
	}
	return sp
}

func (s *natsSink) Open(t *testing.T, pool *pgxpool.Pool) lt.Writer {
	t.Helper()
	tg, err := Open(lt.Ctx(t), s.spec(pool), lt.Logger())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = tg.Close() })
	return tg
}

// messages returns every message the sink holds, in order.
func (s *natsSink) messages(t *testing.T) []*nats.Msg {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.jetStream {
		info, err := s.stream.Info(lt.Ctx(t))
		if err != nil {
			t.Fatalf("stream info: %v", err)
		}
		var out []*nats.Msg
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := s.stream.GetMsg(lt.Ctx(t), seq)
			if err != nil {
				t.Fatalf("get message %d: %v", seq, err)
			}
			out = append(out, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
		}
		return out
	}
	// The publisher flushed, so the server has routed its messages; a
	// round trip on our connection brings them all in.
	if err := s.nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	for {
		select {
		case m := <-s.msgs:
			s.got = append(s.got, m)
			continue
		default:
		}
		break
	}
	return append([]*nats.Msg(nil), s.got...)
}

func (s *natsSink) Records(t *testing.T) []lt.Record {
	t.Helper()
	var out []lt.Record
	for _, m := range s.messages(t) {
		r := lt.ParseEnvelope(t, m.Data)
		if got, want := m.Header.Get(HeaderMsgID), sideledger.IdempotencyKey("p", s.name, r.Key, r.Version); got != want {
			t.Errorf("key %s version %d: Nats-Msg-Id %q, want %q", r.Key, r.Version, got, want)
		}
		if got := m.Header.Get(HeaderVersion); got != strconv.FormatInt(r.Version, 10) {
			t.Errorf("key %s version %d: Oneway-Version %q", r.Key, r.Version, got)
		}
		out = append(out, r)
	}
	return out
}

func (s *natsSink) Down(t *testing.T) {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name      string
		jetStream bool
	}{{"core", false}, {"jetstream", true}} {
		t.Run(tc.name, func(t *testing.T) {
			lt.Run(t, newSink(tc.jetStream, ""), false)
		})
	}
}

// TestSubjectsAndRejections: a templated subject, and changes rejected for
// good (a subject that does not render, a message too large) while the
// rest of the batch is published.
func TestSubjectsAndRejections(t *testing.T) {
	_, pool := lt.NewLedger(t)
	big := strings.Repeat("x", 100<<10) // over the test stream's 64 KiB
	for _, tc := range []struct {
		name      string
		jetStream bool
		subject   string
		items     []target.Item
		res       target.Result
		subjects  []string // of the messages, in order
		failed    []string // keys in Result.Failed
	}{
		{
			name: "token subject", subject: "orders.{{.Op}}.{{.Key | token}}",
			items:    []target.Item{lt.Item(1, lt.Up("a.b c", "x"), lt.Up("7", "y"), lt.Del("9"))},
			res:      target.Result{Changes: 3, Newer: 3, Written: 2, Deleted: 1},
			subjects: []string{"orders.upsert.7", "orders.delete.9", "orders.upsert.a%2Eb%20c"},
		},
		{
			name: "subject from a field", subject: "orders.{{.Fields.name | token}}",
			// A delete carries only its key: .Fields.name is missing.
			items:    []target.Item{lt.Item(1, lt.Up("1", "x"), lt.Del("2"))},
			res:      target.Result{Changes: 2, Newer: 1, Written: 1},
			subjects: []string{"orders.x"},
			failed:   []string{"2"},
		},
		{
			name: "too large for the stream", jetStream: true, subject: "big.{{.Key | token}}",
			items:    []target.Item{lt.Item(1, lt.Up("1", big), lt.Up("2", "small"))},
			res:      target.Result{Changes: 2, Newer: 1, Written: 1},
			subjects: []string{"big.2"},
			failed:   []string{"1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSink(tc.jetStream, tc.subject)(t, strings.ReplaceAll(tc.name, " ", "_")).(*natsSink)
			w := s.Open(t, pool)
			for round := range 2 {
				res, err := w.Apply(lt.Ctx(t), tc.items)
				if err != nil {
					t.Fatalf("round %d: apply: %v", round, err)
				}
				var failed []string
				for _, f := range res.Failed {
					if !errs.IsPermanent(f.Err) {
						t.Errorf("failure %+v is not permanent", f)
					}
					failed = append(failed, f.Key)
				}
				if strings.Join(failed, ",") != strings.Join(tc.failed, ",") {
					t.Errorf("round %d: failed %v, want keys %v", round, res.Failed, tc.failed)
				}
				var subjects []string
				for _, m := range s.messages(t) {
					subjects = append(subjects, m.Subject)
				}
				if strings.Join(subjects, " ") != strings.Join(tc.subjects, " ") {
					t.Errorf("round %d: subjects %v, want %v", round, subjects, tc.subjects)
				}
				if round == 0 {
					res.Failed = nil
					if fmt.Sprint(res) != fmt.Sprint(tc.res) {
						t.Errorf("result %+v, want %+v", res, tc.res)
					}
				}
				for _, k := range tc.failed {
					if v, _ := lt.LedgerVersion(t, pool, w, k); v != -1 {
						t.Errorf("ledger of rejected key %s at %d, want untouched (-1)", k, v)
					}
				}
			}
		})
	}
}

// TestJetStreamDeduplicates: a change published but not recorded (its
// ledger transaction lost) is published again with the same Nats-Msg-Id,
// and the stream keeps one copy.
func TestJetStreamDeduplicates(t *testing.T) {
	dbURL, pool := lt.NewLedger(t)
	s := newSink(true, "")(t, "dedup").(*natsSink)
	w := s.Open(t, pool)
	if _, err := w.Apply(lt.Ctx(t), []target.Item{lt.Item(10, lt.Up("1", "a"))}); err != nil {
		t.Fatal(err)
	}
	// Lose the ledger's record, as a crash before commit would.
	tg := w.(*Target)
	pgtest.Exec(t, dbURL, "DELETE FROM "+tg.Ledger().Quoted())
	if _, err := w.Apply(lt.Ctx(t), []target.Item{lt.Item(10, lt.Up("1", "a"))}); err != nil {
		t.Fatal(err)
	}
	if n := len(s.messages(t)); n != 1 {
		t.Errorf("stream holds %d messages, want 1", n)
	}
}

func TestToken(t *testing.T) {
	for in, want := range map[string]string{
		"": "%", "abc-_09": "abc-_09", "a.b": "a%2Eb", "*": "%2A", ">": "%3E", "a b": "a%20b", `["x","1"]`: "%5B%22x%22%2C%221%22%5D", "é": "%C3%A9",
	} {
		if got := Token(in); got != want {
			t.Errorf("Token(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOpenRejectsBadSpec(t *testing.T) {
	_, pool := lt.NewLedger(t)
	for name, s := range map[string]Spec{
		"no ledger":        {Pipeline: "p", Target: "t", URL: "nats://127.0.0.1:1"},
		"no URL":           {Pipeline: "p", Target: "t", Ledger: pool},
		"bad template":     {Pipeline: "p", Target: "t", URL: "nats://127.0.0.1:1", Subject: "a.{{.Key", Ledger: pool},
		"wildcard subject": {Pipeline: "p", Target: "t", URL: "nats://127.0.0.1:1", Subject: "a.*", Ledger: pool},
		"empty token":      {Pipeline: "p", Target: "t", URL: "nats://127.0.0.1:1", Subject: "a..b", Ledger: pool},
	} {
		if _, err := Open(context.Background(), s, nil); !errs.IsPermanent(err) {
			t.Errorf("%s: error %v, want permanent", name, err)
		}
	}
}

// TestSecuredServer publishes to a JetStream server that requires a user
// and password and lets the sink's user subscribe only to its own inbox
// prefix, as deploy/nats/permissions.conf does for the pipeline's users:
// with the target's credentials and inbox_prefix the changes are stored;
// without the prefix the stream's acks cannot reach the writer and Apply
// fails; a wrong password fails without showing it.
func TestSecuredServer(t *testing.T) {
	_, pool := lt.NewLedger(t)
	const password = "s1nk-secret-pw"
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, JetStream: true, StoreDir: t.TempDir(),
		Users: []*server.User{
			{Username: "admin", Password: "admin-pw"},
			{Username: "sink", Password: password, Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"out.>", "$JS.API.>"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_sink.>"}},
			}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	admin, err := nats.Connect(s.ClientURL(), nats.UserInfo("admin", "admin-pw"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	js, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.CreateStream(lt.Ctx(t), jetstream.StreamConfig{Name: "OUT", Subjects: []string{"out.>"}})
	if err != nil {
		t.Fatal(err)
	}
	open := func(t *testing.T, name string, auth config.NATSAuth) *Target {
		t.Helper()
		tg, err := Open(lt.Ctx(t), Spec{Pipeline: "p", Target: name, URL: s.ClientURL(), Subject: "out." + name, JetStream: true,
			Timeout: 2 * time.Second, Ledger: pool, Options: natsbus.AuthOptions(auth)}, lt.Logger())
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { _ = tg.Close() })
		return tg
	}
	t.Run("credentials and inbox prefix", func(t *testing.T) {
		tg := open(t, "ok", config.NATSAuth{User: "sink", Password: password, InboxPrefix: "_INBOX_sink"})
		res, err := tg.Apply(lt.Ctx(t), []target.Item{lt.Item(1, lt.Up("1", "a"), lt.Up("2", "b"))})
		if err != nil {
			t.Fatalf("apply: %v", err)
		}
		if res.Written != 2 {
			t.Fatalf("wrote %d, want 2", res.Written)
		}
		info, err := stream.Info(lt.Ctx(t), jetstream.WithSubjectFilter("out.ok"))
		if err != nil {
			t.Fatal(err)
		}
		if n := info.State.Subjects["out.ok"]; n != 2 {
			t.Fatalf("stream holds %d messages on out.ok, want 2", n)
		}
	})
	t.Run("no inbox prefix", func(t *testing.T) {
		tg := open(t, "noprefix", config.NATSAuth{User: "sink", Password: password})
		if _, err := tg.Apply(lt.Ctx(t), []target.Item{lt.Item(1, lt.Up("1", "a"))}); err == nil {
			t.Fatal("apply succeeded though the acks' inbox is not the user's")
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		tg, err := Open(lt.Ctx(t), Spec{Pipeline: "p", Target: "bad", URL: s.ClientURL(), Subject: "out.bad", JetStream: true,
			Timeout: 2 * time.Second, Ledger: pool,
			Options: natsbus.AuthOptions(config.NATSAuth{User: "sink", Password: "not-" + password, InboxPrefix: "_INBOX_sink"})}, lt.Logger())
		if err == nil {
			t.Cleanup(func() { _ = tg.Close() })
			_, err = tg.Apply(lt.Ctx(t), []target.Item{lt.Item(1, lt.Up("1", "a"))})
		}
		if err == nil {
			t.Fatal("a wrong password was accepted")
		}
		if strings.Contains(err.Error(), password) {
			t.Fatalf("the error shows the password: %v", err)
		}
	})
}
