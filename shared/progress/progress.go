// Package progress reports how far long work has got — a snapshot or
// backfill, a replay, a verify, a resync — as a bar redrawn in place on a
// terminal (github.com/schollz/progressbar/v3) and as a log line every
// Interval otherwise: units done, rate, and, when the total is known, the
// total, percentage and ETA.
package progress

import (
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Options configure a Reporter.
type Options struct {
	// Work names the work in the bar and in the log lines' "work"
	// attribute, e.g. "replay".
	Work string
	// Unit is what is counted, e.g. "rows" or "messages".
	Unit string
	// Total is how many units there are, 0 when unknown (no ETA). It may
	// be an estimate: once more are done, the total is what was done.
	Total int64
	// Terminal receives the bar when it is a terminal; otherwise (nil, a
	// file, a pipe) progress goes to Log. Services pass nil: log lines only.
	Terminal io.Writer
	// Log receives the periodic lines. Required unless Terminal is one.
	Log *slog.Logger
	// Attrs are added to every log line (e.g. "target", "pg").
	Attrs []any
	// Interval between log lines; default 5s.
	Interval time.Duration
	// Now is the clock; default time.Now (tests set it).
	Now func() time.Time
}

// A Reporter shows the progress of one piece of work. Its methods may be
// called from any goroutine; Finish once, last.
type Reporter struct {
	o     Options
	bar   *progressbar.ProgressBar // nil: log lines
	mu    sync.Mutex
	start time.Time
	last  time.Time // of the last log line
	done  int64
	total int64
	// touched: Set or Add was called; Finish of an untouched Reporter
	// shows nothing (the work had nothing to count).
	touched bool
}

// New starts reporting; the clock starts now.
func New(o Options) *Reporter {
	if o.Interval <= 0 {
		o.Interval = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	r := &Reporter{o: o, start: o.Now(), total: o.Total}
	r.last = r.start
	if IsTerminal(o.Terminal) {
		max := o.Total
		if max <= 0 {
			max = -1 // a spinner
		}
		r.bar = progressbar.NewOptions64(max,
			progressbar.OptionSetWriter(o.Terminal),
			progressbar.OptionSetDescription(o.Work),
			progressbar.OptionSetItsString(o.Unit),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionFullWidth(),
			progressbar.OptionOnCompletion(func() { _, _ = io.WriteString(o.Terminal, "\n") }),
		)
	}
	return r
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && f != nil && term.IsTerminal(int(f.Fd()))
}

// Set reports done units in all.
func (r *Reporter) Set(done int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done = done
	r.update(false)
}

// Add reports n more units done.
func (r *Reporter) Add(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done += n
	r.update(false)
}

// SetTotal changes the total (0: unknown).
func (r *Reporter) SetTotal(total int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total = total
	if r.bar != nil && total > 0 {
		r.bar.ChangeMax64(total)
	}
}

// Finish completes the bar, or logs the final line; nothing when nothing
// was reported.
func (r *Reporter) Finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.touched {
		return
	}
	if r.bar != nil {
		if r.total <= 0 || r.done >= r.total {
			_ = r.bar.Finish()
		} else {
			_ = r.bar.Exit()
			_, _ = io.WriteString(r.o.Terminal, "\n")
		}
		return
	}
	r.update(true)
}

func (r *Reporter) update(final bool) {
	r.touched = true
	if r.total > 0 && r.done > r.total {
		r.total = r.done
		if r.bar != nil {
			r.bar.ChangeMax64(r.total)
		}
	}
	if r.bar != nil {
		_ = r.bar.Set64(r.done)
		return
	}
	now := r.o.Now()
	if !final && now.Sub(r.last) < r.o.Interval {
		return
	}
	r.last = now
	elapsed := now.Sub(r.start)
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(r.done) / s
	}
	attrs := append([]any{"work", r.o.Work, "unit", r.o.Unit, "done", r.done}, r.o.Attrs...)
	if r.total > 0 {
		attrs = append(attrs, "total", r.total, "percent", int(100*r.done/r.total))
	}
	attrs = append(attrs, "rate_per_s", int64(rate+0.5), "elapsed", elapsed.Round(time.Second).String())
	if final {
		r.o.Log.Info("progress done", attrs...)
		return
	}
	if r.total > 0 && rate > 0 && r.done < r.total {
		eta := time.Duration(float64(r.total-r.done) / rate * float64(time.Second))
		attrs = append(attrs, "eta", eta.Round(time.Second).String())
	}
	r.o.Log.Info("progress", attrs...)
}
