package overlay

import (
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// compress encodes raw with the codec. zstd at its default level decodes fastest (the demand
// path); xz gives the smallest files at a higher decode cost. The benchmark in bench/ compares.
func compress(c Codec, raw []byte) ([]byte, error) {
	switch c {
	case CodecZstd:
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		defer enc.Close()
		return enc.EncodeAll(raw, nil), nil
	case CodecXZ:
		var buf bytes.Buffer
		w, err := xz.NewWriter(&buf)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(raw); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	return nil, fmt.Errorf("unknown codec %v", c)
}

// decompress decodes exactly raw bytes, and fails on more: a blob that inflates past its
// declared size is corrupt (or hostile), and never gets the memory it asks for.
func decompress(c Codec, data []byte, raw int64) ([]byte, error) {
	var r io.Reader
	switch c {
	case CodecZstd:
		dec, err := zstd.NewReader(bytes.NewReader(data), zstd.WithDecoderMaxMemory(uint64(raw)+1<<16), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		defer dec.Close()
		r = dec
	case CodecXZ:
		xr, err := xz.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, err
		}
		r = xr
	default:
		return nil, fmt.Errorf("unknown codec %v", c)
	}
	out := make([]byte, raw)
	if _, err := io.ReadFull(r, out); err != nil {
		return nil, fmt.Errorf("decode %s: %w", c, err)
	}
	if n, _ := r.Read(make([]byte, 1)); n != 0 {
		return nil, fmt.Errorf("decode %s: more than the declared %d bytes", c, raw)
	}
	return out, nil
}
