package verify

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/go-sql-driver/mysql"

	"github.com/oneway-sync/oneway/shared/config"
)

// openMySQL reads a MySQL/MariaDB target table as a Side (folded, like
// every non-PostgreSQL table, into key order). Its SELECT prints each
// column in the text the PostgreSQL source prints for that type, where
// MySQL's differs: timestamps with their fraction trimmed (and "+00" for
// timestamptz, stored as UTC DATETIME by the writer), bytea as \x hex.
func openMySQL(ctx context.Context, s TargetSpec, fold func(Scan) (Side, error)) (Side, string, error) {
	t := s.Target
	database, table, err := config.SplitMySQLTable(t.Table)
	if err != nil {
		return nil, "", err
	}
	cfg, err := mysql.ParseDSN(t.URL.Value())
	if err != nil {
		return nil, "", fmt.Errorf("target %s: url: not a MySQL DSN: %w", t.Name, err)
	}
	if database == "" {
		database = cfg.DBName
	}
	cfg.Params = map[string]string{"time_zone": "'+00:00'"}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("target %s: url: %w", t.Name, err)
	}
	db := sql.OpenDB(conn)
	what := "`" + database + "`.`" + table + "`"
	cols := make([]string, len(s.Layout.Columns))
	for i, c := range s.Layout.Columns {
		cols[i] = mysqlText(quoteMySQL(c.Name), c.Type)
	}
	query := fmt.Sprintf("SELECT %s FROM %s.%s", strings.Join(cols, ", "), quoteMySQL(database), quoteMySQL(table))
	side, err := fold(ScanSQL(db, query, what))
	if err != nil {
		db.Close()
		return nil, what, wrap(t, err)
	}
	return &closer{Side: side, close: func() { db.Close() }}, what, nil
}

// mysqlText is the expression printing column col as the source prints a
// value of PostgreSQL type typ.
func mysqlText(col, typ string) string {
	t := strings.ToLower(typ)
	frac := func(c string) string {
		return fmt.Sprintf("CONCAT(DATE_FORMAT(%[1]s, '%%Y-%%m-%%d %%H:%%i:%%s'), IF(MICROSECOND(%[1]s) = 0, '', TRIM(TRAILING '0' FROM CONCAT('.', LPAD(MICROSECOND(%[1]s), 6, '0')))))", c)
	}
	switch {
	case strings.HasPrefix(t, "timestamp") && strings.Contains(t, "with time zone"), t == "timestamptz":
		return fmt.Sprintf("CONCAT(%s, '+00')", frac(col))
	case strings.HasPrefix(t, "timestamp"):
		return frac(col)
	case t == "bytea":
		return fmt.Sprintf("CONCAT('\\\\x', LOWER(HEX(%s)))", col)
	}
	return col
}

func quoteMySQL(name string) string { return "`" + strings.ReplaceAll(name, "`", "``") + "`" }
