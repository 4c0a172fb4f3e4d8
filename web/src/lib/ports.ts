// Listening TCP ports of a capsule, read from its /proc/net/tcp and
// /proc/net/tcp6 (through the public files API), and the proxy links to them.

export type Port = { port: number; address: string; v6: boolean };

/** Parses /proc/net/tcp{,6}: rows in state 0A (LISTEN); local address is
 * hex IP:hex port. Duplicates (same port on v4 and v6) are kept once. */
export function parseProcNetTCP(text: string, v6: boolean): Port[] {
  const out: Port[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || f[3] !== '0A') continue;
    const [ipHex, portHex] = f[1].split(':');
    const port = parseInt(portHex, 16);
    if (!Number.isFinite(port)) continue;
    out.push({ port, address: v6 ? ipv6(ipHex) : ipv4(ipHex), v6 });
  }
  return out;
}

function ipv4(h: string): string {
  // little-endian u32
  const b = [0, 2, 4, 6].map((i) => parseInt(h.slice(i, i + 2), 16)).reverse();
  return b.join('.');
}

function ipv6(h: string): string {
  // four little-endian u32 words
  const words: string[] = [];
  for (let w = 0; w < 4; w++) {
    const s = h.slice(w * 8, w * 8 + 8);
    const bytes = [6, 4, 2, 0].map((i) => s.slice(i, i + 2)).join('');
    words.push(bytes.slice(0, 4), bytes.slice(4, 8));
  }
  const full = words.map((x) => parseInt(x, 16).toString(16)).join(':');
  if (full === '0:0:0:0:0:0:0:0') return '::';
  if (full === '0:0:0:0:0:0:0:1') return '::1';
  return full;
}

/** Ports listening beyond loopback, merged over v4/v6 and sorted; envd's
 * own port (49983) is left out: the proxy never serves it. */
export function listeningPorts(tcp: string, tcp6: string): Port[] {
  const seen = new Map<number, Port>();
  for (const p of [...parseProcNetTCP(tcp, false), ...parseProcNetTCP(tcp6, true)]) {
    if (p.port === 49983 || p.address.startsWith('127.') || p.address === '::1') continue;
    if (!seen.has(p.port)) seen.set(p.port, p);
  }
  return [...seen.values()].sort((a, b) => a.port - b.port);
}

/** The proxy URL of a capsule port, on the dashboard's host name. */
export function proxyLink(loc: { protocol: string; hostname: string }, proxyPort: number, proxyDomain: string, capsule: string, port: number): string {
  const host = loc.hostname.includes(':') ? `[${loc.hostname}]` : loc.hostname;
  const p = proxyPort ? `:${proxyPort}` : '';
  if (proxyDomain) return `${loc.protocol}//${port}-${capsule}.${proxyDomain}${p}/`;
  return `${loc.protocol}//${host}${p}/proxy/${capsule}/${port}/`;
}
