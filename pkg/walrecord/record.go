package walrecord

import (
	"bytes"
	"encoding/binary"
	"time"
)

// restorePointSize is sizeof(xl_restore_point): TimestampTz rp_time and
// char rp_name[MAXFNAMELEN] (64).
const restorePointSize = 8 + 64

// pgEpoch is PostgreSQL's timestamp epoch: a TimestampTz counts
// microseconds from it.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// RestorePoint returns the name and time of a restore point record
// (pg_create_restore_point, XLOG_RESTORE_POINT); ok is false for any other
// record.
func (rec Record) RestorePoint() (name string, at time.Time, ok bool) {
	if rec.RMID != RMXLOG || rec.Info&^InfoMask != XLOGRestorePoint || len(rec.MainData) < restorePointSize {
		return "", time.Time{}, false
	}
	us := int64(binary.LittleEndian.Uint64(rec.MainData))
	n := rec.MainData[8:restorePointSize]
	if i := bytes.IndexByte(n, 0); i >= 0 {
		n = n[:i]
	}
	return string(n), pgEpoch.Add(time.Duration(us) * time.Microsecond), true
}
