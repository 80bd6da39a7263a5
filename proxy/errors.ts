// The one table of errors cachegate itself produces: stable code, HTTP status, message.
// Clients match on `code`; the message is for people and may change.

export const ERRORS = {
  route_not_found: { status: 404, message: "no route matches this request" },
  invalid_request: { status: 400, message: "malformed request" },
  upstream_unreachable: { status: 502, message: "the upstream could not be reached" },
  upstream_reset: { status: 502, message: "the upstream closed the connection before answering" },
  upstream_bad_response: { status: 502, message: "the upstream sent an invalid response" },
  upstream_timeout: { status: 504, message: "the upstream did not answer in time" },
  // 499 as in nginx: never seen by the client, recorded in logs and metrics.
  client_closed: { status: 499, message: "the client closed the connection" },
  not_cached: { status: 504, message: "not in the cache and the request said only-if-cached" },
  rate_limited: { status: 429, message: "too many requests from this client" },
  upstream_circuit_open: {
    status: 503,
    message: "the upstream is failing; requests are refused until it recovers",
  },
  upstream_overloaded: { status: 503, message: "too many requests are waiting for the upstream" },
  shutting_down: { status: 503, message: "this instance is shutting down" },
  internal_error: { status: 500, message: "internal error" },
  unauthorized: { status: 401, message: "missing or invalid admin token" },
  not_found: { status: 404, message: "no such admin endpoint" },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

export class ProxyError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message?: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message ?? ERRORS[code].message);
    this.name = "ProxyError";
    this.status = ERRORS[code].status;
  }
}

/** The JSON body every cachegate-made error carries. */
export function errorBody(code: ErrorCode, message: string, requestId?: string): Buffer {
  return Buffer.from(JSON.stringify({ error: { code, message, ...(requestId ? { requestId } : {}) } }));
}
