// The dify plugin's configuration: every caching rule from ../../docs/dify.md, with defaults that follow the
// Dify reference (DIFY.md §3 and §7). Checked once at boot (strict: an unknown key stops the boot).
import { z } from "zod";
import { byteSize, duration } from "../../config/schema.js";

// Dify signs file URLs (message_file.url, /site icon_url, workflow output files) for FILES_ACCESS_TIMEOUT, 300 s by
// default: an app-config entry must be gone before a URL it carries can expire.
const SIGNED_URL_LIFETIME_MS = 300_000;

export const difyConfigSchema = z.strictObject({
  /** Where the service API lives on this upstream (Dify's nginx forwards `location /v1` to api:5001). */
  pathPrefix: z
    .string()
    .regex(/^(\/[^/?#]+)*$/, 'expected "" or a path such as "/v1" (no trailing slash)')
    .default("/v1"),
  /** Freshness of completion and workflow results (and opted-in chat results). */
  generationTtl: duration.refine((v) => v > 0, "expected a duration above 0").default(60 * 60 * 1000), // 1 h
  /** Freshness of GET /parameters, /meta, /info, /site: below the 300 s lifetime of the signed URLs they carry. */
  appConfigTtl: duration
    .refine(
      (v) => v > 0 && v < SIGNED_URL_LIFETIME_MS,
      "expected a duration above 0 and below 300s (Dify's signed file URLs expire after 300 s)",
    )
    .default(120_000), // 2 min
  /** One entry for all end users of an API key (`user` left out of the key). Completion and workflow only. */
  shareAcrossUsers: z.boolean().default(false),
  /** Cache POST /chat-messages that start a new conversation (never with a conversation_id). Replays IDs. */
  cacheChatMessages: z.boolean().default(false),
  /** Cache opted-in chat answers from agent apps (agent_thought / agent_message events: tools ran). */
  cacheAgentChat: z.boolean().default(false),
  /** Cache requests that carry files (top-level `files`, or file objects in `inputs`), keyed on the exact objects. */
  cacheFiles: z.boolean().default(false),
  /** Store generation results that contain signed file URLs (they expire after 300 s; the ttl is longer). */
  storeSignedFileUrls: z.boolean().default(false),
  /** How long identical concurrent generation calls wait for the first one's stored result (LLM calls are slow). */
  coalesceTimeout: duration.default(5 * 60 * 1000), // 5 min
  /** Pause between frames when a stored event stream is replayed; 0 sends it at once. */
  replayPacing: duration.default(0),
  /** Largest request body read to build a key; larger bodies pass through uncached. */
  maxBodyBytes: byteSize.default(1024 * 1024), // 1 MiB
  /** After a successful annotation write (POST/PUT/DELETE /apps/annotation*), purge the API key's entries. */
  purgeOnAnnotationChange: z.boolean().default(true),
});

export type DifyConfig = z.output<typeof difyConfigSchema>;
