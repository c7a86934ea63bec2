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

// Transaction record kinds (xl_info & XLOG_XACT_OPMASK, xact.h).
const (
	xactOpMask         = 0x70
	xactCommit         = 0x00
	xactAbort          = 0x20
	xactCommitPrepared = 0x30
	xactAbortPrepared  = 0x40
	xactHasInfo        = 0x80

	xinfoHasDBInfo       = 1 << 0
	xinfoHasSubxacts     = 1 << 1
	xinfoHasRelfilenodes = 1 << 2
	xinfoHasInvals       = 1 << 3
	xinfoHasTwophase     = 1 << 4
	xinfoHasDroppedStats = 1 << 8
)

// XactEnd returns the transaction that a commit or abort record ends,
// as recovery_target_xid compares it (recoveryStopsBefore): xl_xid for a
// plain commit or abort, the prepared transaction's xid from the main data
// for COMMIT PREPARED and ROLLBACK PREPARED. ok is false for any other
// record, and for a prepared one whose main data does not parse.
func (rec Record) XactEnd() (xid uint32, commit, ok bool) {
	if rec.RMID != RMXact {
		return 0, false, false
	}
	op := rec.Info & xactOpMask
	switch op {
	case xactCommit, xactAbort:
		return rec.XID, op == xactCommit, true
	case xactCommitPrepared, xactAbortPrepared:
	default:
		return 0, false, false
	}
	// ParseCommitRecord / ParseAbortRecord of PostgreSQL 15: xact_time,
	// then with XLOG_XACT_HAS_INFO the xinfo word and what it announces,
	// in this order.
	d := decoder{b: rec.MainData, off: 8}
	if len(d.b) < 8 || rec.Info&xactHasInfo == 0 {
		return 0, false, false
	}
	xinfo, ok := d.u32()
	if !ok {
		return 0, false, false
	}
	skip := func(n int) bool {
		if n < 0 || d.off+n > len(d.b) {
			return false
		}
		d.off += n
		return true
	}
	counted := func(size int) bool {
		n, ok := d.u32()
		return ok && int32(n) >= 0 && skip(int(n)*size)
	}
	if xinfo&xinfoHasDBInfo != 0 && !skip(8) {
		return 0, false, false
	}
	if xinfo&xinfoHasSubxacts != 0 && !counted(4) {
		return 0, false, false
	}
	if xinfo&xinfoHasRelfilenodes != 0 && !counted(12) {
		return 0, false, false
	}
	if xinfo&xinfoHasDroppedStats != 0 && !counted(12) {
		return 0, false, false
	}
	if op == xactCommitPrepared && xinfo&xinfoHasInvals != 0 && !counted(16) {
		return 0, false, false
	}
	if xinfo&xinfoHasTwophase == 0 {
		return 0, false, false
	}
	if xid, ok = d.u32(); !ok {
		return 0, false, false
	}
	return xid, op == xactCommitPrepared, true
}
