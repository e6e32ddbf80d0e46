package jsonltarget

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	lt "github.com/oneway-sync/oneway/services/writer/internal/sideledger/ledgertest"
	"github.com/oneway-sync/oneway/services/writer/internal/target"
	"github.com/oneway-sync/oneway/shared/errs"
)

// fileSink is one file in a temp dir.
type fileSink struct {
	name, path string
}

func newSink(t *testing.T, name string) lt.Sink {
	return &fileSink{name: name, path: filepath.Join(t.TempDir(), name+".jsonl")}
}

func (s *fileSink) Open(t *testing.T, pool *pgxpool.Pool) lt.Writer {
	t.Helper()
	return openTarget(t, Spec{Pipeline: "p", Target: s.name, Path: s.path, Ledger: pool})
}

func openTarget(t *testing.T, spec Spec) *Target {
	t.Helper()
	tg, err := Open(lt.Ctx(t), spec, lt.Logger())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return tg
}

func (s *fileSink) Records(t *testing.T) []lt.Record {
	t.Helper()
	return records(t, s.path)
}

func records(t *testing.T, path string) []lt.Record {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Errorf("%s does not end with a newline", path)
	}
	var out []lt.Record
	for line := range bytes.Lines(data) {
		out = append(out, lt.ParseEnvelope(t, bytes.TrimSuffix(line, []byte("\n"))))
	}
	return out
}

// Down makes the file read-only (for root, whom a mode does not stop,
// immutable; failing that, a disk that is full).
func (s *fileSink) Down(t *testing.T) {
	if !readOnly(t, s.path) {
		full(t, s.path)
	}
}

// readOnly makes path unwritable, reporting whether it could.
func readOnly(t *testing.T, path string) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		if err := os.Chmod(path, 0o444); err != nil {
			t.Fatal(err)
		}
		return true
	}
	if err := exec.Command("chattr", "+i", path).Run(); err != nil {
		t.Logf("chattr +i %s: %v", path, err)
		return false
	}
	t.Cleanup(func() { _ = exec.Command("chattr", "-i", path).Run() })
	return true
}

