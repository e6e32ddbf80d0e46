package capture

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// GetFile returns what PutFile stored, of any size (no chunk, one, several
// with a short last one), and errNoList for a missing object or one of
// another lineage.
func TestStoreFileRoundTrip(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one-chunk", 1000},
		{"several-chunks", 5*128<<10 + 77},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := make([]byte, tc.size)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			in := filepath.Join(dir, tc.name+".in")
			if err := os.WriteFile(in, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := e.store.PutFile(t.Context(), tc.name, "lin-a", 3, in); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, tc.name+".out")
			if err := e.store.GetFile(t.Context(), tc.name, "lin-a", out); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, stored %d (or different content)", len(got), len(data))
			}
			if err := e.store.GetFile(t.Context(), tc.name, "lin-b", out); !errors.Is(err, errNoList) {
				t.Fatalf("another lineage: %v, want errNoList", err)
			}
		})
	}
	if err := e.store.GetFile(t.Context(), "missing", "lin-a", filepath.Join(dir, "m")); !errors.Is(err, errNoList) {
		t.Fatalf("missing object: %v, want errNoList", err)
	}
}
