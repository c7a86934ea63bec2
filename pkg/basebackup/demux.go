package basebackup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// ErrProtocol is wrapped by every error about a server message that breaks
// the BASE_BACKUP protocol.
var ErrProtocol = errors.New("basebackup: protocol violation")

// EventKind says what a CopyData message of the backup stream meant.
type EventKind int

// The kinds of Event, one per CopyData type byte (and 'd' split by where
// it occurs).
const (
	// EventArchive ('n') starts a new archive; the previous one, if any,
	// is complete.
	EventArchive EventKind = iota + 1
	// EventArchiveData ('d') is a chunk of the current archive.
	EventArchiveData
	// EventProgress ('p') reports the bytes the server has sent so far.
	EventProgress
	// EventManifest ('m') starts the backup manifest; the last archive is
	// complete. The manifest ends with the COPY stream.
	EventManifest
	// EventManifestData ('d' after 'm') is a chunk of the manifest.
	EventManifestData
)

// String names the kind for error messages and test output.
func (k EventKind) String() string {
	switch k {
	case EventArchive:
		return "archive"
	case EventArchiveData:
		return "archive data"
	case EventProgress:
		return "progress"
	case EventManifest:
		return "manifest"
	case EventManifestData:
		return "manifest data"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one demultiplexed CopyData message.
type Event struct {
	Kind EventKind
	// Name is the archive's file name ("base.tar", "16384.tar") and
	// Location the tablespace directory on the server, empty for the data
	// directory (EventArchive).
	Name, Location string
	// Data is the chunk of EventArchiveData and EventManifestData. It
	// aliases the message passed to Feed.
	Data []byte
	// Done is the byte count of EventProgress.
	Done int64
}

type demuxState int

const (
	stateBeforeArchive demuxState = iota
	stateArchive
	stateManifest
)

// Demux is the state machine over the CopyData payloads of a PostgreSQL
// 15+ BASE_BACKUP stream: archives first, each announced by 'n' and
// followed by its 'd' chunks, then optionally 'm' and the manifest's 'd'
// chunks up to the end of the COPY; 'p' progress reports may come anywhere
// and never decrease. The zero value is ready for the first message.
//
// After Feed or End returned an error, every further call returns it
// again. A Demux is not safe for concurrent use.
type Demux struct {
	state    demuxState
	names    map[string]bool
	progress int64
	err      error
}

// Feed interprets one CopyData payload (the bytes after the CopyData
// header). Errors wrap ErrProtocol and say what was wrong.
func (d *Demux) Feed(msg []byte) (Event, error) {
	if d.err != nil {
		return Event{}, d.err
	}
	ev, err := d.feed(msg)
	if err != nil {
		d.err = fmt.Errorf("%w: %w", ErrProtocol, err)
		return Event{}, d.err
	}
	return ev, nil
}

func (d *Demux) feed(msg []byte) (Event, error) {
	if len(msg) == 0 {
		return Event{}, errors.New("empty CopyData message")
	}
	body := msg[1:]
	switch msg[0] {
	case 'n':
		if d.state == stateManifest {
			return Event{}, errors.New("new archive after the manifest started")
		}
		name, rest, ok := cutCString(body)
		if !ok {
			return Event{}, errors.New("new-archive message: archive name is not NUL-terminated")
		}
		location, rest, ok := cutCString(rest)
		if !ok {
			return Event{}, errors.New("new-archive message: tablespace location is not NUL-terminated")
		}
		if len(rest) != 0 {
			return Event{}, fmt.Errorf("new-archive message: %d bytes after the tablespace location", len(rest))
		}
		if err := checkArchiveName(name); err != nil {
			return Event{}, err
		}
		if d.names[name] {
			return Event{}, fmt.Errorf("archive %q sent twice", name)
		}
		if d.names == nil {
			d.names = map[string]bool{}
		}
		d.names[name] = true
		d.state = stateArchive
		return Event{Kind: EventArchive, Name: name, Location: location}, nil
	case 'd':
		switch d.state {
		case stateArchive:
			return Event{Kind: EventArchiveData, Data: body}, nil
		case stateManifest:
			return Event{Kind: EventManifestData, Data: body}, nil
		}
		return Event{}, errors.New("data before the first archive")
	case 'p':
		if len(body) != 8 {
			return Event{}, fmt.Errorf("progress message has %d bytes, want 8", len(body))
		}
		done := int64(binary.BigEndian.Uint64(body))
		if done < 0 {
			return Event{}, fmt.Errorf("progress %d is negative", done)
		}
		if done < d.progress {
			return Event{}, fmt.Errorf("progress went back from %d to %d bytes", d.progress, done)
		}
		d.progress = done
		return Event{Kind: EventProgress, Done: done}, nil
	case 'm':
		switch d.state {
		case stateBeforeArchive:
			return Event{}, errors.New("manifest before any archive")
		case stateManifest:
			return Event{}, errors.New("second manifest")
		}
		if len(body) != 0 {
			return Event{}, fmt.Errorf("manifest message has %d unexpected bytes", len(body))
		}
		d.state = stateManifest
		return Event{Kind: EventManifest}, nil
	}
	return Event{}, fmt.Errorf("unknown CopyData type byte 0x%02x", msg[0])
}

// End checks that the stream may end here (the server sent CopyDone): at
// least one archive must have been sent. The last archive, or the
// manifest, is complete when End returns nil.
func (d *Demux) End() error {
	if d.err != nil {
		return d.err
	}
	if d.state == stateBeforeArchive {
		d.err = fmt.Errorf("%w: COPY ended before any archive", ErrProtocol)
		return d.err
	}
	return nil
}

// cutCString splits b after its first NUL byte.
func cutCString(b []byte) (s string, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// checkArchiveName applies pg_basebackup's sanity rules: the consumer may
// use the name as a file name, so it must not be empty, hidden or a path.
func checkArchiveName(name string) error {
	if name == "" || name[0] == '.' || strings.ContainsAny(name, `/\`) {
		return fmt.Errorf("invalid archive name %q", name)
	}
	return nil
}
