package vm

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"

	"github.com/wrenn-dev/wrenn/internal/network"
)

// Guest-side addressing, the same in every microVM: the guest's eth0 is
// GuestAddr/30 and the tap in the capsule's network namespace TapAddr/30.
// The namespace translates between them and the capsule's address
// (network.Allocation.Guest), so the host, its firewall, its port proxy
// and its DNS forwarder see the capsule exactly as a container capsule.
const (
	GuestAddr = "169.254.0.21"
	TapAddr   = "169.254.0.22"
	TapName   = "tap0"
	// TapTxQueueLen is the tap's transmit queue (the seed's 5000: guest
	// bursts are not dropped at the default 1000).
	TapTxQueueLen = 5000
	guestMAC      = "52:54:00:00:00:15"
)

// setupTap creates the tap in the capsule's namespace and the
// namespace's translation rules: inbound to the capsule address goes to
// the guest (DNAT), the guest's traffic leaves as the capsule address
// (SNAT), the guest's DNS to the tap's address goes to the capsule's
// gateway (the DNS forwarder), and nothing from the guest reaches the
// namespace itself or leaves with another source address.
func setupTap(ctx context.Context, a network.Allocation) error {
	script := fmt.Sprintf(`set -e
ip tuntap add dev %[1]s mode tap
ip link set dev %[1]s txqueuelen %[2]d up
ip addr add %[3]s/30 dev %[1]s
echo 1 > /proc/sys/net/ipv4/ip_forward
echo 1 > /proc/sys/net/ipv6/conf/%[1]s/disable_ipv6 || true
nft -f -
`, TapName, TapTxQueueLen, TapAddr)
	rules := fmt.Sprintf(`table ip wrenn-vm {
	chain vm_pre {
		type nat hook prerouting priority -100;
		iifname "eth0" ip daddr %[1]s dnat to %[2]s
		iifname "%[4]s" ip saddr %[2]s ip daddr %[5]s udp dport 53 dnat to %[3]s
		iifname "%[4]s" ip saddr %[2]s ip daddr %[5]s tcp dport 53 dnat to %[3]s
	}
	chain vm_post {
		type nat hook postrouting priority 100;
		oifname "eth0" ip saddr %[2]s snat to %[1]s
	}
	chain vm_fwd {
		type filter hook forward priority 0; policy drop;
		ct state established,related accept
		iifname "%[4]s" oifname "eth0" ip saddr %[2]s accept
		iifname "eth0" oifname "%[4]s" ip daddr %[2]s accept
	}
	chain vm_in {
		type filter hook input priority 0; policy accept;
		iifname "%[4]s" ct state established,related accept
		iifname "%[4]s" drop
	}
}
`, a.Guest, GuestAddr, a.Host, TapName, TapAddr)
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+a.Netns, "sh", "-c", script)
	cmd.Stdin = bytes.NewReader([]byte(rules))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("vm: tap in %s: %w: %s", a.Netns, err, bytes.TrimSpace(out))
	}
	return nil
}
