package bus

import "testing"

// TestIdempotencyKey pins the scheme: sinks downstream and `oneway verify`
// recompute it, so it must not change silently.
func TestIdempotencyKey(t *testing.T) {
	// sha256("invoices\x00api\x0042\x007340035")[:16], in hex.
	if got := IdempotencyKey("invoices", "api", "42", 7<<20|3); got != "f3cd73a581c990932d8b8c8768eb63cd" {
		t.Errorf("IdempotencyKey = %s", got)
	}
	if IdempotencyKey("p", "t", "k", 1) == IdempotencyKey("p", "t", "k", 2) ||
		IdempotencyKey("p", "t1", "k", 1) == IdempotencyKey("p", "t", "1k", 1) {
		t.Error("different changes share a key")
	}
}
