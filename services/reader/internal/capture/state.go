package capture

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/oneway-sync/oneway/shared/errs"
)

// Store keeps capture state objects in JetStream (the Object Store bucket
// bus.CaptureBucket), so a standby reader on another machine finds them.
// Each object records the lineage of the position it belongs to: an object
// of another lineage is a leftover and reads as missing.
type Store struct {
	js  jetstream.JetStream
	obj jetstream.ObjectStore
}

// NewStore wraps the capture state bucket obj of js.
func NewStore(js jetstream.JetStream, obj jetstream.ObjectStore) *Store {
	return &Store{js: js, obj: obj}
}

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
	info, err := s.obj.GetInfo(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return errNoList
	}
	if err != nil {
		return errs.Unavailable(fmt.Errorf("read capture state %s: %w", name, err))
	}
	if info.Metadata[metaLineage] != lineage {
		return errNoList
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("read capture state %s: %w", name, err)
	}
	if err := s.download(ctx, info, f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("read capture state %s: %w", name, err)
	}
	return nil
}

// download writes an object's chunks to w, pulling a few at a time, and
// checks its size and digest. (The Object Store's Get lets the server push
// chunks ahead of a slower writer, up to the client's pending limit of 64
// MiB: a reader's peak memory.)
func (s *Store) download(ctx context.Context, info *jetstream.ObjectInfo, w io.Writer) error {
	fail := func(err error) error {
		return errs.Unavailable(fmt.Errorf("read capture state %s: %w", info.Name, err))
	}
	h := sha256.New()
	var size uint64
	if info.Chunks > 0 {
		cons, err := s.js.OrderedConsumer(ctx, "OBJ_"+info.Bucket, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{"$O." + info.Bucket + ".C." + info.NUID}})
		if err != nil {
			return fail(err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(4))
		if err != nil {
			return fail(err)
		}
		defer it.Stop()
		for n := uint32(0); n < info.Chunks; n++ {
			// A chunk that does not come (the object was replaced and its
			// chunks purged meanwhile) fails the download; the caller
			// retries with the current object.
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			msg, err := it.Next(jetstream.NextContext(cctx))
			cancel()
			if err != nil {
				return fail(fmt.Errorf("chunk %d of %d: %w", n+1, info.Chunks, err))
			}
			if _, err := w.Write(msg.Data()); err != nil {
				return fmt.Errorf("read capture state %s: %w", info.Name, err)
			}
			h.Write(msg.Data())
			size += uint64(len(msg.Data()))
		}
	}
	want, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil || size != info.Size || !bytes.Equal(h.Sum(nil), want) {
		return fail(fmt.Errorf("%d bytes with digest %x, the object says %d bytes, %s (replaced meanwhile?)",
			size, h.Sum(nil), info.Size, info.Digest))
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