// full puts a disk-full device at path (or, without /dev/full, a directory).
func full(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/dev/full"); err == nil {
		if err := os.Symlink("/dev/full", path); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestConformance(t *testing.T) {
	lt.Run(t, newSink, false)
}

func TestSinkFailures(t *testing.T) {
	_, pool := lt.NewLedger(t)
	cases := []struct {
		name    string
		skip    string
		breakIt func(t *testing.T, path string)
		want    string // in the error
	}{
		{name: "read-only file", want: map[bool]string{false: "permission denied", true: "operation not permitted"}[os.Geteuid() == 0],
			breakIt: func(t *testing.T, path string) {
				if !readOnly(t, path) {
					t.Skip("cannot make a file read-only for root here")
				}
			}},
		{name: "disk full", want: "no space left on device",
			breakIt: func(t *testing.T, path string) {
				if _, err := os.Stat("/dev/full"); err != nil {
					t.Skip("no /dev/full")
				}
				full(t, path)
			}},
		{name: "a directory in the way", want: "is a directory",
			breakIt: func(t *testing.T, path string) {
				_ = os.Remove(path)
				_ = os.Mkdir(path, 0o755)
			}},
		{name: "directory gone", want: "no such file or directory",
			breakIt: func(t *testing.T, path string) { _ = os.RemoveAll(filepath.Dir(path)) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sub", "out.jsonl")
			_ = os.MkdirAll(filepath.Dir(path), 0o755)
			tg := openTarget(t, Spec{Pipeline: "p", Target: tc.name, Path: path, Ledger: pool})
			if _, err := tg.Apply(lt.Ctx(t), []target.Item{lt.Item(10, lt.Up("1", "a"))}); err != nil {
				t.Fatal(err)
			}
			tc.breakIt(t, path)
			_, err := tg.Apply(lt.Ctx(t), []target.Item{lt.Item(20, lt.Up("1", "b"))})
			if !errs.IsUnavailable(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v: want errs.Unavailable with %q", err, tc.want)
			}
			if v, _ := lt.LedgerVersion(t, pool, tg, "1"); v != target.Version(10, 0) {
				t.Errorf("ledger at %d after a failed apply", v)
			}
		})
	}
}

// TestNoDuplicateAfterCrash: a crash after the lines reached the disk but
// before the ledger committed leaves a tail that the next Apply (or Open)
// cuts before the changes are written again: each line is in the file
// once.
func TestNoDuplicateAfterCrash(t *testing.T) {
	_, pool := lt.NewLedger(t)
	first := lt.Item(10, lt.Up("1", "a"))
	second := lt.Item(20, lt.Up("1", "b"), lt.Up("2", "c"))
	want := []lt.Record{
		{Op: "upsert", Key: "1", Version: target.Version(10, 0), Fields: `{"id":1,"name":"a"}`},
		{Op: "upsert", Key: "1", Version: target.Version(20, 0), Fields: `{"id":1,"name":"b"}`},
		{Op: "upsert", Key: "2", Version: target.Version(20, 1), Fields: `{"id":2,"name":"c"}`},
	}
	crash := errors.New("crash before the ledger commit")
	for _, reopen := range []bool{false, true} {
		name := map[bool]string{false: "next apply cuts the tail", true: "open cuts the tail"}[reopen]
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "out.jsonl")
			spec := Spec{Pipeline: "p", Target: name, Path: path, Ledger: pool}
			tg := openTarget(t, spec)
			if _, err := tg.Apply(lt.Ctx(t), []target.Item{first}); err != nil {
				t.Fatal(err)
			}
			tg.afterSync = func() error { return crash }
			if _, err := tg.Apply(lt.Ctx(t), []target.Item{second}); !errors.Is(err, crash) {
				t.Fatalf("apply: %v, want the crash", err)
			}
			if got := records(t, path); len(got) != 3 {
				t.Fatalf("after the crash the file holds %d lines, want 3 (1 committed + 2 uncommitted)", len(got))
			}
			if v, _ := lt.LedgerVersion(t, pool, tg, "1"); v != target.Version(10, 0) {
				t.Errorf("ledger at %d after the crash", v)
			}
			tg.afterSync = nil
			if reopen {
				tg = openTarget(t, spec)
				if got := records(t, path); len(got) != 1 {
					t.Fatalf("after Open the file holds %d lines, want the committed 1", len(got))
				}
			}
			res, err := tg.Apply(lt.Ctx(t), []target.Item{second})
			if err != nil {
				t.Fatal(err)
			}
			if res.Written != 2 {
				t.Errorf("result %+v, want 2 written", res)
			}
			if got := records(t, path); !equal(got, want) {
				t.Errorf("file holds\n %+v\nwant\n %+v", got, want)
			}
		})
	}
}

func equal(a, b []lt.Record) bool { return slices.Equal(a, b) }

// TestFileReplaced: lines written before oneway, a rotation (rename) and a
// truncation from outside are all kept as they are, never cut.
func TestFileReplaced(t *testing.T) {
	_, pool := lt.NewLedger(t)
	line := func(seq uint64, name string) string {
		return `{"op":"upsert","key":"1","fields":{"id":1,"name":"` + name + `"},"version":` +
			strconv.FormatInt(target.Version(seq, 0), 10) + "}\n"
	}
	path := filepath.Join(t.TempDir(), "out.jsonl")
	if err := os.WriteFile(path, []byte("from before\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tg := openTarget(t, Spec{Pipeline: "p", Target: "rot", Path: path, Ledger: pool})
	applyOne := func(seq uint64, name string) {
		t.Helper()
		if _, err := tg.Apply(lt.Ctx(t), []target.Item{lt.Item(seq, lt.Up("1", name))}); err != nil {
			t.Fatal(err)
		}
	}
	check := func(p, want string) {
		t.Helper()
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s holds\n%s\nwant\n%s", filepath.Base(p), got, want)
		}
	}
	applyOne(1, "a")
	check(path, "from before\n"+line(1, "a"))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	applyOne(2, "b")
	check(path+".1", "from before\n"+line(1, "a"))
	check(path, line(2, "b"))
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	applyOne(3, "c")
	check(path, line(3, "c"))
}
