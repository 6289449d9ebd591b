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

// blobDecoder decodes a zstd blob in one call, straight into a buffer of its declared size,
// with one decoder shared by every call (DecodeAll is safe for concurrent use). decompress
// sets up a streaming decoder for each blob and grows its output as bytes come; at 1 Gbit/s
// that set-up and growth was a fifth of the fetching process's CPU (measured on the
// realistic guest), taken from a VM that shares the cores.
//
// Only a frame that declares exactly the blob's raw size, of at most readRun bytes, in one
// segment or a window no larger, takes this path: the output buffer is then what the index
// declares and the decoder is capped to it (a frame that would decode to more fails). Any
// other frame, hostile or not, goes through decompress and its checks.
type blobDecoder struct{ dec *zstd.Decoder }

func newBlobDecoder() (*blobDecoder, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderMaxMemory(readRun),
		zstd.WithDecoderMaxWindow(readRun), zstd.WithDecoderConcurrency(0))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &blobDecoder{dec: dec}, nil
}

func (d *blobDecoder) close() { d.dec.Close() }

// decode decodes z to exactly raw bytes.
func (d *blobDecoder) decode(c Codec, z []byte, raw int64) ([]byte, error) {
	if c != CodecZstd || raw > readRun || !d.oneCall(z, raw) {
		return decompress(c, z, raw)
	}
	out, err := d.dec.DecodeAll(z, make([]byte, 0, raw))
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", c, err)
	}
	if int64(len(out)) != raw {
		return nil, fmt.Errorf("decode %s: %d bytes, want %d: %w", c, len(out), raw, errTooLong)
	}
	return out, nil
}

// oneCall says whether z's frame header declares raw bytes and a window within them.
func (d *blobDecoder) oneCall(z []byte, raw int64) bool {
	var h zstd.Header
	if h.Decode(z) != nil || h.Skippable || !h.HasFCS || h.FrameContentSize != uint64(raw) {
		return false
	}
	return h.SingleSegment || h.WindowSize <= uint64(raw)
}
