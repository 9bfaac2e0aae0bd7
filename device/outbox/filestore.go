package outbox

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Records are framed on disk as
//
//	length  uint32 little-endian, 1..maxRecord
//	crc     uint32 little-endian, CRC-32C of the length bytes and the payload
//	payload length bytes
//
// so a torn write, a zeroed block or a flipped bit is detected, and after a
// damaged region the reader can find the next intact frame again.
const (
	frameHeader = 8
	maxRecord   = 1 << 28
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func appendFrame(dst, rec []byte) []byte {
	var h [frameHeader]byte
	binary.LittleEndian.PutUint32(h[:4], uint32(len(rec)))
	c := crc32.Update(0, castagnoli, h[:4])
	c = crc32.Update(c, castagnoli, rec)
	binary.LittleEndian.PutUint32(h[4:], c)
	dst = append(dst, h[:]...)
	return append(dst, rec...)
}

// frameAt returns the payload length of an intact frame at data[off:], or
// -1.
func frameAt(data []byte, off int) int {
	if len(data)-off < frameHeader {
		return -1
	}
	n := binary.LittleEndian.Uint32(data[off:])
	if n == 0 || n > maxRecord || uint64(len(data)-off-frameHeader) < uint64(n) {
		return -1
	}
	c := crc32.Update(0, castagnoli, data[off:off+4])
	c = crc32.Update(c, castagnoli, data[off+frameHeader:off+frameHeader+int(n)])
	if c != binary.LittleEndian.Uint32(data[off+4:]) {
		return -1
	}
	return int(n)
}

// scanFrames calls fn for every intact frame of data and reports damaged
// regions. It returns the offset where the intact data ends when the damage
// runs to the end (a torn tail), or len(data).
func scanFrames(data []byte, name string, dmg *Damage, fn func(rec []byte) error) (int, error) {
	off := 0
	for off < len(data) {
		if n := frameAt(data, off); n > 0 {
			if err := fn(data[off+frameHeader : off+frameHeader+n]); err != nil {
				return off, err
			}
			off += frameHeader + n
			continue
		}
		next := -1
		for i := off + 1; i+frameHeader <= len(data); i++ {
			if frameAt(data, i) > 0 {
				next = i
				break
			}
		}
		if next < 0 {
			dmg.add(int64(len(data)-off), fmt.Errorf("%s: torn or corrupt tail of %d bytes at offset %d dropped", name, len(data)-off, off))
			return off, nil
		}
		dmg.add(int64(next-off), fmt.Errorf("%s: corrupt region of %d bytes at offset %d skipped", name, next-off, off))
		off = next
	}
	return off, nil
}

// DecodeFrames splits data, the content of a segment file, into its intact
// records and reports the damaged regions. It is what a FileStore does on
// Load, exposed for diagnostics tools and fuzzing.
func DecodeFrames(data []byte) ([][]byte, Damage) {
	var recs [][]byte
	var dmg Damage
	_, _ = scanFrames(data, "segment", &dmg, func(rec []byte) error {
		recs = append(recs, rec)
		return nil
	})
	return recs, dmg
}

// FileStore is the durable Store: a directory of segment files holding
// framed records. Appends go to the newest segment; a segment that reaches
// the segment size is synced and a new one started. A Checkpoint writes the
// live state into a new snapshot segment, renames it into place and removes
// every older segment, which is how acknowledged data leaves the disk.
//
// Files are named by a 16-hex-digit index: NNN.seg for a segment, NNN.snap
// for a segment that starts with a snapshot (the log starts at the newest
// snapshot), NNN.tmp for a snapshot being written (removed on Load).
//
// Only one FileStore may use a directory at a time: NewFileStore locks the
// directory (flock on its file "lock", on Unix systems) until Close, and
// fails with ErrLocked while another FileStore, in this process or
// another, holds it.
type FileStore struct {
	dir     string
	segSize int64
	lock    *os.File // released by Close

	mu     sync.Mutex
	f      *os.File // current segment, nil before Load and after Close
	cur    uint64   // index of the current segment
	files  []string // names of the live segment files, oldest first
	curLen int64
	total  int64
	buf    []byte
	loaded bool
	// unsynced holds segments rolled over but not yet synced: the next Sync
	// syncs and closes them, keeping the fsync off the Append path.
	unsynced []*os.File
	noSync   bool // fuzzing only: fsync costs seconds on a busy disk
}

var _ Store = (*FileStore)(nil)

// ErrLocked is returned by NewFileStore (and OpenDir) when another
// FileStore holds the directory.
var ErrLocked = errors.New("store directory locked")

// FileOption configures a FileStore.
type FileOption func(*FileStore) error

// WithSegmentSize sets the size at which a FileStore starts a new segment
// file (default DefaultSegmentSize); it must be positive.
func WithSegmentSize(n int64) FileOption {
	return func(s *FileStore) error {
		if n <= 0 {
			return fmt.Errorf("segment size must be positive, not %d", n)
		}
		s.segSize = n
		return nil
	}
}

// DefaultSegmentSize is the segment size of a FileStore unless
// WithSegmentSize says otherwise.
const DefaultSegmentSize = 4 << 20

// NewFileStore returns a FileStore on dir, creating the directory if
// needed, and locks the directory until Close (ErrLocked when another
// FileStore holds it). Nothing is read until Load.
func NewFileStore(dir string, opts ...FileOption) (*FileStore, error) {
	s := &FileStore{dir: dir, segSize: DefaultSegmentSize}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("outbox: create store directory: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s.lock = lock
	return s, nil
}

// Dir returns the directory of the store.
func (s *FileStore) Dir() string { return s.dir }

const (
	extSeg  = ".seg"
	extSnap = ".snap"
	extTmp  = ".tmp"
)

func (s *FileStore) path(idx uint64, ext string) string {
	return filepath.Join(s.dir, fmt.Sprintf("%016x%s", idx, ext))
}

type segFile struct {
	idx  uint64
	ext  string
	name string
}

func (s *FileStore) list() ([]segFile, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []segFile
	for _, e := range ents {
		name := e.Name()
		ext := filepath.Ext(name)
		if ext != extSeg && ext != extSnap && ext != extTmp {
			continue // the lock file, and anything else
		}
		base := strings.TrimSuffix(name, ext)
		idx, err := strconv.ParseUint(base, 16, 64)
		if err != nil || len(base) != 16 {
			continue
		}
		out = append(out, segFile{idx: idx, ext: ext, name: name})
	}
	slices.SortFunc(out, func(a, b segFile) int {
		if a.idx != b.idx {
			if a.idx < b.idx {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ext, b.ext)
	})
	return out, nil
}

// Load implements Store. A torn tail in the newest segment is truncated so
// that new records follow intact ones.
func (s *FileStore) Load(fn func(rec []byte) error) (Damage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loaded {
		return Damage{}, errors.New("outbox: file store loaded twice")
	}
	all, err := s.list()
	if err != nil {
		return Damage{}, fmt.Errorf("outbox: list store: %w", err)
	}
	// The log starts at the newest snapshot; anything before it was
	// superseded (its removal was interrupted), and .tmp files are
	// snapshots that never completed.
	start := 0
	for i, f := range all {
		if f.ext == extSnap {
			start = i
		}
	}
	var files []segFile
	for i, f := range all {
		if f.ext == extTmp || i < start {
			_ = os.Remove(filepath.Join(s.dir, f.name))
			continue
		}
		files = append(files, f)
	}
	var dmg Damage
	for i, f := range files {
		p := filepath.Join(s.dir, f.name)
		data, err := os.ReadFile(p)
		if err != nil {
			return dmg, fmt.Errorf("outbox: read segment: %w", err)
		}
		end, err := scanFrames(data, f.name, &dmg, fn)
		if err != nil {
			return dmg, err
		}
		size := int64(len(data))
		if end < len(data) && i == len(files)-1 {
			if err := os.Truncate(p, int64(end)); err != nil {
				return dmg, fmt.Errorf("outbox: truncate torn segment: %w", err)
			}
			size = int64(end)
		}
		s.total += size
		s.files = append(s.files, f.name)
		s.cur, s.curLen = f.idx, size
	}
	var p string
	if len(files) == 0 {
		s.cur, s.curLen = 1, 0
		p = s.path(1, extSeg)
		s.files = []string{filepath.Base(p)}
	} else {
		p = filepath.Join(s.dir, files[len(files)-1].name)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return dmg, fmt.Errorf("outbox: open segment: %w", err)
	}
	if len(files) == 0 {
		_ = s.syncDir()
	}
	s.f = f
	s.loaded = true
	return dmg, nil
}

// Append implements Store: all records go out in one write system call.
func (s *FileStore) Append(recs ...[]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return ErrClosed
	}
	buf := s.buf[:0]
	for _, r := range recs {
		if len(r) == 0 || len(r) > maxRecord {
			return fmt.Errorf("outbox: record of %d bytes out of range", len(r))
		}
		buf = appendFrame(buf, r)
	}
	if s.curLen > 0 && s.curLen+int64(len(buf)) > s.segSize {
		if err := s.roll(); err != nil {
			return err
		}
	}
	n, err := s.f.Write(buf)
	if err != nil {
		if n > 0 {
			// Do not leave half a frame in front of the next append.
			_ = s.f.Truncate(s.curLen)
		}
		return fmt.Errorf("outbox: write segment: %w", err)
	}
	s.curLen += int64(n)
	s.total += int64(n)
	if cap(buf) <= 1<<20 {
		s.buf = buf
	} else {
		s.buf = nil
	}
	return nil
}

func (s *FileStore) roll() error {
	if len(s.unsynced) >= 4 {
		// Nobody syncs (SyncNever): do not pile up open files.
		for _, f := range s.unsynced {
			_ = s.fsync(f)
			_ = f.Close()
		}
		s.unsynced = nil
	}
	next := s.cur + 1
	f, err := os.OpenFile(s.path(next, extSeg), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("outbox: new segment: %w", err)
	}
	s.unsynced = append(s.unsynced, s.f)
	_ = s.syncDir()
	s.f, s.cur, s.curLen = f, next, 0
	s.files = append(s.files, filepath.Base(s.path(next, extSeg)))
	return nil
}

// Sync implements Store. It may run concurrently with Append.
func (s *FileStore) Sync() error {
	s.mu.Lock()
	f, old := s.f, s.unsynced
	s.unsynced = nil
	s.mu.Unlock()
	var err error
	for _, o := range old {
		err = errors.Join(err, s.fsync(o), o.Close())
	}
	if f != nil {
		// A concurrent Checkpoint or Close may have closed f: what it
		// held is then synced or superseded.
		if e := s.fsync(f); !errors.Is(e, os.ErrClosed) {
			err = errors.Join(err, e)
		}
	}
	if err != nil {
		return fmt.Errorf("outbox: sync segment: %w", err)
	}
	return nil
}

// Checkpoint implements Store: the snapshot is written to NNN.tmp, synced,
// renamed to NNN.snap, and the older segments are removed.
func (s *FileStore) Checkpoint(snapshot func(add func(rec []byte) error) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return ErrClosed
	}
	next := s.cur + 1
	tmp := s.path(next, extTmp)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("outbox: checkpoint: %w", err)
	}
	w := bufio.NewWriterSize(f, 256<<10)
	var size int64
	var frame []byte
	err = snapshot(func(rec []byte) error {
		if len(rec) == 0 || len(rec) > maxRecord {
			return fmt.Errorf("outbox: record of %d bytes out of range", len(rec))
		}
		frame = appendFrame(frame[:0], rec)
		size += int64(len(frame))
		_, err := w.Write(frame)
		return err
	})
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = s.fsync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	snap := s.path(next, extSnap)
	if err == nil {
		err = os.Rename(tmp, snap)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("outbox: checkpoint: %w", err)
	}
	_ = s.syncDir()
	nf, err := os.OpenFile(snap, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		// The snapshot is in place and will be loaded next time; this
		// process cannot append any more.
		_ = s.f.Close()
		s.f = nil
		return fmt.Errorf("outbox: checkpoint: %w", err)
	}
	_ = s.f.Close()
	for _, f := range s.unsynced {
		_ = f.Close()
	}
	s.unsynced = nil
	for _, name := range s.files {
		_ = os.Remove(filepath.Join(s.dir, name))
	}
	s.f, s.cur, s.curLen, s.total = nf, next, size, size
	s.files = []string{filepath.Base(snap)}
	return nil
}

// Size implements Store.
func (s *FileStore) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// Close implements Store. It releases the directory.
func (s *FileStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if s.f != nil {
		for _, f := range append(s.unsynced, s.f) {
			err = errors.Join(err, s.fsync(f), f.Close())
		}
	}
	s.f, s.unsynced = nil, nil
	s.unlock()
	if err != nil {
		return fmt.Errorf("outbox: close store: %w", err)
	}
	return nil
}

// unlock releases the directory lock. Called with mu held.
func (s *FileStore) unlock() {
	if s.lock != nil {
		_ = s.lock.Close()
		s.lock = nil
	}
}

func (s *FileStore) fsync(f *os.File) error {
	if s.noSync {
		return nil
	}
	return f.Sync()
}

func (s *FileStore) syncDir() error {
	if s.noSync {
		return nil
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
