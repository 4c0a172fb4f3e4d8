package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Per-destination denial logging: every drop rule of a capsule's chain is
// preceded by a rule that, within a kernel rate limit (denialRate a
// second, denialBurst burst, per rule), copies the packet's first bytes to
// the manager's NFLOG group with the prefix "<key> <rule>". The manager
// reads the group (nfnetlink_log, one socket) and logs each denial with the
// capsule, destination and rule, at most one line per capsule per second
// (the rest counted in "suppressed"), like the DNS forwarder's refusals.

const (
	denialRate  = 10
	denialBurst = 20
	nflogSnap   = 64 // IPv4 header with options + the ports
)

// nfnetlink_log protocol numbers (linux/netfilter/nfnetlink_log.h).
const (
	nfulnlMsgPacket = 0
	nfulnlMsgConfig = 1
	nfulaCfgCmd     = 1
	nfulaCfgMode    = 2
	nfulaCfgQThresh = 5
	nfulnlCmdBind   = 1
	nfulnlCopyPkt   = 2
	nfulaPayload    = 9
	nfulaPrefix     = 10
)

// logGroup is the NFLOG group of a manager's table: derived from the table
// name so that a restarted agent listens where the kept rules log.
func logGroup(table string) uint16 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(table))
	return uint16(1000 + h.Sum32()%60000) //nolint:gosec // bounded
}

// logRule is the rule that logs a drop rule's packets (no verdict: the
// drop rule after it still counts and drops).
func (m *Manager) logRule(key, rule string, match []expr.Any) []expr.Any {
	return cat(match, []expr.Any{
		&expr.Limit{Type: expr.LimitTypePkts, Rate: denialRate, Unit: expr.LimitTimeSecond, Burst: denialBurst},
		&expr.Log{
			Key:   1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_SNAPLEN | 1<<unix.NFTA_LOG_QTHRESHOLD,
			Group: m.nflog.group, Data: []byte(key + " " + rule), Snaplen: nflogSnap, QThreshold: 1,
		},
	})
}

// nflogReader reads the manager's NFLOG group.
type nflogReader struct {
	group uint16
	conn  *netlink.Conn
	done  chan struct{}
}

func nfulnlType(msg uint16) netlink.HeaderType {
	return netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | msg)
}

// nflogConfig sends one configuration message for group.
func nflogConfig(c *netlink.Conn, group uint16, attrs []netlink.Attribute) error {
	b, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return err
	}
	hdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, byte(group >> 8), byte(group)}
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{Type: nfulnlType(nfulnlMsgConfig), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(hdr, b...),
	})
	return err
}

// startNFLOG binds the group and starts reading it; denials go to m.denied.
func (m *Manager) startNFLOG(group uint16) (*nflogReader, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("network: nflog socket: %w", err)
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, nflogSnap)
	mode[4] = nfulnlCopyPkt
	err = errors.Join(
		nflogConfig(c, group, []netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCmdBind}}}),
		nflogConfig(c, group, []netlink.Attribute{{Type: nfulaCfgMode, Data: mode}}),
		nflogConfig(c, group, []netlink.Attribute{{Type: nfulaCfgQThresh, Data: binary.BigEndian.AppendUint32(nil, 1)}}),
	)
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("network: nflog group %d: %w", group, err)
	}
	r := &nflogReader{group: group, conn: c, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			msgs, err := c.Receive()
			if err != nil {
				if errors.Is(err, unix.ENOBUFS) {
					// The socket overflowed: those denials are not
					// logged (the counters still have them).
					continue
				}
				if !isClosed(err) {
					m.log.Warn("network: nflog read stopped; denials are only counted", "err", err)
				}
				return
			}
			for _, msg := range msgs {
				if msg.Header.Type != nfulnlType(nfulnlMsgPacket) || len(msg.Data) < 4 {
					continue
				}
				if key, rule, dst, ok := parseNFLOG(msg.Data[4:]); ok {
					m.denied(key, dst, rule, "packet")
				}
			}
		}
	}()
	return r, nil
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADF) || strings.Contains(err.Error(), "use of closed")
}

// close stops reading; closing the socket also unbinds the group.
func (r *nflogReader) close() {
	_ = r.conn.Close()
	<-r.done
}

// parseNFLOG reads a logged packet's prefix ("<key> <rule>") and its
// destination ("ip:port/proto" or "ip/proto").
func parseNFLOG(attrs []byte) (key, rule, dst string, ok bool) {
	ad, err := netlink.NewAttributeDecoder(attrs)
	if err != nil {
		return "", "", "", false
	}
	var prefix string
	var payload []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPrefix:
			prefix = strings.TrimRight(ad.String(), "\x00")
		case nfulaPayload:
			payload = ad.Bytes()
		}
	}
	key, rule, ok = strings.Cut(prefix, " ")
	if !ok || ad.Err() != nil {
		return "", "", "", false
	}
	return key, rule, packetDest(payload), true
}

// packetDest describes an IPv4 packet's destination.
func packetDest(b []byte) string {
	if len(b) < 20 || b[0]>>4 != 4 {
		return "?"
	}
	ihl := int(b[0]&0xf) * 4
	ip := netip.AddrFrom4([4]byte(b[16:20]))
	switch proto := b[9]; proto {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP:
		name := map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[proto]
		if len(b) >= ihl+4 {
			return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b[ihl+2:])).String() + "/" + name
		}
		return ip.String() + "/" + name
	case unix.IPPROTO_ICMP:
		return ip.String() + "/icmp"
	default:
		return ip.String() + "/" + strconv.Itoa(int(proto))
	}
}

// denials rate-limits denial logging per capsule: at most one line a
// second, with the number of denials left out.
type denials struct {
	mu   sync.Mutex
	logs map[string]*denialLog
}

type denialLog struct {
	last       time.Time
	suppressed int
}

// denied logs that the capsule of key was refused destination by rule
// (kind "dns" for a refused name, "packet" for a dropped connection).
func (m *Manager) denied(key, destination, rule, kind string) {
	m.den.mu.Lock()
	d := m.den.logs[key]
	if d == nil {
		d = &denialLog{}
		m.den.logs[key] = d
	}
	now := time.Now()
	if now.Sub(d.last) < time.Second {
		d.suppressed++
		m.den.mu.Unlock()
		return
	}
	suppressed := d.suppressed
	d.last, d.suppressed = now, 0
	m.den.mu.Unlock()
	m.mu.Lock()
	id := m.labels[key]
	m.mu.Unlock()
	m.log.Info("network: policy denied", "capsule_id", id, "capsule_key", key, "destination", destination, "rule", rule, "kind", kind, "suppressed", suppressed)
}

// Label names the capsule of key (its id) in denial logs.
func (m *Manager) Label(key, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.labels[key] = id
}
