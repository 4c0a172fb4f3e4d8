package uffd

import (
	"math/bits"
	"sync/atomic"
)

// bitmap is a fixed-size set of page indexes that many goroutines update
// without locks.
type bitmap struct {
	words []atomic.Uint64
	n     int
}

func newBitmap(n int) *bitmap {
	return &bitmap{words: make([]atomic.Uint64, (n+63)/64), n: n}
}

func (b *bitmap) get(i int) bool { return b.words[i/64].Load()&(1<<(uint(i)%64)) != 0 }

// set marks i and reports whether it was already marked.
func (b *bitmap) set(i int) bool {
	m := uint64(1) << (uint(i) % 64)
	return b.words[i/64].Or(m)&m != 0
}

func (b *bitmap) clear(i int) { b.words[i/64].And(^(uint64(1) << (uint(i) % 64))) }

// setRange marks [i, j) and returns how many were newly marked.
func (b *bitmap) setRange(i, j int) int {
	n := 0
	for ; i < j; i++ {
		if !b.set(i) {
			n++
		}
	}
	return n
}

func (b *bitmap) count() int {
	n := 0
	for i := range b.words {
		n += bits.OnesCount64(b.words[i].Load())
	}
	return n
}
