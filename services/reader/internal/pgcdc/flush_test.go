package pgcdc

import "testing"

// TestFlushPos covers what status updates report as flushed: only what the
// caller confirmed, never more than was handed over, and the idle position
// only when nothing handed over is unconfirmed and no transaction is open.
func TestFlushPos(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                          string
		base, handed, idle, confirmed LSN
		inTx                          bool
		until                         LSN
		want                          LSN
	}{
		{name: "start: the base", base: 100, confirmed: 100, want: 100},
		{name: "idle, nothing handed", base: 100, confirmed: 100, idle: 500, want: 500},
		{name: "handed, unconfirmed: not past the confirmed", base: 100, handed: 300, confirmed: 100, idle: 500, want: 100},
		{name: "handed, confirmed up to an earlier transaction", base: 100, handed: 300, confirmed: 200, idle: 500, want: 200},
		{name: "all confirmed: the idle position", base: 100, handed: 300, confirmed: 300, idle: 500, want: 500},
		{name: "all confirmed, idle behind", base: 100, handed: 300, confirmed: 300, idle: 250, want: 300},
		{name: "all confirmed, a transaction open", base: 100, handed: 300, confirmed: 300, idle: 500, inTx: true, want: 300},
		{name: "confirmation beyond what was handed is capped", base: 100, handed: 300, confirmed: 900, want: 300},
		{name: "confirmation beyond the base is capped", base: 100, confirmed: 900, want: 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Stream{until: tt.until}
			s.confirmed.Store(uint64(tt.confirmed))
			p := &pump{s: s, base: tt.base, handed: tt.handed, idle: tt.idle, inTx: tt.inTx}
			if got := p.flushPos(); got != tt.want {
				t.Fatalf("flushPos = %d, want %d", got, tt.want)
			}
		})
	}
	t.Run("a bridge's idle position stops at its end", func(t *testing.T) {
		s := &Stream{until: 400}
		p := &pump{s: s, base: 100}
		s.confirmed.Store(100)
		p.setIdle(900)
		if got := p.flushPos(); got != 400 {
			t.Fatalf("flushPos = %d, want 400", got)
		}
	})
	t.Run("confirm keeps the highest", func(t *testing.T) {
		s := &Stream{}
		for _, l := range []LSN{5, 9, 7, 0} {
			s.Confirm(l)
		}
		if got := LSN(s.confirmed.Load()); got != 9 {
			t.Fatalf("confirmed %d, want 9", got)
		}
	})
}
