package overlay

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrOtherBase is wrapped by the error for an overlay made for another base than the one
// expected, or for other images.
var ErrOtherBase = errors.New("the overlay was made for another base")

// Expect is what a reader knows before it opens an overlay: the base at hand. Open checks the
// index head (base ID, images) against it before it decodes a single entry, so that an overlay
// for another base costs nothing more, and bounds the index by what the images can need. The
// zero Expect accepts any base: for tools that only describe an overlay.
type Expect struct {
	BaseID string  // hex ID of the base; "" accepts any
	Images []Image // the base's images, in order; nil accepts any
}

// check refuses an index head that does not fit the base.
func (e Expect) check(ix *Index, id string) error {
	if got := hex.EncodeToString(ix.BaseID[:]); e.BaseID != "" && got != e.BaseID {
		return fmt.Errorf("overlay %s is for base %s, not %s: %w", id, got, e.BaseID, ErrOtherBase)
	}
	if e.Images != nil && !slices.Equal(ix.Images, e.Images) {
		return fmt.Errorf("overlay %s has images %s, but base %s has %s: %w", id, imageList(ix.Images), e.BaseID, imageList(e.Images), ErrOtherBase)
	}
	return nil
}

// indexRawLimit is the largest uncompressed index an expected overlay can have.
func (e Expect) indexRawLimit() int64 {
	if e.Images == nil {
		return MaxIndexRaw
	}
	return indexRawBound(e.Images)
}

func imageList(images []Image) string {
	var s []string
	for _, im := range images {
		s = append(s, fmt.Sprintf("%s of %d bytes", im.Name, im.Size))
	}
	return "[" + strings.Join(s, ", ") + "]"
}
