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
// declared size is corrupt (or hostile), and never gets the memory it asks for. Neither the
// output buffer nor a decoder's window is sized by what the stream claims: zstd's window is
// capped at the declared size, xz's dictionary is checked against it (see xz.go), and the
// output grows as bytes are decoded.
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
		xr, err := newXZReader(data, raw)
		if err != nil {
			return nil, err
		}
		r = xr
	default:
		return nil, fmt.Errorf("unknown codec %v", c)
	}
	out, err := readExactly(r, raw)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", c, err)
	}
	return out, nil
}
