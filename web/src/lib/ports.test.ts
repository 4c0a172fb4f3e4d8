import { describe, expect, it } from 'vitest';
import { listeningPorts, parseProcNetTCP, proxyLink } from './ports';

const tcp = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 00000000:C2CF 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
   3: 0A00000A:1F40 0100000A:D4A2 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
`;
const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1 0000000000000000 100 0 0 10 0
`;

describe('ports', () => {
  it('parses listening sockets with addresses', () => {
    expect(parseProcNetTCP(tcp, false)).toEqual([
      { port: 8000, address: '0.0.0.0', v6: false },
      { port: 3306, address: '127.0.0.1', v6: false },
      { port: 49871, address: '0.0.0.0', v6: false },
    ]);
    expect(parseProcNetTCP(tcp6, true).map((p) => p.address)).toEqual(['::', '::1', '::']);
  });
  it('merges v4 and v6, leaves out loopback and envd (49983)', () => {
    expect(listeningPorts(tcp, tcp6).map((p) => p.port)).toEqual([80, 8000, 49871]);
    expect(listeningPorts('x\n   0: 00000000:C33F 00000000:0000 0A\n', '')).toEqual([]);
  });
  it('builds proxy links on the dashboard host', () => {
    expect(proxyLink({ protocol: 'http:', hostname: '127.0.0.1' }, 9726, '', 'cl-abc', 8000)).toBe('http://127.0.0.1:9726/proxy/cl-abc/8000/');
    expect(proxyLink({ protocol: 'https:', hostname: 'w.example' }, 443, 'caps.example', 'cl-abc', 80)).toBe('https://80-cl-abc.caps.example:443/');
  });
});
