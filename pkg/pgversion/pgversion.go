// Package pgversion reads PostgreSQL's server_version parameter. The
// receiver (READ_REPLICATION_SLOT needs 15) and the base backup (the
// BASE_BACKUP grammar changed in 15) both decide by the major version; it
// imports nothing of barnacle's.
//
// Other modules may import this package, but its API is not stable.
package pgversion

import (
	"fmt"
	"strconv"
	"strings"
)

// Major returns the major version from the server_version parameter
// ("15.8 (Debian 15.8-1)", "16beta1", "9.6.24"; for 9.x the major version
// is reported as 9).
func Major(serverVersion string) (int, error) {
	end := strings.IndexFunc(serverVersion, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(serverVersion)
	}
	major, err := strconv.Atoi(serverVersion[:end])
	if err != nil || major <= 0 {
		return 0, fmt.Errorf("parse server version %q", serverVersion)
	}
	return major, nil
}
