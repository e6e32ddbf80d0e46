package progress

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock                   { return &fakeClock{t: time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)} }
func textLog(buf *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{ReplaceAttr: dropTime}))
}
func dropTime(_ []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

func TestLogLines(t *testing.T) {
	type step struct {
		after time.Duration
		set   int64
		total int64 // SetTotal before Set when > 0
	}
	tests := []struct {
		name  string
		total int64
		steps []step
		want  []string
	}{
		{
			name:  "known total: rate, percent and ETA every interval",
			total: 1000,
			steps: []step{{after: time.Second, set: 100}, {after: 4 * time.Second, set: 250}, {after: time.Second, set: 300}, {after: 5 * time.Second, set: 600}},
			want: []string{
				`level=INFO msg=progress work=replay unit=messages done=250 target=pg total=1000 percent=25 rate_per_s=50 elapsed=5s eta=15s`,
				`level=INFO msg=progress work=replay unit=messages done=600 target=pg total=1000 percent=60 rate_per_s=55 elapsed=11s eta=7s`,
				`level=INFO msg="progress done" work=replay unit=messages done=600 target=pg total=1000 percent=60 rate_per_s=55 elapsed=11s`,
			},
		},
		{
			name:  "unknown total: no percent, no ETA",
			steps: []step{{after: 10 * time.Second, set: 5000}},
			want: []string{
				`level=INFO msg=progress work=replay unit=messages done=5000 target=pg rate_per_s=500 elapsed=10s`,
				`level=INFO msg="progress done" work=replay unit=messages done=5000 target=pg rate_per_s=500 elapsed=10s`,
			},
		},
		{
			name:  "a total learnt later",
			steps: []step{{after: 5 * time.Second, set: 100, total: 200}},
			want: []string{
				`level=INFO msg=progress work=replay unit=messages done=100 target=pg total=200 percent=50 rate_per_s=20 elapsed=5s eta=5s`,
				`level=INFO msg="progress done" work=replay unit=messages done=100 target=pg total=200 percent=50 rate_per_s=20 elapsed=5s`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			clock := newClock()
			// A file that is not a terminal gets log lines, not a bar.
			f, err := os.CreateTemp(t.TempDir(), "out")
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			r := New(Options{Work: "replay", Unit: "messages", Total: tt.total, Terminal: f, Log: textLog(&buf),
				Attrs: []any{"target", "pg"}, Now: clock.now})
			for _, s := range tt.steps {
				clock.advance(s.after)
				if s.total > 0 {
					r.SetTotal(s.total)
				}
				r.Set(s.set)
			}
			r.Finish()
			got := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("log lines:\n got: %q\nwant: %q", got, tt.want)
			}
			if fi, _ := f.Stat(); fi.Size() != 0 {
				t.Errorf("%d bytes written to a file that is not a terminal", fi.Size())
			}
		})
	}
}

func TestAddIsSafeForConcurrentUse(t *testing.T) {
	r := New(Options{Work: "verify", Unit: "rows"})
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 1000 {
				r.Add(1)
			}
		}()
	}
	for range 4 {
		<-done
	}
	r.Finish()
	if r.done != 4000 {
		t.Fatalf("done = %d, want 4000", r.done)
	}
}

func TestEstimatedTotalAndUntouchedFinish(t *testing.T) {
	var buf bytes.Buffer
	clock := newClock()
	r := New(Options{Work: "verify", Unit: "rows", Total: 100, Log: textLog(&buf), Now: clock.now})
	r.Finish()
	if buf.Len() != 0 {
		t.Fatalf("an untouched reporter logged: %s", buf.String())
	}
	r = New(Options{Work: "verify", Unit: "rows", Total: 100, Log: textLog(&buf), Now: clock.now})
	clock.advance(10 * time.Second)
	r.Set(150) // the estimate was low
	r.Finish()
	want := "level=INFO msg=progress work=verify unit=rows done=150 total=150 percent=100 rate_per_s=15 elapsed=10s\n" +
		"level=INFO msg=\"progress done\" work=verify unit=rows done=150 total=150 percent=100 rate_per_s=15 elapsed=10s\n"
	if buf.String() != want {
		t.Errorf("log:\n got: %q\nwant: %q", buf.String(), want)
	}
}
