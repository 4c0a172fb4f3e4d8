// Package uffd owns lazy restore of guest memory through userfaultfd: a page
// server that speaks Firecracker's UFFD handler protocol and pages a memory
// image in on demand, then prefetches the rest in the background.
//
// Protocol: the server listens on a unix socket; the VMM connects once and
// sends, in one message, the userfaultfd (SCM_RIGHTS) and a JSON array of
// Mapping. From then on the server reads uffd events: MISSING page faults are
// served with UFFDIO_COPY from the Source (UFFDIO_ZEROPAGE for zero blocks),
// UFFD_EVENT_REMOVE (balloon inflation, MADV_DONTNEED) marks pages so that
// later faults there get zero pages, never image data. The server stops when
// the peer exits (socket hang-up, or its process dies), when Close is called
// or when Serve's context ends.
//
// Invariants:
//   - Guest memory is only ever written by the kernel through UFFDIO_COPY and
//     UFFDIO_ZEROPAGE; the server never touches the peer's memory itself.
//   - The fault handler runs on its own locked OS thread and nothing else
//     there can fault on the registered range, so it never blocks on itself.
//   - A page is populated at most once per "missing" period: the present
//     bitmap is set after every successful copy, and EEXIST from a copy that
//     lost a race (fault vs prefetch) counts as success, never as an error.
//   - A removed page is never filled from the image again: removals are
//     recorded under removeMu's write lock in the same critical section as the
//     read() that consumed the event, and prefetch copies run under the read
//     lock after re-checking the removed bitmap, so no prefetch copy can land
//     after the kernel has zapped the range.
//   - EAGAIN (the peer's mappings are changing) is never an error: the fault is
//     retried after the pending events have been read.
package uffd
