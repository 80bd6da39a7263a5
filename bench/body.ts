// The upstream's response body: a JSON document of exactly 1 KiB (ASCII, so characters = bytes).
export const BODY_BYTES = 1024;

export function makeBody(): Buffer {
  const doc = { id: "bench-0001", kind: "passthrough", items: [1, 2, 3, 4, 5], ok: true, pad: "" };
  doc.pad = "x".repeat(BODY_BYTES - JSON.stringify(doc).length);
  const buf = Buffer.from(JSON.stringify(doc));
  if (buf.length !== BODY_BYTES) throw new Error(`body is ${buf.length} bytes, expected ${BODY_BYTES}`);
  return buf;
}
