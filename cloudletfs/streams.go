package cloudletfs

import "time"

type chunkKind int

const (
	kindAccessed chunkKind = iota
	kindModified
	kindFetched
	numKinds
)

// streamNames are the files under streams/, by kind; "io" is the fourth.
var streamNames = [numKinds]string{"chunks_accessed", "chunks_modified", "chunks_fetched"}

// ioLogLimit bounds the io stream's memory: it records every request, unlike the chunk
// streams, which record each chunk once.
const ioLogLimit = 1 << 16

// streams are the live event logs behind streams/ and the capture trace.
type streams struct {
	chunks [numKinds]*eventLog[ChunkEvent]
	ioLog  *eventLog[IOEvent]
}

func newStreams() *streams {
	s := &streams{ioLog: newEventLog[IOEvent](ioLogLimit)}
	for k := range s.chunks {
		s.chunks[k] = newEventLog[ChunkEvent](0)
	}
	return s
}

func (s *streams) chunk(k chunkKind, image string, c int64) {
	s.chunks[k].add(ChunkEvent{UnixNano: time.Now().UnixNano(), Image: image, Chunk: c})
}

func (s *streams) io(image string, write bool, off int64, n int) {
	s.ioLog.add(IOEvent{UnixNano: time.Now().UnixNano(), Image: image, Write: write, Offset: off, Length: n})
}

func (s *streams) close() {
	for _, l := range s.chunks {
		l.close()
	}
	s.ioLog.close()
}
