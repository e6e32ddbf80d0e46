package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oneway-sync/oneway/shared/testkit/testca"
)

// PGBinDir is where the PostgreSQL 15 server binaries are; set
// ONEWAY_TEST_PG_BINDIR for another install.
func PGBinDir() string {
	if d := os.Getenv("ONEWAY_TEST_PG_BINDIR"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

// TLSPostgres is a throwaway PostgreSQL server that accepts TCP
// connections only over TLS (hostssl, scram-sha-256), with a server
// certificate for 127.0.0.1 and localhost signed by a CA of its own.
type TLSPostgres struct {
	Port int
	// CAFile is the CA that signed the server's certificate; OtherCAFile
	// is a CA that did not.
	CAFile, OtherCAFile string
}

// URL is a verify-full URL of database db, trusting caFile.
func (p *TLSPostgres) URL(db, caFile string) string {
	return fmt.Sprintf("postgres://postgres:postgres@127.0.0.1:%d/%s?sslmode=verify-full&sslrootcert=%s", p.Port, db, caFile)
}

// StartTLSPostgres initialises and starts a TLSPostgres in a temp dir
// (initdb and pg_ctl from PGBinDir, as the postgres user when the test runs
// as root), stopped and removed when the test ends. It takes a few seconds.
// Without the binaries the test is skipped, and fails under CI=true.
func StartTLSPostgres(t testing.TB) *TLSPostgres {
	t.Helper()
	bin := PGBinDir()
	if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL server binaries not found in %s (set ONEWAY_TEST_PG_BINDIR): %v", bin, err)
		}
		t.Skipf("PostgreSQL server binaries not found in %s (set ONEWAY_TEST_PG_BINDIR)", bin)
	}
	// Not t.TempDir: its parents are private to this user, and the server
	// may run as another.
	dir, err := os.MkdirTemp("", "oneway-pgtls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })

	p := &TLSPostgres{}
	var certFile, keyFile string
	p.CAFile, certFile, keyFile = testca.Files(t, dir)
	otherDir := filepath.Join(dir, "other")
	if err := os.Mkdir(otherDir, 0o755); err != nil {
		t.Fatal(err)
	}
	p.OtherCAFile, _ = testca.New(t, otherDir)
	if err := os.WriteFile(filepath.Join(dir, "pwfile"), []byte("postgres\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, and no postgres user to run the server as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		err = filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Chown(path, uid, gid)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		if out, err := cmd.CombinedOutput(); err != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			t.Fatalf("%s %v: %v\n%s\n%s", name, args, err, out, log)
		}
	}
	data := filepath.Join(dir, "data")
	run("initdb", "-D", data, "-U", "postgres", "--pwfile", filepath.Join(dir, "pwfile"),
		"--auth-local", "trust", "--auth-host", "scram-sha-256", "--no-sync", "-E", "UTF8", "--locale", "C")
	// TCP only over TLS: a plaintext connection finds no pg_hba line.
	hba := "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		if err := os.Chown(filepath.Join(data, "pg_hba.conf"), int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	p.Port = freeTCPPort(t)
	opts := fmt.Sprintf("-c port=%d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s -c ssl=on "+
		"-c ssl_cert_file=%s -c ssl_key_file=%s -c fsync=off -c shared_buffers=16MB -c max_connections=50",
		p.Port, dir, certFile, keyFile)
	run("pg_ctl", "-D", data, "-w", "-t", "60", "-l", filepath.Join(dir, "server.log"), "-o", opts, "start")
	t.Cleanup(func() {
		cmd := exec.Command(filepath.Join(bin, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		_ = cmd.Run()
	})
	return p
}

// CreateDatabase creates database name on p.
func (p *TLSPostgres) CreateDatabase(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.URL("postgres", p.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
}

func freeTCPPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
