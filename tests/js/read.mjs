// Read a Durable Stream with the TypeScript client (@durable-streams/client).
//
//   node read.mjs URL [catch-up|long-poll|sse] [--offset OFFSET]
//                 [--header 'Name: value']... [--param name=value]...
//
// Writes the stream's bytes to stdout. On the end it writes one JSON line to stderr:
// {"offset":…,"upToDate":…,"streamClosed":…,"cursor":…,"bytes":N,"chunks":N}.
// catch-up stops at the first up-to-date answer; long-poll and sse follow the stream
// until it is closed (Stream-Closed / streamClosed). Exit 1 on an error (JSON on stderr).
import { parseArgs } from "node:util"
import { stream } from "@durable-streams/client"

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    offset: { type: "string", default: "-1" },
    header: { type: "string", multiple: true, default: [] },
    param: { type: "string", multiple: true, default: [] },
  },
})
const [url, mode = "catch-up"] = positionals
const LIVE = { "catch-up": false, "long-poll": "long-poll", sse: "sse" }
if (!url || !(mode in LIVE)) {
  process.stderr.write("usage: node read.mjs URL [catch-up|long-poll|sse] [--offset O]\n")
  process.exit(2)
}
const split = (s, sep) => {
  const i = s.indexOf(sep)
  if (i < 1) throw new Error(`malformed ${JSON.stringify(s)}`)
  return [s.slice(0, i).trim(), s.slice(i + 1).trim()]
}
const headers = Object.fromEntries(values.header.map((h) => split(h, ":")))
const params = Object.fromEntries(values.param.map((p) => split(p, "=")))

let bytes = 0
let chunks = 0
let last = { offset: values.offset, upToDate: false, streamClosed: false, cursor: undefined }
try {
  const res = await stream({
    url,
    offset: values.offset,
    live: LIVE[mode],
    headers,
    params,
    // Keep SSE on SSE: no silent fallback to long-poll in a test.
    sseResilience: { logWarnings: false },
  })
  // Wait for the chunk that ends the read, not for `res.closed` alone: in 0.2.7
  // `closed` can resolve before the subscriber has been handed the last response.
  await new Promise((resolve, reject) => {
    res.subscribeBytes(async (chunk) => {
      chunks += 1
      if (chunk.data.length > 0) {
        bytes += chunk.data.length
        if (!process.stdout.write(chunk.data)) {
          await new Promise((r) => process.stdout.once("drain", r))
        }
      }
      last = {
        offset: chunk.offset,
        upToDate: chunk.upToDate,
        streamClosed: chunk.streamClosed,
        cursor: chunk.cursor,
      }
      if (chunk.streamClosed || (mode === "catch-up" && chunk.upToDate)) resolve()
    })
    res.closed.then(() => setTimeout(resolve, 50), reject)
  })
  // The session's own state is the final word (an SSE close without `upToDate`
  // reaches the state, not the subscriber).
  last = {
    offset: res.offset,
    upToDate: res.upToDate,
    streamClosed: res.streamClosed || last.streamClosed,
    cursor: res.cursor ?? last.cursor,
  }
  process.stderr.write(`${JSON.stringify({ ...last, bytes, chunks })}\n`)
} catch (err) {
  process.stderr.write(
    `${JSON.stringify({ error: String(err?.message ?? err), code: err?.code, status: err?.status, ...last, bytes })}\n`
  )
  process.exitCode = 1
}
// The client may keep a keep-alive socket; we are done.
process.exit(process.exitCode ?? 0)
