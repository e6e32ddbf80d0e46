package capture

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/errs"
)

// Store keeps capture state objects in JetStream (the Object Store bucket
// bus.CaptureBucket), so a standby reader on another machine finds them.
// Each object records the lineage of the position it belongs to: an object
// of another lineage is a leftover and reads as missing.
type Store struct {
	obj jetstream.ObjectStore
}

// NewStore wraps the capture state bucket.
func NewStore(obj jetstream.ObjectStore) *Store { return &Store{obj: obj} }

const (
	metaLineage = "lineage"
	metaCycle   = "cycle"
)

// NewLineage returns a fresh lineage id.
func NewLineage() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// put writes an object from r, replacing the one of that name only once it
// is complete (Object Store writes the chunks, then the new metadata).
func (s *Store) put(ctx context.Context, name, lineage string, cycle uint64, r io.Reader) error {
	meta := jetstream.ObjectMeta{Name: name, Metadata: map[string]string{
		metaLineage: lineage, metaCycle: strconv.FormatUint(cycle, 10)}}
	if _, err := s.obj.Put(ctx, meta, r); err != nil {
		return errs.Unavailable(fmt.Errorf("store capture state %s: %w", name, err))
	}
	return nil
}

// PutFile uploads a file as the named object.
func (s *Store) PutFile(ctx context.Context, name, lineage string, cycle uint64, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("store capture state %s: %w", name, err)
	}
	defer f.Close()
	return s.put(ctx, name, lineage, cycle, f)
}

// PutBytes stores data as the named object.
func (s *Store) PutBytes(ctx context.Context, name, lineage string, data []byte) error {
	return s.put(ctx, name, lineage, 0, bytes.NewReader(data))
}

// get opens the named object when it exists and has the lineage.
func (s *Store) get(ctx context.Context, name, lineage string) (jetstream.ObjectResult, error) {
	res, err := s.obj.Get(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, errNoList
	}
	if err != nil {
		return nil, errs.Unavailable(fmt.Errorf("read capture state %s: %w", name, err))
	}
	info, err := res.Info()
	if err != nil {
		res.Close()
		return nil, errs.Unavailable(fmt.Errorf("read capture state %s: %w", name, err))
	}
	if info.Metadata[metaLineage] != lineage {
		res.Close()
		return nil, errNoList
	}
	return res, nil
}

// GetFile downloads the named object into path. It returns errNoList when
// the object is missing or of another lineage.
func (s *Store) GetFile(ctx context.Context, name, lineage, path string) error {
	res, err := s.get(ctx, name, lineage)
	if err != nil {
		return err
	}
	defer res.Close()
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("read capture state %s: %w", name, err)
	}
	if _, err := io.Copy(f, res); err != nil {
		f.Close()
		return errs.Unavailable(fmt.Errorf("read capture state %s: %w", name, err))
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("read capture state %s: %w", name, err)
	}
	return nil
}

// GetBytes reads the named object; errNoList when missing or of another
// lineage.
func (s *Store) GetBytes(ctx context.Context, name, lineage string) ([]byte, error) {
	res, err := s.get(ctx, name, lineage)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	data, err := io.ReadAll(res)
	if err != nil {
		return nil, errs.Unavailable(fmt.Errorf("read capture state %s: %w", name, err))
	}
	return data, nil
}

// Delete removes the named object; a missing one is not an error.
func (s *Store) Delete(ctx context.Context, name string) error {
	err := s.obj.Delete(ctx, name)
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return errs.Unavailable(fmt.Errorf("delete capture state %s: %w", name, err))
	}
	return nil
}
