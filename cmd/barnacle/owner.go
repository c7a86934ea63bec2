package main

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/barnacle-pg/barnacle/pkg/restore"
)

// restoreOwnership is who will own the restored files, and what to tell the
// operator about it.
type restoreOwnership struct {
	// Owner is given to every restored file (nil: the running user keeps
	// them).
	Owner *restore.Owner
	// Note says whom the files were given to and why; Warning that
	// PostgreSQL will refuse to start on them as they stand.
	Note, Warning string
}

// decideOwner decides who owns a restore into target, run by the user
// euid, with --owner flag (USER[:GROUP], names or numbers; "" if not
// given). PostgreSQL starts only on a data directory owned by the user it
// runs as, so:
//   - --owner gives the files to that user (root only, as for chown);
//   - run as root without --owner, the files go to the owner of target or,
//     when it does not exist yet, of its nearest existing parent, as
//     pgBackRest gives them to the owner it finds rather than to root
//     (/var/lib/postgresql belongs to postgres); when that is root too, the
//     files stay root's, with a warning, as pg_basebackup's would;
//   - run as another user, the files are that user's; a warning says so
//     when the directory belongs to someone else.
func decideOwner(euid int, target, flag string) (restoreOwnership, error) {
	if flag != "" {
		o, err := parseOwner(flag)
		if err != nil {
			return restoreOwnership{}, err
		}
		if euid != 0 && o.UID != euid {
			return restoreOwnership{}, fmt.Errorf("--owner %s: only root can give files to another user; run restore as that user, or as root", flag)
		}
		return restoreOwnership{Owner: &o, Note: fmt.Sprintf("restored files are owned by %s (--owner)", describeUID(o.UID))}, nil
	}
	dir, uid, gid, err := existingOwner(target)
	if err != nil {
		return restoreOwnership{}, err
	}
	switch {
	case euid == 0 && uid != 0:
		return restoreOwnership{
			Owner: &restore.Owner{UID: uid, GID: gid},
			Note:  fmt.Sprintf("restored files are owned by %s, the owner of %s (--owner overrides)", describeUID(uid), dir),
		}, nil
	case euid == 0:
		return restoreOwnership{Warning: fmt.Sprintf(
			"restoring as root: the files will belong to root (%s is root's), and PostgreSQL refuses to start on a data directory "+
				"it does not own; give --owner with the OS user PostgreSQL runs as (--owner postgres), or run restore as that user", dir)}, nil
	case uid != euid:
		return restoreOwnership{Warning: fmt.Sprintf(
			"the restored files will belong to %s, but %s belongs to %s: PostgreSQL must run as %s to start on them "+
				"(run restore as the OS user PostgreSQL runs as, or as root with --owner)", describeUID(euid), dir, describeUID(uid), describeUID(euid))}, nil
	}
	return restoreOwnership{}, nil
}

// existingOwner returns path, or its nearest existing parent, with its
// owner.
func existingOwner(path string) (string, int, int, error) {
	for dir := filepath.Clean(path); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err == nil {
			st, ok := fi.Sys().(*syscall.Stat_t)
			if !ok {
				return "", 0, 0, fmt.Errorf("restore: cannot read the owner of %s", dir)
			}
			return dir, int(st.Uid), int(st.Gid), nil
		}
		if !errors.Is(err, os.ErrNotExist) || dir == filepath.Dir(dir) {
			return "", 0, 0, fmt.Errorf("restore: inspect %s: %w", dir, err)
		}
	}
}

// parseOwner reads USER[:GROUP]: names or numeric IDs; without GROUP, the
// user's primary group.
func parseOwner(s string) (restore.Owner, error) {
	name, group, hasGroup := strings.Cut(s, ":")
	bad := func(err error) (restore.Owner, error) {
		return restore.Owner{}, fmt.Errorf("--owner %q: %v; use USER or USER:GROUP, names or numeric IDs, like postgres", s, err)
	}
	var o restore.Owner
	if uid, err := strconv.Atoi(name); err == nil && uid >= 0 {
		o.UID, o.GID = uid, -1
		if u, err := user.LookupId(name); err == nil {
			o.GID, _ = strconv.Atoi(u.Gid)
		}
	} else {
		u, err := user.Lookup(name)
		if err != nil {
			return bad(err)
		}
		o.UID, _ = strconv.Atoi(u.Uid)
		o.GID, _ = strconv.Atoi(u.Gid)
	}
	if hasGroup {
		if gid, err := strconv.Atoi(group); err == nil && gid >= 0 {
			o.GID = gid
		} else {
			g, err := user.LookupGroup(group)
			if err != nil {
				return bad(err)
			}
			o.GID, _ = strconv.Atoi(g.Gid)
		}
	}
	if o.GID < 0 {
		return bad(errors.New("a numeric user without a known primary group needs :GROUP"))
	}
	return o, nil
}

// describeUID names a user ID for messages: "postgres (uid 999)".
func describeUID(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return fmt.Sprintf("%s (uid %d)", u.Username, uid)
	}
	return fmt.Sprintf("uid %d", uid)
}
