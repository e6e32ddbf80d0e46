// Package mysqltest provides real MySQL or MariaDB databases to tests.
//
// The server comes from ONEWAY_TEST_MYSQL_URL, a go-sql-driver DSN such as
// "oneway:oneway@tcp(127.0.0.1:3306)/" of a user that may create and drop
// databases (.ci/run starts MariaDB and sets it). When it is unset the test
// is skipped with a message; under CI=true it fails instead.
package mysqltest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// EnvURL names the variable holding the test server's DSN.
const EnvURL = "ONEWAY_TEST_MYSQL_URL"

// ServerDSN returns the DSN of the MySQL server for tests, or skips/fails t.
func ServerDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(EnvURL)
	if dsn == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("MySQL for tests: %s is not set (CI=true: a missing service is a failure)", EnvURL)
		}
		t.Skipf("MySQL for tests: %s is not set (a DSN like user:pass@tcp(127.0.0.1:3306)/)", EnvURL)
	}
	if _, err := mysql.ParseDSN(dsn); err != nil {
		t.Fatalf("%s: invalid DSN: %v", EnvURL, err)
	}
	return dsn
}

// NewDatabase creates an empty database on the test server, dropped when the
// test ends, and returns a DSN naming it.
func NewDatabase(t testing.TB) string {
	t.Helper()
	base := ServerDSN(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "oneway_test_" + hex.EncodeToString(b[:])
	Exec(t, WithDatabase(t, base, ""), "CREATE DATABASE `"+name+"` CHARACTER SET utf8mb4")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db, err := sql.Open("mysql", WithDatabase(t, base, ""))
		if err != nil {
			t.Logf("drop test database %s: %v", name, err)
			return
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS `"+name+"`"); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
	})
	return WithDatabase(t, base, name)
}

// WithDatabase returns dsn naming database db ("" = none).
func WithDatabase(t testing.TB, dsn, db string) string {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatalf("parse MySQL DSN: %v", err)
	}
	cfg.DBName = db
	return cfg.FormatDSN()
}

// Open opens the database at dsn, closed when the test ends.
func Open(t testing.TB, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatalf("open MySQL: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Exec runs statements on the database at dsn, failing the test on error.
func Exec(t testing.TB, dsn string, stmts ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatalf("open MySQL: %v", err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx) // one session, so SET and temporary tables carry over
	if err != nil {
		t.Fatalf("connect to MySQL: %v", err)
	}
	defer conn.Close()
	for _, s := range stmts {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			t.Fatalf("exec %q: %v", s, err)
		}
	}
}
