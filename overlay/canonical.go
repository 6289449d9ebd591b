package overlay

// canonical chooses where repeated content is stored. When the same bytes are at several
// places (a file's pages in the guest's page cache, memory/image, and the file itself,
// disk/image), the caller's entries store it at whichever place it saw first; canonical moves
// the stored copy to the lowest place (image number, then chunk number), and turns the others
// into self references to it. The disk image comes first: a file stays where it is on disk
// from one version of an app to the next, while page-cache pages land wherever the allocator
// had room, so blobs in place order then hold a file's chunks together, and a next version
// shares them. The content's prefetch position stays where the caller put it (its first
// touch, at any place): order is rewritten to name the new stored entry.
//
// It returns new slices and leaves the caller's alone. Self references to a place that is not
// a stored chunk are left as they are, for Write to refuse.
func canonical(entries []Entry, order []int) ([]Entry, []int) {
	at := make(map[placeKey]int, len(entries))
	for i, e := range entries {
		at[placeKey{e.Image, e.Index}] = i
	}
	// best maps each stored entry that others repeat to the lowest place holding its bytes.
	best := map[int]int{}
	for i, e := range entries {
		if e.Kind != KindSelf {
			continue
		}
		t, ok := at[placeKey{e.SameImage, e.SameIndex}]
		if !ok || entries[t].Kind != KindBlob {
			continue
		}
		b, seen := best[t]
		if !seen {
			b = t
		}
		if placeLess(e, entries[b]) {
			b = i
		}
		best[t] = b
	}
	out := append([]Entry(nil), entries...)
	moved := false
	for t, b := range best {
		if b == t {
			continue
		}
		moved = true
		out[b].Kind, out[b].SameImage, out[b].SameIndex = KindBlob, 0, 0
		out[t].Kind, out[t].SameImage, out[t].SameIndex = KindSelf, out[b].Image, out[b].Index
	}
	if !moved {
		return out, order
	}
	for i, e := range entries {
		if e.Kind != KindSelf {
			continue
		}
		t, ok := at[placeKey{e.SameImage, e.SameIndex}]
		if b, moves := best[t]; ok && moves && b != t && b != i {
			out[i].SameImage, out[i].SameIndex = out[b].Image, out[b].Index
		}
	}
	newOrder := make([]int, len(order))
	for n, o := range order {
		newOrder[n] = o
		if b, ok := best[o]; ok {
			newOrder[n] = b
		}
	}
	return out, newOrder
}

// placeLess orders entries by place: image number, then chunk number.
func placeLess(a, b Entry) bool {
	return a.Image < b.Image || a.Image == b.Image && a.Index < b.Index
}
