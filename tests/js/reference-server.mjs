// Electric's reference Durable Streams server (@durable-streams/server), in memory,
// for comparison runs of the conformance suite and the client examples.
//   node reference-server.mjs [--port N] [--host H] [--long-poll-timeout MS] [--webhooks]
// Prints its base URL (e.g. http://127.0.0.1:4437) on stdout once it listens;
// streams live at {url}/v1/stream/<name>. Stops on SIGINT/SIGTERM.
import { parseArgs } from "node:util"
import { DurableStreamTestServer } from "@durable-streams/server"

const { values } = parseArgs({
  options: {
    port: { type: "string", default: "0" },
    host: { type: "string", default: "127.0.0.1" },
    // Default: the package's own (30 s). Its repository's conformance run uses 500:
    // with 30 s the suite's two `offset=now` long-poll tests hit their 5 s test
    // timeout (324 passed / 8 failed); with 500 ms they pass (326 / 6).
    "long-poll-timeout": { type: "string" },
    webhooks: { type: "boolean", default: false },
  },
})

const server = new DurableStreamTestServer({
  port: Number(values.port),
  host: values.host,
  longPollTimeout:
    values["long-poll-timeout"] === undefined ? undefined : Number(values["long-poll-timeout"]),
  webhooks: values.webhooks,
})
const url = await server.start()
process.stdout.write(`${url}\n`)

const stop = async () => {
  await server.stop()
  process.exit(0)
}
process.on("SIGINT", stop)
process.on("SIGTERM", stop)
