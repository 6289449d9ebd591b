package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"hash/crc32"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/vm"
)

// defaultVMConfig is the smallest VM a base may describe.
func defaultVMConfig() vm.Config {
	cfg := vm.DefaultConfig()
	cfg.MemoryBytes = 16 << 20
	return cfg
}

// Header fields of the overlay format (docs/overlay-format.md), for files that lie in them.
const (
	hdrIndexLen = 12
	hdrIndexRaw = 20
	hdrIndexSHA = 28
	hdrCRC      = 92
)

// claimHeader is a well-formed 96-byte overlay header whose index claims indexLen bytes.
func claimHeader(indexLen int64) []byte {
	h := make([]byte, overlay.HeaderSize)
	copy(h, overlay.Magic)
	binary.LittleEndian.PutUint16(h[8:], overlay.Version)
	binary.LittleEndian.PutUint64(h[hdrIndexLen:], uint64(indexLen))
	binary.LittleEndian.PutUint64(h[hdrIndexRaw:], 1<<20)
	binary.LittleEndian.PutUint32(h[hdrCRC:], crc32.ChecksumIEEE(h[:hdrCRC]))
	return h
}

// xzBombOverlay is a valid xz overlay for b, with no chunks, whose device state is a tiny xz
// stream asking for a 4 GiB dictionary. The index pins the bomb's digest: it gets past every
// check to the decoder.
func xzBombOverlay(t *testing.T, b *base.Base) []byte {
	t.Helper()
	var id [32]byte
	if _, err := hex.Decode(id[:], []byte(b.ID)); err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(b.Manifest.VM)
	m := overlay.Meta{BaseID: id, Codec: overlay.CodecXZ, Config: cfg, Images: []overlay.Image{
		{Name: "disk", Size: b.Manifest.Files[base.DiskFile].Size},
		{Name: "memory", Size: b.Manifest.Files[base.MemoryFile].Size}}}
	var buf bytes.Buffer
	if _, err := overlay.Write(context.Background(), &buf, t.TempDir(), m, []byte("hello, hostile world"), nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	file := buf.Bytes()
	dataStart := overlay.HeaderSize + int(binary.LittleEndian.Uint64(file[hdrIndexLen:]))
	// With no chunks, the device state is the whole data section.
	dev := file[dataStart:]
	oldSum := sha256.Sum256(dev)
	const streamHeader = 12
	hlen := (int(dev[streamHeader]) + 1) * 4
	bh := dev[streamHeader : streamHeader+hlen]
	i := bytes.Index(bh, []byte{0x21, 0x01}) // the LZMA2 filter, one byte of properties
	if i < 0 {
		t.Fatalf("no LZMA2 filter in the block header % x", bh)
	}
	bh[i+2] = 40 // dictionary code 40: 4 GiB - 1
	binary.LittleEndian.PutUint32(bh[hlen-4:], crc32.ChecksumIEEE(bh[:hlen-4]))
	newSum := sha256.Sum256(dev)

	// Pin the new digest in the index, and the new index in the header.
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	raw, err := dec.DecodeAll(file[overlay.HeaderSize:dataStart], nil)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(raw, oldSum[:]) != 1 {
		t.Fatal("the device state's digest is not once in the index")
	}
	raw = bytes.Replace(raw, oldSum[:], newSum[:], 1)
	enc, _ := zstd.NewWriter(nil)
	z := enc.EncodeAll(raw, nil)
	enc.Close()
	h := bytes.Clone(file[:overlay.HeaderSize])
	binary.LittleEndian.PutUint64(h[hdrIndexLen:], uint64(len(z)))
	sum := sha256.Sum256(raw)
	copy(h[hdrIndexSHA:], sum[:])
	binary.LittleEndian.PutUint32(h[hdrCRC:], crc32.ChecksumIEEE(h[:hdrCRC]))
	return append(append(h, z...), dev...)
}
