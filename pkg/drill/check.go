package drill

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// sampleQuery lists a database's user tables and materialized views,
// largest first: the sample takes the largest that fit the bounds, where
// damage would most likely be and a check proves most.
const sampleQuery = `SELECT n.nspname, c.relname, pg_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_amcheck')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
ORDER BY pg_relation_size(c.oid) DESC, c.oid`

// check runs a query in every database that accepts connections and
// pg_amcheck on its catalogs and its share of the sample.
func (r *runner) check(ctx context.Context) error {
	conn, err := r.connect(ctx, r.user, "template1")
	if err != nil {
		return fmt.Errorf("drill check: connect to the restored server: %w", err)
	}
	rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
	var dbs []string
	if err == nil {
		for rows.Next() {
			var db string
			if err = rows.Scan(&db); err != nil {
				break
			}
			dbs = append(dbs, db)
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	_ = conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("drill check: list the restored databases: %w", err)
	}
	countLeft, bytesLeft := r.opts.SampleRelations, r.opts.SampleBytes
	if countLeft == 0 {
		countLeft = DefaultSampleRelations
	}
	if bytesLeft == 0 {
		bytesLeft = DefaultSampleBytes
	}
	for _, db := range dbs {
		sample, err := r.queryDatabase(ctx, db, &countLeft, &bytesLeft)
		if err != nil {
			return err
		}
		n, err := r.amcheck(ctx, db, sample)
		r.d.Checked += n
		if err != nil {
			return err
		}
		r.log.Debug("database checked", "database", db, "relations", n, "sampled_tables", len(sample))
	}
	return nil
}

// queryDatabase runs a query in db and picks its tables for the sample
// within what is left of the bounds; it returns them as pg_amcheck
// relation patterns.
func (r *runner) queryDatabase(ctx context.Context, db string, countLeft *int, bytesLeft *int64) ([]string, error) {
	conn, err := r.connect(ctx, r.user, db)
	if err != nil {
		return nil, fmt.Errorf("drill check: connect to restored database %q: %w", db, err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	var n int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_class").Scan(&n); err != nil {
		return nil, fmt.Errorf("drill check: query restored database %q: %w; the restored catalogs are not readable", db, err)
	}
	rows, err := conn.Query(ctx, sampleQuery)
	if err != nil {
		return nil, fmt.Errorf("drill check: list the tables of restored database %q: %w", db, err)
	}
	defer rows.Close()
	var sample []string
	for rows.Next() {
		var schema, rel string
		var size int64
		if err := rows.Scan(&schema, &rel, &size); err != nil {
			return nil, fmt.Errorf("drill check: list the tables of restored database %q: %w", db, err)
		}
		if *countLeft <= 0 {
			break
		}
		if size > *bytesLeft {
			continue // a smaller one may fit
		}
		*countLeft--
		*bytesLeft -= size
		sample = append(sample, quotePattern(schema)+"."+quotePattern(rel))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("drill check: list the tables of restored database %q: %w", db, err)
	}
	return sample, nil
}

// quotePattern quotes a name for a psql pattern (pg_amcheck --relation):
// inside double quotes wildcards and dots are literal, and a double quote
// is doubled.
func quotePattern(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

var progressRE = regexp.MustCompile(`(\d+)/(\d+) relations`)

// amcheck runs pg_amcheck on db's catalogs and sampled tables (each with
// its indexes and TOAST table) and returns how many relations it checked.
func (r *runner) amcheck(ctx context.Context, db string, sample []string) (int, error) {
	args := []string{"--host", r.socketDir, "--port", strconv.Itoa(port), "--username", r.user,
		"--no-password", "--install-missing", "--progress", "--database", db, "--schema", "pg_catalog"}
	for _, rel := range sample {
		args = append(args, "--relation", rel)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(r.opts.PGBinDir, "pg_amcheck"), args...)
	cmd.Env = append(serverEnv(), "PGCONNECT_TIMEOUT=10", "LC_ALL=C")
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	n := 0
	if m := progressRE.FindAllStringSubmatch(stderr.String(), -1); len(m) > 0 {
		n, _ = strconv.Atoi(m[len(m)-1][1])
	}
	if err == nil {
		return n, nil
	}
	if ctx.Err() != nil {
		return n, fmt.Errorf("drill cancelled while checking: %w", cancelled(ctx))
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		return n, fmt.Errorf("pg_amcheck found corruption in restored database %q:\n%s\nthe backup or the WAL replayed onto it holds damaged data: check the source cluster with pg_amcheck and take a new backup",
			db, head(stdout.String(), 20))
	}
	return n, fmt.Errorf("pg_amcheck could not check restored database %q (%v):\n%s\ncheck that pg-bin-dir has pg_amcheck and the amcheck extension (postgresql-contrib)",
		db, err, head(strings.TrimSpace(stdout.String()+"\n"+lastLines(stderr.String())), 20))
}

// head returns the first n lines of s.
func head(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n")
}

// lastLines drops the progress lines (\r-separated) from pg_amcheck's
// standard error.
func lastLines(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if i := strings.LastIndexByte(l, '\r'); i >= 0 {
			l = l[i+1:]
		}
		if l = strings.TrimSpace(l); l != "" && !progressRE.MatchString(l) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
