import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  clientAddress,
  setForwardedHeaders,
  TrustedProxies,
  unmapIPv4,
} from "../../proxy/upstream/forwarded.js";

describe("trusted proxies", () => {
  const trust = new TrustedProxies(["10.0.0.0/8", "127.0.0.1", "fd00::/8"]);

  test("matches addresses and CIDR ranges of both families, including IPv4-mapped IPv6", () => {
    assert.equal(trust.has("10.1.2.3"), true);
    assert.equal(trust.has("127.0.0.1"), true);
    assert.equal(trust.has("::ffff:127.0.0.1"), true);
    assert.equal(trust.has("fd12::1"), true);
    assert.equal(trust.has("11.0.0.1"), false);
    assert.equal(trust.has("127.0.0.2"), false);
    assert.equal(trust.has("not-an-ip"), false);
    assert.equal(new TrustedProxies([]).has("127.0.0.1"), false);
  });

  test("takes the client address from X-Forwarded-For only through trusted hops", () => {
    assert.equal(clientAddress("127.0.0.1", "198.51.100.4", trust), "198.51.100.4");
    assert.equal(clientAddress("127.0.0.1", "6.6.6.6, 198.51.100.4, 10.0.0.5", trust), "198.51.100.4");
    assert.equal(
      clientAddress("203.0.113.9", "198.51.100.4", trust),
      "203.0.113.9",
      "an untrusted peer is the client",
    );
    assert.equal(clientAddress("127.0.0.1", undefined, trust), "127.0.0.1");
    assert.equal(clientAddress("127.0.0.1", "10.0.0.1, 10.0.0.2", trust), "127.0.0.1", "all hops trusted");
    assert.equal(clientAddress("127.0.0.1", ["1.1.1.1", "2.2.2.2"], trust), "2.2.2.2");
  });

  test("unmaps IPv4-mapped IPv6 addresses only", () => {
    assert.equal(unmapIPv4("::ffff:10.0.0.1"), "10.0.0.1");
    assert.equal(unmapIPv4("::1"), "::1");
  });
});

describe("X-Forwarded-* headers", () => {
  test("from a trusted peer: append to X-Forwarded-For and keep its proto and host", () => {
    const h: Record<string, string | undefined> = {
      host: "internal:8080",
      "x-forwarded-for": "198.51.100.4",
      "x-forwarded-proto": "https",
      "x-forwarded-host": "api.example.com",
    };
    setForwardedHeaders(h, "::ffff:127.0.0.1", false, true);
    assert.equal(h["x-forwarded-for"], "198.51.100.4, 127.0.0.1");
    assert.equal(h["x-forwarded-proto"], "https");
    assert.equal(h["x-forwarded-host"], "api.example.com");
  });

  test("from an untrusted peer: replace all of them", () => {
    const h: Record<string, string | undefined> = {
      host: "gate:8080",
      "x-forwarded-for": "1.2.3.4",
      "x-forwarded-proto": "https",
      "x-forwarded-host": "evil.example",
      "x-forwarded-port": "1",
    };
    setForwardedHeaders(h, "203.0.113.9", false, false);
    assert.equal(h["x-forwarded-for"], "203.0.113.9");
    assert.equal(h["x-forwarded-proto"], "http");
    assert.equal(h["x-forwarded-host"], "gate:8080");
    assert.equal(h["x-forwarded-port"], undefined);
  });
});
