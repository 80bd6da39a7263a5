// Who the client is, and the headers that tell the upstream: X-Forwarded-For/-Proto/-Host.
// Forwarding headers from a peer we do not trust are replaced, never appended to (they are forgeable).
import { BlockList, isIP } from "node:net";

export class TrustedProxies {
  private readonly list = new BlockList();
  private readonly empty: boolean;
  /** Exact addresses answered without BlockList (which allocates per check): the common "127.0.0.1" case. */
  private readonly exact = new Set<string>();

  constructor(entries: readonly string[]) {
    for (const e of entries) {
      const [addr, bits] = e.split("/") as [string, string | undefined];
      const type = isIP(addr) === 6 ? "ipv6" : "ipv4";
      if (bits === undefined) {
        this.list.addAddress(addr, type);
        this.exact.add(addr);
      } else this.list.addSubnet(addr, Number(bits), type);
    }
    this.empty = entries.length === 0;
  }

  has(address: string): boolean {
    if (this.empty || !address) return false;
    const plain = unmapIPv4(address);
    if (this.exact.has(plain)) return true;
    const family = isIP(plain);
    if (family === 0) return false;
    return this.list.check(plain, family === 6 ? "ipv6" : "ipv4");
  }
}

/** "::ffff:127.0.0.1" (an IPv4 peer on a dual-stack socket) → "127.0.0.1". */
export function unmapIPv4(address: string): string {
  return address.startsWith("::ffff:") && address.includes(".") ? address.slice(7) : address;
}

function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(", ") : v;
}

/**
 * The client address: the nearest X-Forwarded-For entry that is not itself a trusted proxy, walking right to
 * left from the socket peer; the peer itself when it is not trusted.
 */
export function clientAddress(
  peer: string,
  xff: string | string[] | undefined,
  trust: TrustedProxies,
): string {
  const list = headerValue(xff);
  if (!list || !trust.has(peer)) return peer;
  const hops = list.split(",");
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = (hops[i] as string).trim();
    if (!hop) continue;
    if (isIP(unmapIPv4(hop)) === 0) return hop.slice(0, 64); // garbage from the client: report it, stop trusting
    if (!trust.has(hop)) return unmapIPv4(hop);
  }
  return peer;
}

/**
 * Rewrites the request's X-Forwarded-* headers in place (http-proxy-3 copies req.headers upstream).
 * From a trusted peer: append the peer to X-Forwarded-For and keep its -Proto/-Host. From anyone else: replace.
 */
export function setForwardedHeaders(
  headers: Record<string, string | string[] | undefined>,
  peer: string,
  encrypted: boolean,
  trusted: boolean,
): void {
  const peerAddr = unmapIPv4(peer);
  const xff = headerValue(headers["x-forwarded-for"]);
  headers["x-forwarded-for"] = trusted && xff ? `${xff}, ${peerAddr}` : peerAddr;
  const proto = headerValue(headers["x-forwarded-proto"]);
  headers["x-forwarded-proto"] = trusted && proto ? proto : encrypted ? "https" : "http";
  const fwdHost = headerValue(headers["x-forwarded-host"]);
  const host = headers.host;
  if (trusted && fwdHost) headers["x-forwarded-host"] = fwdHost;
  else if (host) headers["x-forwarded-host"] = host;
  else delete headers["x-forwarded-host"];
  if (!trusted) delete headers["x-forwarded-port"];
}
