// Follow a JSON Durable Stream with the TypeScript client (@durable-streams/client)
// until it is closed, writing each message as one JSON line to stdout.
//
//   node follow-json.mjs URL [long-poll|sse] [--offset OFFSET]
//
// On the end, one JSON line to stderr: {"offset":…,"streamClosed":…,"messages":N}.
// Exit 1 on an error (JSON on stderr).
import { parseArgs } from "node:util"
import { stream } from "@durable-streams/client"

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { offset: { type: "string", default: "-1" } },
})
const [url, live = "sse"] = positionals
let messages = 0
try {
  const res = await stream({
    url,
    offset: values.offset,
    live,
    json: true,
    sseResilience: { logWarnings: false },
  })
  await new Promise((resolve, reject) => {
    res.subscribeJson(async (batch) => {
      for (const item of batch.items) {
        messages += 1
        process.stdout.write(`${JSON.stringify(item)}\n`)
      }
      if (batch.streamClosed) resolve()
    })
    res.closed.then(() => setTimeout(resolve, 50), reject)
  })
  process.stderr.write(
    `${JSON.stringify({ offset: res.offset, streamClosed: res.streamClosed, messages })}\n`,
  )
} catch (err) {
  process.stderr.write(`${JSON.stringify({ error: String(err?.message ?? err), messages })}\n`)
  process.exit(1)
}
